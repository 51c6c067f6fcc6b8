"""`gen-align fid` end to end on the tiny Stable UnCLIP pipeline with a tiny fixed-seed feature extractor: the
table, the cached reference statistics, resuming, and exit 2 with a message on bad inputs."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from tiny_models import tiny_audio_space, tiny_weights_home
from torch import nn

from gen_align import cli
from gen_align.errors import ConfigError
from gen_align.eval.vggsound_fid import fid_table, image_name, parse_conditions

SMALL = ["--steps", "2", "--height", "16", "--width", "16"]


class TinyFeatures(nn.Module):
    """A fixed-seed conv net: uint8 (B, 3, H, W) → (B, 3) features."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 3
        self.input_size = 16
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.tanh(self.conv(x.float() / 255.0)).mean(dim=(2, 3)) * 10.0, 1)


@pytest.fixture(scope="module", autouse=True)
def fid_registered():
    with pytest.MonkeyPatch.context() as mp:
        if "fid" not in cli.COMMANDS:
            mp.setattr(cli, "COMMANDS", (*cli.COMMANDS, "fid"))
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    home = tiny_weights_home(root / "home", presets=("stable-unclip-h",))
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    lines = []
    for i, name in enumerate("abcde"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")).save(root / f"{name}.png")
        line = {"id": name, "image": f"{name}.png", "text": f"sound number {i}"}
        if name != "e":
            sf.write(root / f"{name}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), 16000)
            line["audio"] = f"{name}.wav"
        lines.append(json.dumps(line))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    extractor = root / "tiny_features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(TinyFeatures()).save(str(extractor))
    space = tiny_audio_space(root / "space", preset="stable-unclip-h", output_norm=6.0)
    base = ["fid", "--space", str(space), "--weights-dir", str(home), "--manifest", str(root / "test.jsonl")]
    base += ["--extractor", str(extractor), "--cache-dir", str(root / "cache"), *SMALL]
    return {"root": root, "base": base}


@pytest.fixture(scope="module")
def first(world):
    out = world["root"] / "out"
    assert cli.main([*world["base"], "--kid", "--out", str(out)]) == 0
    return out, json.loads((out / "fid.json").read_text())


def fails(argv, capsys, *needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_first_run_writes_images_scores_table_and_grids(first):
    out, record = first
    assert record["generated_this_run"] == 5 + 4 + 4 + 5
    assert record["reference"] == {"n": 5, "cached": False, "cache_dir": record["reference"]["cache_dir"]}
    conds = record["conditions"]
    assert list(conds) == ["text", "audio", "text+audio", "image"]
    assert [conds[c]["images"] for c in conds] == [5, 4, 4, 5]
    assert (
        conds["audio"]["skipped"] == ["e"] and conds["text+audio"]["skipped"] == ["e"] and not conds["text"]["skipped"]
    )
    for c in conds:
        assert conds[c]["fid"] >= 0 and np.isfinite(conds[c]["kid"]["mean"])
        assert conds[c]["kid"]["subset_size"] == (4 if c in ("audio", "text+audio") else 5)
        assert (out / conds[c]["grid"]).is_file()
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert record["models"]["decoder"]["kind"] == "stable-unclip" and record["settings"]["steps"] == 2
    assert record["extractor"]["extractor"]["name"] == "torchscript:tiny_features.pt"
    assert record["extractor"]["preprocessing"]["resize"] == "pil-bicubic"
    assert record["average"] == pytest.approx(np.mean([conds[c]["fid"] for c in ("text", "audio", "text+audio")]))
    table = (out / "fid.md").read_text()
    assert "| Decoder | Method | T2I | A2I | (T+A)→I | Avg | I→I (recon.) |" in table
    assert f"| stable-unclip | stable-unclip-h | {conds['text']['fid']:.2f} |" in table
    assert "KID mean" in table and "A2I: 1 item(s) skipped" in table


def test_unreliable_scores_are_flagged_in_the_table(first):
    """A rank-deficient covariance (fewer images than feature dimensions) and a negative KID are listed under the
    table (and printed by the command), not only buried in fid.json."""
    import copy

    from gen_align.eval.vggsound_fid import fid_table, fid_warnings

    record = copy.deepcopy(first[1])
    record["conditions"]["text"]["warnings"] = ["covariance x comes from n=5 samples of 64-d features"]
    record["conditions"]["audio"]["kid"]["mean"] = -0.002
    notes = fid_warnings(record)
    assert notes == [
        "T2I: covariance x comes from n=5 samples of 64-d features",
        "A2I: KID -0.002 < 0, the unbiased estimate is within noise of 0 with 4 images; use more items.",
    ]
    table = fid_table(record)
    assert all(f"- {n}" in table for n in notes)


def test_rerun_generates_nothing_and_reuses_reference_cache(world, first, capsys):
    out, record = first
    capsys.readouterr()
    assert cli.main([*world["base"], "--kid", "--out", str(out)]) == 0
    assert "from the cache" in capsys.readouterr().out
    again = json.loads((out / "fid.json").read_text())
    assert again["generated_this_run"] == 0 and again["reference"]["cached"] is True
    assert {c: e["fid"] for c, e in again["conditions"].items()} == pytest.approx(
        {c: e["fid"] for c, e in record["conditions"].items()}
    )


def test_deleted_or_broken_images_are_regenerated_exactly(world, first):
    out, _ = first
    target = world["root"] / "resume"
    import shutil

    shutil.copytree(out, target)
    original = np.asarray(Image.open(target / "audio" / "b.png"))
    (target / "audio" / "b.png").unlink()
    (target / "text" / "c.png").write_bytes(b"\x89PNG broken")
    untouched = {p: p.stat().st_mtime_ns for p in (target / "image").iterdir()}
    assert cli.main([*world["base"], "--out", str(target)]) == 0
    record = json.loads((target / "fid.json").read_text())
    assert record["generated_this_run"] == 2
    np.testing.assert_array_equal(np.asarray(Image.open(target / "audio" / "b.png")), original)
    assert Image.open(target / "text" / "c.png").size == (16, 16)
    assert {p: p.stat().st_mtime_ns for p in (target / "image").iterdir()} == untouched
    assert "kid" not in record["conditions"]["text"]


def test_other_settings_in_the_same_folder_are_refused(world, first, capsys):
    out, _ = first
    fails([*world["base"], "--seed", "5", "--out", str(out)], capsys, "other settings", "seed")


def test_bad_inputs_exit_2(world, tmp_path, capsys):
    base, root = world["base"], world["root"]
    fails([*base, "--conditions", "text,sketch", "--out", str(tmp_path / "o")], capsys, "unknown condition", "sketch")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    argv = [*base, "--out", str(tmp_path / "o")]
    fails([*argv, "--manifest", str(tmp_path / "empty.jsonl")], capsys, "has no items")
    (tmp_path / "gone.jsonl").write_text((root / "test.jsonl").read_text().replace('"a.png"', '"missing.png"'))
    shutil_copy_inputs(root, tmp_path)
    fails([*argv, "--manifest", str(tmp_path / "gone.jsonl")], capsys, "no reference image", "a")
    fails([*argv, "--extractor", "no_such_module:Net"], capsys, "could not be loaded", "No module")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    fails([*argv, "--extractor", str(tmp_path / "junk.pt")], capsys, "not a loadable TorchScript")
    fails([*argv, "--extractor", "torch.nn:Identity"], capsys, "--extractor torch.nn:Identity")
    fails([*argv, "--extractor", "nonsense"], capsys, "neither inception")
    fails([*argv, "--conditions", "text", "--weights", "text=1"], capsys, "text+audio")
    assert not (tmp_path / "o").exists()


def test_module_spec_extractor(world, first, tmp_path):
    out, _ = first
    target = tmp_path / "m"
    import shutil

    shutil.copytree(out, target)
    argv = [*world["base"], "--conditions", "image,text", "--out", str(target)]
    assert cli.main([*argv[:-6], "--extractor", "test_fid_harness:TinyFeatures", *argv[-6:]]) == 0
    record = json.loads((target / "fid.json").read_text())
    assert record["generated_this_run"] == 0 and list(record["conditions"]) == ["image", "text"]
    assert record["extractor"]["extractor"]["name"] == "module:test_fid_harness:TinyFeatures"
    assert "| — | — |" in (target / "fid.md").read_text()


def shutil_copy_inputs(root, tmp_path):
    import shutil

    for name in "bcde":
        shutil.copy(root / f"{name}.png", tmp_path / f"{name}.png")
    for name in "abcd":
        shutil.copy(root / f"{name}.wav", tmp_path / f"{name}.wav")


def test_helpers():
    assert parse_conditions("text, image") == ("text", "image")
    with pytest.raises(ConfigError):
        parse_conditions("text,text")
    assert image_name("clip_1") == "clip_1.png" and image_name("a/b") == "a%2Fb.png"
    record = {
        "conditions": {"image": {"fid": 1.0, "column": "I→I (recon.)", "skipped": []}},
        "models": None,
        "average": None,
        "reference": {"n": 2},
        "manifest": {"path": "m.jsonl"},
        "extractor": {"extractor": {"name": "x"}},
    }
    assert "| ? | ? | — | — | — | — | 1.00 |" in fid_table(record)


def test_a_second_run_into_a_busy_folder_is_refused(world, tmp_path, capsys):
    """While another run holds the FID folder (its lock, as a running `gen-align fid` holds it), a second one is
    refused with the holder's pid, exit 2, and writes nothing there."""
    import os

    from gen_align.io import FolderLock

    out = tmp_path / "busy"
    with FolderLock(out, "rank0"):
        fails([*world["base"], "--out", str(out)], capsys, f"being written by pid {os.getpid()} ")
    assert sorted(p.name for p in out.iterdir()) == [".lock-rank0"]


def test_bad_items_are_left_out_listed_and_retried(world, tmp_path, capsys):
    """A silent clip, a clip over --max-audio-seconds and an unreadable reference frame: the run finishes (exit 0),
    scores the rest, lists each bad item with its reason (console, fid.json, fid.md); --strict stops at the first
    (exit 2) before writing anything."""
    root = world["root"]
    data = tmp_path / "data"
    data.mkdir()
    for name in "abcde":
        shutil.copy(root / f"{name}.png", data / f"{name}.png")
    for name in "ad":
        shutil.copy(root / f"{name}.wav", data / f"{name}.wav")
    sf.write(data / "b.wav", np.zeros(8000), 16000)  # silent
    sf.write(data / "c.wav", 0.3 * np.sin(np.arange(24000) / 5.0), 16000)  # 1.5 s, over the 1 s limit below
    (data / "d.png").write_bytes((root / "d.png").read_bytes()[:40])  # truncated reference frame
    shutil.copy(root / "test.jsonl", data / "test.jsonl")
    argv = [*world["base"], "--manifest", str(data / "test.jsonl"), "--conditions", "text,audio"]
    argv += ["--max-audio-seconds", "1", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 bad item(s)" in err and "b (audio)" in err and "c (audio)" in err
    assert "d (reference frame)" in err and "--strict" in err
    record = json.loads((out / "fid.json").read_text())
    failed = {f["id"]: f["error"] for f in record["conditions"]["audio"]["failed"]}
    assert sorted(failed) == ["b", "c"] and "silent" in failed["b"] and "--max-audio-seconds" in failed["c"]
    assert [f["id"] for f in record["bad_reference_frames"]] == ["d"]
    assert record["reference"]["n"] == 4 and record["conditions"]["text"]["images"] == 4
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["a.png"]
    assert "2 item(s) left out (bad input" in (out / "fid.md").read_text()

    shutil.copy(root / "b.wav", data / "b.wav")  # fixed: a rerun generates it and leaves the rest alone
    assert cli.main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "fid.json").read_text())
    assert record["generated_this_run"] == 1 and [f["id"] for f in record["conditions"]["audio"]["failed"]] == ["c"]

    strict = tmp_path / "strict"
    fails([*argv, "--strict", "--out", str(strict)], capsys, "d.png")
    assert not strict.exists()
