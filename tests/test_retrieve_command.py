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
    save_file({"text": text[:8].contiguous(), "audio": torch.randn(8, 12)}, str(root / "mixed.safetensors"))
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
    assert list(plain["methods"]) == ["cosine", "+DSL"]
    q, g = (files[m] / files[m].norm(dim=1, keepdim=True) for m in ("text", "audio"))
    assert plain["methods"]["cosine"]["metrics"] == pytest.approx(retrieval_metrics(q @ g.T))

    args = [*base, "--train-embeddings", str(root / "train.safetensors"), "--k-percent", "5", "--val-size", "40"]
    assert cli.main([*args, "--out", str(tmp_path / "tuned")]) == 0
    values = json.loads((tmp_path / "tuned" / "retrieval.json").read_text())
    avgpool = ["+AvgPool (p=10%)", "+AvgPool (p=25%)", "+AvgPool (p=50%)", "+AvgPool (p=100%)"]
    assert list(values["methods"]) == [
        "cosine",
        *avgpool,
        "+InvGC",
        "+InvGC w/ LocalAdj",
        "+IS",
        "+QB-Norm",
        "+DBNorm",
        "+DSL",
    ]
    assert values["methods"]["+InvGC"]["tuning"]["val_size"] == 40
    table = (tmp_path / "tuned" / "retrieval.md").read_text()
    assert "| method | R@1 | R@5 | R@10 | MdR | MnR |" in table and "| +InvGC w/ LocalAdj |" in table
    assert "gallery–query MeanSim" in table and "| +AvgPool (p=25%) |" in table
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
        ([*SEARCH, "--rerank", "gare"], "needs --head"),
        ([*SEARCH, "--rerank", "gare", "--head", "{tmp}/nohead"], "save_pretrained"),
        ([*SEARCH, "--rerank", "volume"], "needs --with"),
        ([*SEARCH, "--rerank", "volume", "--with", "video"], "no 'video'"),
        ([*SEARCH, "--rerank", "volume", "--with", "text", "--gallery-embeddings", "{root}/train.safetensors"],
         "not the ones the index was built from"),
        ([*SEARCH, "--rerank", "invgc"], "needs --train-embeddings"),
        ([*SEARCH, "--rerank", "invgc", "--train-embeddings", "{root}/train.safetensors", "--r-g", "1"], "both --r-g"),
        ([*SEARCH, "--rerank", "volume", "--with", "text", "--candidates", "61"], "exceeds the 60"),
        ([*EVAL, "--avgpool-percents", "10,x"], "comma-separated"),
        ([*EVAL, "--head", "{tmp}/nohead"], "save_pretrained"),
        (["train-head", "--head", "gare", "--embeddings", "{root}/mixed.safetensors", "--query", "text", "--gallery",
          "audio", "--out", "{tmp}/h"], "one dimension"),
        (["train-head", "--head", "gare", "--embeddings", "{root}/train.safetensors", "--query", "text", "--gallery",
          "audio", "--out", "{tmp}/h", "--set", "nope=1"], "KEY one of"),
        (["train-head", "--head", "gare", "--embeddings", "{root}/train.safetensors", "--query", "text", "--gallery",
          "audio", "--out", "{tmp}/h", "--set", "beta=hot"], "beta"),
        (["train-head", "--head", "gravi", "--embeddings", "{root}/train.safetensors", "--query", "text", "--gallery",
          "audio", "--out", "{tmp}/h", "--seed", "-1"], "--seed"),
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


@pytest.fixture(scope="module")
def heads(files, tmp_path_factory):
    root, out = files["root"], tmp_path_factory.mktemp("heads")
    base = ["retrieve", "train-head", "--embeddings", str(root / "train.safetensors"), "--query", "text", "--gallery"]
    gare = ["--set", "temporal_layers=0", "--step-size-diagnostics"]
    for kind, extra in (("gare", gare), ("gravi", ["--set", "kind=linear"])):
        argv = [*base, "audio", "--head", kind, "--out", str(out / kind), "--epochs", "3", "--batch-size", "64", *extra]
        assert cli.main(argv) == 0
    return out


