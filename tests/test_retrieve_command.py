"""`gen-align retrieve index|search|eval` through gen_align.cli.main: outputs, and exit 2 with a message on
bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from gen_align import cli
from gen_align.retrieval.ann import exact_search
from gen_align.retrieval.metrics import retrieval_metrics


@pytest.fixture(autouse=True)
def retrieve_registered(monkeypatch):
    if "retrieve" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "retrieve"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieve")
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(300, 16, generator=g)
    text = latent + 0.6 * torch.randn(300, 16, generator=g)
    audio = latent + 0.6 * torch.randn(300, 16, generator=g) + 1.0
    save_file({"text": text[:60].contiguous(), "audio": audio[:60].contiguous()}, str(root / "test.safetensors"))
    save_file({"text": text[60:].contiguous(), "audio": audio[60:].contiguous()}, str(root / "train.safetensors"))
    save_file({"text": torch.randn(5, 8)}, str(root / "small.safetensors"))
    save_file({"text": torch.full((5, 16), float("nan"))}, str(root / "nan.safetensors"))
    return {"root": root, "text": text[:60], "audio": audio[:60]}


def test_index_then_search(files, tmp_path, capsys):
    test_file, idx = str(files["root"] / "test.safetensors"), str(tmp_path / "idx")
    assert cli.main(["retrieve", "index", "--embeddings", test_file, "--modality", "audio", "--out", idx]) == 0
    assert "indexed 60 audio embeddings" in capsys.readouterr().out
    out = tmp_path / "results.json"
    argv = ["retrieve", "search", "--index", idx, "--queries", test_file, "--modality", "text", "--k", "5"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["k"] == 5 and len(results["results"]) == 60
    expected = exact_search(files["text"], files["audio"], 5)[1].tolist()
    assert [row["ids"] for row in results["results"]] == expected


def test_ivf_index(files, tmp_path):
    test_file, idx = str(files["root"] / "test.safetensors"), str(tmp_path / "ivf")
    argv = ["retrieve", "index", "--embeddings", test_file, "--modality", "audio", "--out", idx]
    assert cli.main([*argv, "--kind", "ivf", "--nlist", "4"]) == 0
    meta = json.loads((tmp_path / "ivf" / "index.json").read_text())
    assert meta["kind"] == "ivf" and meta["nlist"] == 4


def test_eval_without_and_with_train_embeddings(files, tmp_path, capsys):
    root = files["root"]
    base = ["retrieve", "eval", "--embeddings", str(root / "test.safetensors"), "--query", "text", "--gallery", "audio"]
    assert cli.main([*base, "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "retrieval.json").read_text())
    assert list(plain["methods"]) == ["cosine"]
    q, g = (files[m] / files[m].norm(dim=1, keepdim=True) for m in ("text", "audio"))
    assert plain["methods"]["cosine"]["metrics"] == pytest.approx(retrieval_metrics(q @ g.T))

    args = [*base, "--train-embeddings", str(root / "train.safetensors"), "--k-percent", "5", "--val-size", "40"]
    assert cli.main([*args, "--out", str(tmp_path / "tuned")]) == 0
    values = json.loads((tmp_path / "tuned" / "retrieval.json").read_text())
    assert list(values["methods"]) == ["cosine", "+AvgPool", "+InvGC", "+InvGC w/ LocalAdj"]
    assert values["methods"]["+InvGC"]["tuning"]["val_size"] == 40
    table = (tmp_path / "tuned" / "retrieval.md").read_text()
    assert "| method | R@1 | R@5 | R@10 | MdR | MnR |" in table and "| +InvGC w/ LocalAdj |" in table
    assert "Retrieval text → audio" in capsys.readouterr().out

    assert cli.main([*args, "--r-g", "0.1", "--r-q", "0.2", "--out", str(tmp_path / "fixed")]) == 0
    fixed = json.loads((tmp_path / "fixed" / "retrieval.json").read_text())["methods"]["+InvGC"]
    assert (fixed["r_g"], fixed["r_q"]) == (0.1, 0.2) and "tuning" not in fixed


EVAL = ["eval", "--embeddings", "{root}/test.safetensors", "--query", "text", "--gallery", "audio"]
SEARCH = ["search", "--index", "{tmp}/idx", "--queries", "{root}/test.safetensors", "--modality", "text"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--embeddings", "{root}/missing.safetensors", "--query", "text", "--gallery", "audio"], "does not"),
        (["eval", "--embeddings", "{root}/test.safetensors", "--query", "image", "--gallery", "audio"], "no 'image'"),
        ([*EVAL, "--train-embeddings", "{root}/train.safetensors", "--r-g", "-1", "--r-q", "0"], "r_g"),
        ([*EVAL, "--r-g", "1"], "both --r-g and --r-q"),
        (["index", "--embeddings", "{root}/nan.safetensors", "--modality", "text", "--out", "{tmp}/i"], "NaN"),
        ([*SEARCH[:2], "{tmp}/none", *SEARCH[3:]], "index.json is missing"),
        ([*SEARCH[:4], "{root}/small.safetensors", *SEARCH[5:]], "dimension"),
        ([*SEARCH, "--k", "61"], "larger than the gallery"),
        ([*SEARCH, "--k", "0"], "k must be"),
        (["index", "--embeddings", "{root}/test.safetensors", "--modality", "audio", "--out", "{tmp}/j", "--kind",
          "ivf", "--nlist", "100"], "nlist"),
    ],
)  # fmt: skip
def test_bad_inputs_exit_2_with_a_message(files, tmp_path, capsys, argv, message):
    test_file, idx = str(files["root"] / "test.safetensors"), str(tmp_path / "idx")
    assert cli.main(["retrieve", "index", "--embeddings", test_file, "--modality", "audio", "--out", idx]) == 0
    capsys.readouterr()
    argv = ["retrieve", *(a.format(root=files["root"], tmp=tmp_path) for a in argv)]
    assert cli.main(argv if "--out" in argv else [*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gen-align retrieve: error:") and message in err and "Traceback" not in err


def test_missing_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["retrieve"])
    assert exit_info.value.code == 2
