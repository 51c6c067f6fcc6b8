"""`gen-align embed` on the shipped mini preset: aligned embeddings with the manifest ids, equal to the space's own
encoders; `retrieve index` / `search` then answer with manifest ids; bad items are left out and listed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gen_align.aligned_embeddings import read_embedding_ids
from gen_align.cli import main
from gen_align.data.manifest import read_manifest
from gen_align.space import AlignedSpace


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    assert main(["mini", "build", str(root / "world"), "--train", "4", "--test", "6", "--seed", "3"]) == 0
    manifest = root / "world" / "test" / "manifest.jsonl"
    items = read_manifest(manifest).items
    (items[2].audio).write_bytes(b"RIFF not a wav at all")  # one corrupt clip
    return {"root": root, "manifest": manifest, "items": items}


@pytest.fixture(scope="module")
def embedded(world):
    out = world["root"] / "emb" / "test.safetensors"
    assert main(["embed", str(world["manifest"]), "--preset", "mini", "--out", str(out), "--batch-size", "4"]) == 0
    return out


def test_rows_are_the_spaces_own_embeddings_with_the_manifest_ids(world, embedded):
    ids = read_embedding_ids(embedded)
    items = [i for i in world["items"] if i.id != world["items"][2].id]
    assert ids == [i.id for i in items]  # the corrupt clip's item is left out of every modality (rows stay paired)
    tensors = load_file(str(embedded))
    space = AlignedSpace.from_pretrained("mini")
    torch.testing.assert_close(tensors["text"], space.encode_text([i.text for i in items]), rtol=0, atol=1e-5)
    torch.testing.assert_close(tensors["audio"], space.encode_audio([str(i.audio) for i in items]), rtol=0, atol=1e-5)
    torch.testing.assert_close(tensors["image"], space.encode_image([i.image for i in items]), rtol=0, atol=1e-5)
    summary = json.loads(embedded.with_suffix(".json").read_text())
    assert summary["left_out"] == [world["items"][2].id] and summary["skipped"][0]["modality"] == "audio"


def test_retrieve_answers_with_manifest_ids(world, embedded, tmp_path):
    index = tmp_path / "image.index"
    assert main(["retrieve", "index", "--embeddings", str(embedded), "--modality", "image", "--out", str(index)]) == 0
    out = tmp_path / "search.json"
    args = ["retrieve", "search", "--index", str(index), "--queries", str(embedded), "--modality", "text"]
    assert main([*args, "--k", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    ids = read_embedding_ids(embedded)
    assert [r["query"] for r in results] == ids and all(set(r["ids"]) <= set(ids) for r in results)
    tensors = load_file(str(embedded))
    cos = (
        torch.nn.functional.normalize(tensors["text"], dim=-1)
        @ torch.nn.functional.normalize(tensors["image"], dim=-1).T
    )
    assert [r["ids"][0] for r in results] == [ids[j] for j in cos.argmax(dim=1).tolist()]


def test_a_rerun_resumes_and_bad_options_exit_2(world, embedded, capsys):
    assert main(["embed", str(world["manifest"]), "--preset", "mini", "--out", str(embedded)]) == 0
    features = json.loads((embedded.with_suffix(".features") / "encode_summary.json").read_text())
    assert features["encoded_now"] == {"image": 0, "text": 0, "audio": 0}
    assert main(["embed", str(world["manifest"]), "--preset", "mini", "--out", str(embedded.with_suffix(".pt"))]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_heads_from_the_command_line_on_the_mini_worlds_embeddings(world, embedded, tmp_path):
    """embed → retrieve train-head (GARE, GraviAlign) → search --rerank (each re-ranker) → eval --head, offline,
    answering with manifest ids."""
    base = ["retrieve", "train-head", "--embeddings", str(embedded), "--query", "text", "--gallery", "image"]
    for kind in ("gare", "gravi"):
        assert main([*base, "--head", kind, "--out", str(tmp_path / kind), "--epochs", "2"]) == 0
    index = tmp_path / "image.index"
    assert main(["retrieve", "index", "--embeddings", str(embedded), "--modality", "image", "--out", str(index)]) == 0
    ids = read_embedding_ids(embedded)
    rerankers = {
        "gare": ["--head", str(tmp_path / "gare")],
        "gravi": ["--head", str(tmp_path / "gravi")],
        "volume": ["--with", "audio"],  # GRAM's volume of (text query, image, audio) tuples
        "invgc": ["--train-embeddings", str(embedded)],  # the banks; rates tuned on a validation split of them
    }
    for kind, extra in rerankers.items():
        out = tmp_path / f"{kind}.json"
        argv = ["retrieve", "search", "--index", str(index), "--queries", str(embedded), "--modality", "text"]
        assert main([*argv, "--k", "2", "--rerank", kind, *extra, "--out", str(out)]) == 0
        results = json.loads(out.read_text())["results"]
        assert [r["query"] for r in results] == ids and all(set(r["ids"]) <= set(ids) for r in results)
    argv = ["retrieve", "eval", "--embeddings", str(embedded), "--query", "text", "--gallery", "image"]
    heads = ["--head", str(tmp_path / "gare"), "--head", str(tmp_path / "gravi")]
    assert main([*argv, *heads, "--out", str(tmp_path / "eval")]) == 0
    methods = json.loads((tmp_path / "eval" / "retrieval.json").read_text())["methods"]
    assert {"GARE", "GARE two-stage", "GraviAlign", "GraviAlign two-stage"} <= set(methods)
