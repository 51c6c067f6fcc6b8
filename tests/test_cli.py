"""The console script: --help/--version, objectives listing, analyze on a file, user errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import gen_align
from gen_align.cli import main
from gen_align.objectives import get_objective


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gen_align", *args], capture_output=True, text=True, timeout=120)


def test_python_m_help_and_version():
    out = run_module("--help")
    assert out.returncode == 0 and "analyze" in out.stdout and "objectives" in out.stdout
    out = run_module("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gen-align {gen_align.__version__}"


def test_objectives_json_lists_registry(capsys):
    assert main(["objectives", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {"unialign", "unialign-geodesic", "infonce", "gram", "geo-ot"}
    geodesic = table["unialign-geodesic"]["defaults"]
    assert (geodesic["uniformity_kernel"], geodesic["alignment_metric"]) == ("geodesic", "geodesic")
    # the paper's defaults (Appendix F), and the task presets for λ_vol
    assert table["unialign"]["defaults"]["tau"] == 0.07 and table["unialign"]["defaults"]["lambda_vol"] == 0.1
    assert table["unialign"]["task_presets"] == {"generation": {"lambda_vol": 0.1}, "retrieval": {"lambda_vol": 1.0}}
    assert table["gram"]["defaults"]["label_smoothing"] == 0.1 and table["gram"]["defaults"]["learnable_tau"] is True


def test_objectives_table_shows_what_training_uses(capsys, tmp_path):
    """One source of defaults: the table's λ_vol and τ are the values a default training run resolves."""
    from gen_align.train.config import TrainConfig, load_config

    assert main(["objectives"]) == 0
    text = capsys.readouterr().out
    config = load_config(None, [f"features={tmp_path}", f"out={tmp_path / 'out'}"])
    hparams = get_objective(config.objective, **config.objective_hparams()).hparams
    assert config.objective == TrainConfig.objective == "unialign"
    assert f"lambda_vol={hparams['lambda_vol']}" in text and f"tau={hparams['tau']}" in text
    assert (hparams["lambda_vol"], hparams["tau"]) == (0.1, 0.07)


@pytest.fixture
def paired_embeddings(tmp_path):
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(64, 16, generator=g)
    z = {
        "image": latent + 0.3 * torch.randn(64, 16, generator=g),
        "text": latent + 0.3 * torch.randn(64, 16, generator=g) + 2.0,  # shifted: a modality gap
        "audio": latent + 0.3 * torch.randn(64, 16, generator=g),
    }
    path = tmp_path / "emb.safetensors"
    save_file(z, str(path))
    return path, z


def test_analyze_writes_json_and_markdown(paired_embeddings, tmp_path, capsys):
    path, z = paired_embeddings
    out = tmp_path / "out"
    assert main(["analyze", "--embeddings", str(path), "--out", str(out), "--tau", "0.5"]) == 0
    values = json.loads((out / "analysis.json").read_text())
    assert (out / "analysis.md").read_text().startswith("# Embedding analysis")
    assert values["paired"] is True and values["items"] == {"image": 64, "text": 64, "audio": 64}
    # Independent check of one value: the centroid distance of normalised embeddings.
    unit = {m: v.numpy() / np.linalg.norm(v.numpy(), axis=1, keepdims=True) for m, v in z.items()}
    expected = np.linalg.norm(unit["image"].mean(0) - unit["text"].mean(0))
    gap = {frozenset(pair.split("-")): v for pair, v in values["modality_gap"].items()}
    assert gap[frozenset({"image", "text"})] == pytest.approx(expected, rel=1e-5)
    assert gap[frozenset({"image", "text"})] > gap[frozenset({"image", "audio"})]
    assert set(values["conflict"]) == {"zeta", "chi", "chi_bound", "mu_bar"}
    assert values["holder_anchor"] == "image"  # Eq. 24 anchored at the analysis anchor
    assert "Hölder divergence" in capsys.readouterr().out


def test_analyze_two_modalities_writes_strict_json(paired_embeddings, tmp_path):
    """With M = 2 there is no pair of positives: μ̄ is null in the JSON (not NaN, which JSON does not have)."""
    _, z = paired_embeddings
    path = tmp_path / "two.safetensors"
    save_file({m: z[m] for m in ("image", "audio")}, str(path))
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "analysis.json").read_text()
    values = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in analysis.json"))
    assert values["conflict"]["mu_bar"] is None and values["conflict"]["chi_bound"] == 0.0