def test_train_head_writes_a_loadable_head_and_refuses_to_overwrite(heads, files, capsys):
    from gen_align.retrieval.head_training import load_head

    gare, gravi = load_head(heads / "gare"), load_head(heads / "gravi")
    assert gare.kind == "gare" and gare.config.dim == 16 and gare.config.temporal_layers == 0
    assert gravi.kind == "gravi-align" and gravi.config.kind == "linear"
    training = json.loads((heads / "gare" / "training.json").read_text())
    assert training["steps"] == 3 * 4 and len(training["loss"]) == 3  # 240 pairs in 4 batches of 60
    assert "step_err_pos" in training["terms"][-1]
    assert not (heads / "gare" / "head_training_state.pt").exists()
    argv = ["retrieve", "train-head", "--head", "gare", "--embeddings", str(files["root"] / "train.safetensors")]
    assert cli.main([*argv, "--query", "text", "--gallery", "audio", "--out", str(heads / "gare")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _search(files, tmp_path, *extra):
    test_file, idx = str(files["root"] / "test.safetensors"), str(tmp_path / "idx")
    assert cli.main(["retrieve", "index", "--embeddings", test_file, "--modality", "audio", "--out", idx]) == 0
    out = tmp_path / "rerank.json"
    argv = ["retrieve", "search", "--index", idx, "--queries", test_file, "--modality", "text", "--k", "3"]
    assert cli.main([*argv, "--candidates", "10", *extra, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _expected_rerank(files, rescore):
    """Per query by hand: the cosine top-10, sorted by the re-ranker's scores, the best 3 kept."""
    _, shortlist = exact_search(files["text"], files["audio"], 10)
    expected = []
    for i, cand in enumerate(shortlist.tolist()):
        scores = [float(rescore(i, j)) for j in cand]
        order = sorted(range(10), key=lambda c: -scores[c])[:3]
        expected.append([cand[c] for c in order])
    return expected


def test_search_reranks_with_a_gare_head(heads, files, tmp_path):
    from gen_align.retrieval.head_training import load_head

    results = _search(files, tmp_path, "--rerank", "gare", "--head", str(heads / "gare"))
    assert results["rerank"]["method"] == "gare" and results["rerank"]["candidates"] == 10
    head = load_head(heads / "gare")
    full = head.score(files["text"], files["audio"])  # the head on the unnormalised rows
    expected = _expected_rerank(files, lambda i, j: full[i, j])
    assert [row["ids"] for row in results["results"]] == expected
    assert results["results"][0]["scores"] == pytest.approx([float(full[0, j]) for j in expected[0]], abs=1e-5)


def test_search_reranks_with_a_gravi_head(heads, files, tmp_path):
    from gen_align.retrieval.head_training import load_head

    results = _search(files, tmp_path, "--rerank", "gravi", "--head", str(heads / "gravi"))
    full = load_head(heads / "gravi").score(files["text"], files["audio"])
    assert [row["ids"] for row in results["results"]] == _expected_rerank(files, lambda i, j: full[i, j])


def test_search_reranks_by_volume_and_by_invgc(files, tmp_path):
    results = _search(files, tmp_path / "v", "--rerank", "volume", "--with", "text")
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    q, a, t = unit(files["text"]), unit(files["audio"]), unit(files["text"])

    def volume(i, j):  # −√det of the 3 × 3 Gram matrix of (query, audio_j, text_j)
        m = torch.stack([q[i], a[j], t[j]]).double()
        return -torch.sqrt(torch.clamp(torch.det(m @ m.T), min=0))

    assert [row["ids"] for row in results["results"]] == _expected_rerank(files, volume)
    root = files["root"]
    train = ["--train-embeddings", str(root / "train.safetensors"), "--r-g", "0.3", "--r-q", "0.2", "--k-percent", "5"]
    results = _search(files, tmp_path / "i", "--rerank", "invgc", *train)
    from safetensors.torch import load_file

    from gen_align.retrieval.invgc import invgc

    banks = load_file(str(root / "train.safetensors"))
    processed = invgc(files["audio"], banks["audio"], banks["text"], 0.3, 0.2, "local", 5)
    assert [row["ids"] for row in results["results"]] == _expected_rerank(files, lambda i, j: q[i] @ processed[j])
    assert results["rerank"] | {} == {"method": "invgc", "candidates": 10, "adjacency": "local", "k_percent": 5.0,
                                      "r_g": 0.3, "r_q": 0.2}  # fmt: skip


def test_eval_with_heads_adds_full_and_two_stage_rows(heads, files, tmp_path):
    from gen_align.retrieval.head_training import load_head

    root = files["root"]
    argv = ["retrieve", "eval", "--embeddings", str(root / "test.safetensors"), "--query", "text", "--gallery", "audio"]
    specs = ["--head", str(heads / "gare"), "--head", f"Gauss={heads / 'gravi'}", "--candidates", "10"]
    assert cli.main([*argv, *specs, "--out", str(tmp_path / "e")]) == 0
    values = json.loads((tmp_path / "e" / "retrieval.json").read_text())
    assert list(values["methods"]) == ["cosine", "+DSL", "GARE", "GARE two-stage", "Gauss", "Gauss two-stage"]
    full = load_head(heads / "gare").score(files["text"], files["audio"])
    assert values["methods"]["GARE"]["metrics"] == pytest.approx(retrieval_metrics(full))
    assert values["methods"]["GARE two-stage"]["coverage"]["K"] == 10
    table = (tmp_path / "e" / "retrieval.md").read_text()
    assert "| GARE two-stage | 10 |" in table and "deviation P95" in table


def test_an_index_without_norms_asks_to_be_rebuilt_for_a_head(heads, files, tmp_path, capsys):
    test_file, idx = str(files["root"] / "test.safetensors"), tmp_path / "idx"
    assert cli.main(["retrieve", "index", "--embeddings", test_file, "--modality", "audio", "--out", str(idx)]) == 0
    meta = json.loads((idx / "index.json").read_text())
    assert meta["norms"] == pytest.approx(files["audio"].norm(dim=1).tolist())
    del meta["norms"]  # an index written before the norms were kept
    (idx / "index.json").write_text(json.dumps(meta))
    argv = ["retrieve", "search", "--index", str(idx), "--queries", test_file, "--modality", "text"]
    assert cli.main([*argv, "--rerank", "gare", "--head", str(heads / "gare"), "--out", str(tmp_path / "o")]) == 2
    assert "rebuild it" in capsys.readouterr().err
