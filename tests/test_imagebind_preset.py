"""The imagebind-h preset's path end to end, offline: a tiny preset of the same file (ImageBind audio used as it is, the
CLIP text tower, tiny Stable UnCLIP) through calibrate, generate, fid, encode and train; and what a missing ImageBind
file or a preset without an audio head says."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from tiny_models import HIDDEN, tiny_weights_home

from gen_align import cli
from gen_align.encoders.imagebind import ImageBindAudio, ImageBindAudioConfig, load_imagebind_audio
from gen_align.encoders.imagebind_tower import ImageBindAudioTower
from gen_align.presets import PRESET_CONFIGS, PRESETS, preset_from_dict
from gen_align.space import AlignedSpace
from gen_align.weights import IMAGEBIND_HUGE

SMALL = ["--steps", "2", "--height", "16", "--width", "16"]
TINY = "tiny-imagebind-h"


def tiny_imagebind_checkpoint(path: Path) -> Path:
    """A whole-model state_dict in the official layout: a tiny audio tower (12 heads, as the preset reads it) and a
    stand-in vision tensor that the loader must ignore."""
    torch.manual_seed(3)
    model = ImageBindAudio(ImageBindAudioConfig(embed_dim=48, num_blocks=2, num_heads=12, out_embed_dim=HIDDEN))
    state = {**model.official_state_dict(), "modality_trunks.vision.blocks.0.norm_1.weight": torch.ones(4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagebind")
    home = tiny_weights_home(root / "home", presets=("stable-unclip-h",))
    tiny_imagebind_checkpoint(home / IMAGEBIND_HUGE)
    raw = json.loads((PRESET_CONFIGS / "imagebind-h.json").read_text())
    preset = preset_from_dict({**raw, "name": TINY, "embedding_dim": HIDDEN}, "the tiny imagebind-h")
    rng = np.random.default_rng(0)
    lines = []
    for i, name in enumerate("abcd"):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")).save(root / f"{name}.png")
        t = np.arange(16000 + 4000 * i) / 16000
        sf.write(root / f"{name}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), 16000)
        lines.append(json.dumps({"id": name, "image": f"{name}.png", "audio": f"{name}.wav", "text": f"tone {i}"}))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, TINY, preset)
        if "fid" not in cli.COMMANDS:
            mp.setattr(cli, "COMMANDS", (*cli.COMMANDS, "fid"))
        args = ["calibrate", "--preset", TINY, "--images", str(root), "--weights-dir", str(home)]
        assert cli.main(args) == 0
        yield {"root": root, "home": home, "wav": str(root / "a.wav")}


def test_generate_feeds_imagebind_audio_as_it_is_at_the_decoders_norm(world, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "--preset", TINY, "--weights-dir", str(world["home"]), "--audio", world["wav"], "--n", "1"]
    assert cli.main([*args, *SMALL, "--out", str(out)]) == 0
    assert Image.open(out / "image_000.png").size == (16, 16)
    record = json.loads((out / "image_000.json").read_text())
    calibration = json.loads((world["home"] / "calibration" / f"{TINY}.json").read_text())
    assert record["preset"] == TINY
    assert record["embedding"]["norm_after"] == pytest.approx(calibration["mean_norm"], rel=1e-5)

    # independent of the space: the tower's own output (fixture-checked model), rescaled to the calibrated norm
    tower = ImageBindAudioTower(load_imagebind_audio(world["home"] / IMAGEBIND_HUGE))
    direction = torch.nn.functional.normalize(tower.encode([world["wav"]]), dim=-1)
    space = AlignedSpace.from_pretrained(TINY, modalities=["audio"], weights_dir=world["home"])
    assert space.config["towers"]["audio"]["native"] is True
    got = torch.nn.functional.normalize(space.encode_audio(world["wav"]), dim=-1)
    torch.testing.assert_close(got, direction, rtol=0, atol=1e-6)


def test_text_and_audio_blend_interpolation_and_fid(world, tmp_path):
    out = tmp_path / "blend"
    args = ["generate", "--preset", TINY, "--weights-dir", str(world["home"]), "--audio", world["wav"]]
    assert cli.main([*args, "--text", "a tone", "--n", "1", *SMALL, "--out", str(out)]) == 0
    assert (out / "image_000.png").is_file()

    frames = tmp_path / "frames"
    args = ["interpolate", "--preset", TINY, "--weights-dir", str(world["home"]), "--start", f"audio={world['wav']}"]
    assert cli.main([*args, "--end", "text=a tone", "--frames", "2", *SMALL, "--out", str(frames)]) == 0
    assert json.loads((frames / "interpolation.json").read_text())["t"] == [0.0, 1.0]

    extractor = world["root"] / "features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from test_fid_harness import TinyFeatures

        torch.jit.script(TinyFeatures()).save(str(extractor))
    fid_out = tmp_path / "fid"
    args = [
        "fid",
        "--preset",
        TINY,
        "--weights-dir",
        str(world["home"]),
        "--manifest",
        str(world["root"] / "test.jsonl"),
    ]
    args += ["--extractor", str(extractor), "--cache-dir", str(tmp_path / "cache"), *SMALL, "--out", str(fid_out)]
    assert cli.main(args) == 0
    record = json.loads((fid_out / "fid.json").read_text())
    assert [record["conditions"][c]["images"] for c in ("text", "audio", "text+audio")] == [4, 4, 4]
    assert np.isfinite(record["conditions"]["audio"]["fid"])


def test_encode_and_train_on_imagebind_features(world, tmp_path):
    cache = tmp_path / "cache"
    args = ["encode", str(world["root"] / "test.jsonl"), "--preset", TINY, "--weights-dir", str(world["home"])]
    assert cli.main([*args, "--out", str(cache)]) == 0
    from gen_align.data.cache import FeatureCache

    ids = list("abcd")
    features = FeatureCache.load(cache).get("audio", ids)
    tower = ImageBindAudioTower(load_imagebind_audio(world["home"] / IMAGEBIND_HUGE))
    torch.testing.assert_close(features, tower.encode([world["root"] / f"{i}.wav" for i in ids]), rtol=0, atol=1e-6)

    run = tmp_path / "run"
    args = ["train", "--features", str(cache), "--out", str(run), "--objective", "unialign"]
    for setting in ("batch_size=2", "max_steps=2", "val_size=2", "head.kind=linear"):
        args += ["--set", setting]
    assert cli.main(args) == 0
    trained = AlignedSpace.from_pretrained(run / "space", modalities=["audio"], weights_dir=world["home"])
    assert trained.config["towers"]["audio"]["kind"] == "imagebind-audio" and "audio" in trained.heads
    assert trained.encode_audio(world["wav"]).shape == (1, HIDDEN)


def test_a_missing_imagebind_file_is_named_with_its_official_source(world, tmp_path, capsys):
    empty = tmp_path / "empty"
    args = ["generate", "--preset", "imagebind-h", "--weights-dir", str(empty), "--audio", world["wav"]]
    args += ["--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(empty / IMAGEBIND_HUGE) in err and "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth" in err
    assert "CC BY-NC 4.0" in err and "gen-align download imagebind-h" in err


def test_the_paper_preset_needs_a_trained_audio_head(world, tmp_path, capsys):
    raw = json.loads((PRESET_CONFIGS / "stable-unclip-h.json").read_text())
    assert raw["towers"]["audio"]["kind"] == "imagebind-audio" and "native" not in raw["towers"]["audio"]
    assert json.loads((PRESET_CONFIGS / "stable-unclip-h-beats.json").read_text())["towers"]["audio"]["kind"] == "beats"
    preset = preset_from_dict({**raw, "name": "tiny-sd-h", "embedding_dim": HIDDEN}, "the tiny stable-unclip-h")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "tiny-sd-h", preset)
        space = AlignedSpace.from_pretrained("tiny-sd-h", modalities=["audio"], weights_dir=world["home"])
        with pytest.raises(Exception, match="no trained audio head"):
            space.encode_audio(world["wav"])


def test_one_calibration_serves_the_presets_of_one_image_tower_and_decoder(tmp_path):
    from gen_align.pipelines.calibration import calibration_file

    (tmp_path / "calibration").mkdir()
    measured = tmp_path / "calibration" / "stable-unclip-h.json"
    measured.write_text("{}")
    assert calibration_file("imagebind-h", tmp_path) == measured
    assert calibration_file("stable-unclip-h-beats", tmp_path) == measured
    assert calibration_file("kandinsky-2.2", tmp_path) is None  # another image tower and decoder
    own = tmp_path / "calibration" / "imagebind-h.json"
    own.write_text("{}")
    assert calibration_file("imagebind-h", tmp_path) == own  # a preset's own file comes first