def test_analyze_subset_is_seeded(paired_embeddings, tmp_path):
    path, _ = paired_embeddings
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        assert main(["analyze", "--embeddings", str(path), "--out", str(d), "--max-items", "32", "--seed", "3"]) == 0
    first, second = (json.loads((d / "analysis.json").read_text()) for d in (a, b))
    assert first.pop("figures").keys() == second.pop("figures").keys() == {"tsne", "similarity"}
    assert first == second


def test_analyze_missing_file_exits_2_with_message(tmp_path):
    out = run_module("analyze", "--embeddings", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path))
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_analyze_corrupt_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    assert main(["analyze", "--embeddings", str(bad), "--out", str(tmp_path)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_analyze_nan_embeddings_exits_2(tmp_path, capsys):
    z = {"image": torch.randn(8, 4), "text": torch.randn(8, 4)}
    z["text"][3, 1] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(z, str(path))
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "text" in err
    assert not (tmp_path / "o" / "analysis.json").exists()


def test_analyze_dimension_mismatch_exits_2(tmp_path, capsys):
    path = tmp_path / "mix.safetensors"
    save_file({"image": torch.randn(8, 4), "text": torch.randn(8, 5)}, str(path))
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "same d" in capsys.readouterr().err


def test_analyze_a_space_on_a_manifest_writes_figures(tmp_path, capsys):
    from PIL import Image
    from tiny_models import tiny_space

    from gen_align.space import AlignedSpace

    space = tiny_space(tmp_path / "space")
    lines = []
    for i in range(12):
        Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype("uint8")).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"x{i}", "image": f"{i}.png", "text": f"picture {i}"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["analyze", "--space", str(space), "--manifest", str(tmp_path / "m.jsonl"), "--modalities", "image,text"]
    assert main([*args, "--out", str(out)]) == 0
    values = json.loads((out / "analysis.json").read_text())
    for name in ("tsne", "similarity"):
        assert Image.open(out / f"{name}.png").size[0] > 100
    model = AlignedSpace.from_pretrained(space)
    z_text = model.encode_text([f"picture {i}" for i in range(12)], normalize=True)
    z_image = model.encode_image([tmp_path / f"{i}.png" for i in range(12)], normalize=True)
    expected = float((z_text * z_image).sum(-1).mean())
    paired = {frozenset(k.split("-")): v for k, v in values["paired_cosine"].items()}
    assert paired[frozenset({"image", "text"})] == pytest.approx(expected, abs=1e-5)
    assert main([*args, "--embeddings", "x.safetensors", "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_closed_pipe_is_not_a_traceback():
    """`gen-align objectives --json | head`: the reader leaves before the output comes (here `true`, which reads
    nothing); the command ends quietly with exit 0 (the pipeline's status is the command's, by pipefail)."""
    command = f"set -o pipefail; {sys.executable} -m gen_align objectives --json | true"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_a_seed_beyond_64_bits_is_refused_with_the_range(capsys):
    assert main(["generate", "--text", "a red circle", "--seed", "1180591620717411303424", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be an integer in 0..9223372036854775807, got 1180591620717411303424" in err


def _commands(parser, path=()):
    """(path, parser) of every command and sub-command of ``parser``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _commands(child, (*path, name))


def test_every_command_has_a_description_and_examples_that_parse(capsys):
    """`--help` of every command and sub-command has a description and an Examples section; every example is a
    command line the parser accepts (flags and choices that exist), so the help never shows a stale example."""
    import shlex

    from gen_align.cli import build_parser
    from gen_align.commands.help_texts import EXAMPLES

    parser = build_parser()
    commands = dict(_commands(parser))
    assert {" ".join(p) for p in commands} == set(EXAMPLES)
    for path, child in commands.items():
        text = child.format_help()
        assert child.description, path
        assert "\nExamples:\n  gen-align " in text, path
        for example in EXAMPLES[" ".join(path)]:
            argv = shlex.split(example)
            assert argv[0] == "gen-align" and argv[1 : 1 + len(path)] == list(path), example
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"the example {example!r} does not parse: {capsys.readouterr().err}")
