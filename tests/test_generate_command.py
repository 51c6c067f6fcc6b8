"""`gen-align generate / calibrate / interpolate` end to end on tiny Stable UnCLIP and Kandinsky 2.2 pipelines
saved in the hub layout under a weights dir, with a tiny space that has an audio tower (2 denoising steps)."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from tiny_models import PRESET_PATHS, tiny_audio_space, tiny_weights_home

from gen_align.cli import main
from gen_align.pipelines.stable_unclip import StableUnCLIPDecoder
from gen_align.space import AlignedSpace

SMALL = ["--steps", "2", "--height", "16", "--width", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    home = tiny_weights_home(root / "home")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    sf.write(root / "bark.wav", (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)), 16000)
    (root / "pictures").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(root / "pictures" / f"p{i}.png")
    return {
        "root": root,
        "home": home,
        "audio": str(root / "bark.wav"),
        "image": str(root / "pictures" / "p0.png"),
        "sd": str(tiny_audio_space(root / "sd_space", preset="stable-unclip-h", output_norm=6.0)),
        "kd": str(tiny_audio_space(root / "kd_space", preset="kandinsky-2.2", output_norm=6.0, image_seed=4)),
    }


def linked_home(world, tmp_path, presets):
    """A weights dir that holds only some presets (symlinks into the full one)."""
    home = tmp_path / "home"
    for preset in presets:
        for repo in PRESET_PATHS[preset]:
            (home / repo).parent.mkdir(parents=True, exist_ok=True)
            (home / repo).symlink_to(world["home"] / repo)
    return home


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_generate_from_audio_writes_pngs_grid_and_sidecars(world, tmp_path):
    out = tmp_path / "a"
    args = ["generate", "--space", world["sd"], "--weights-dir", str(world["home"]), "--audio", world["audio"]]
    assert main([*args, "--n", "2", "--seed", "3", *SMALL, "--noise-level", "10", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png",
        "image_000.json",
        "image_000.png",
        "image_001.json",
        "image_001.png",
    ]
    meta = [json.loads((out / f"image_00{i}.json").read_text()) for i in range(2)]
    assert [m["seed"] for m in meta] == [3, 4] and meta[0]["n"] == 2
    m = meta[0]
    assert m["preset"] == "stable-unclip-h" and m["decoder"]["kind"] == "stable-unclip"
    assert m["inputs"] == {"audio": str((world["root"] / "bark.wav").resolve())}
    assert (m["weights"], m["mode"], m["steps"], m["guidance"], m["noise_level"]) == (
        {"audio": 1.0},
        "slerp",
        2,
        10,
        10,
    )
    assert m["embedding"]["norm_after"] == pytest.approx(6.0) and m["embedding"]["calibration"]["mean_norm"] == 6.0
    assert set(m["embedding"]["norms_before"]) == {"audio"} and m["size"] == [16, 16]
    # the sheet enlarges the 16-pixel images 8× (nearest: each pixel a clean 8 × 8 square); the PNGs stay native
    sheet = np.asarray(Image.open(out / "grid.png"))
    assert sheet.shape == (128 + 2 * 4, 2 * 128 + 3 * 4, 3) and Image.open(out / "image_001.png").size == (16, 16)
    second = np.asarray(Image.open(out / "image_001.png"))
    np.testing.assert_array_equal(sheet[4 : 4 + 128, 136 : 136 + 128], second.repeat(8, axis=0).repeat(8, axis=1))
    # Same inputs and seed: identical pixels. Image 1 (seed 4) is image 0 of a run seeded 4.
    again = tmp_path / "b"
    assert main([*args, "--n", "2", "--seed", "3", *SMALL, "--noise-level", "10", "--out", str(again)]) == 0
    for i in range(2):
        np.testing.assert_array_equal(pixels(out / f"image_00{i}.png"), pixels(again / f"image_00{i}.png"))
    single = tmp_path / "c"
    assert main([*args, "--n", "1", "--seed", "4", *SMALL, "--noise-level", "10", "--out", str(single)]) == 0
    assert np.abs(pixels(single / "image_000.png") - pixels(out / "image_001.png")).max() <= 2
    # a rerun of fewer images into the same folder leaves no stale image_001 beside the new image_000; other files stay
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--n", "1", "--seed", "4", *SMALL, "--noise-level", "10", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "image_000.json", "image_000.png", "notes.txt"]


def test_generate_text_audio_blend_on_kandinsky(world, tmp_path):
    out = tmp_path / "k"
    argv = ["generate", "--space", world["kd"], "--weights-dir", str(world["home"]), "--text", "a dog barking"]
    argv += ["--audio", world["audio"], "--weights", "text=1,audio=3", "--mode", "lerp", "--n", "1", "--steps", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    m = json.loads((out / "image_000.json").read_text())
    assert m["decoder"] == {"kind": "kandinsky-2.2", "source": PRESET_PATHS["kandinsky-2.2"][0], "embedding_dim": 32}
    assert m["weights"] == {"text": 0.25, "audio": 0.75} and m["mode"] == "lerp" and "noise_level" not in m
    assert m["guidance"] == 4.0 and m["size"] == [16, 16]
    assert m["embedding"]["norm_after"] == pytest.approx(6.0)
    # The blend is of directions: the text/audio raw norms differ, the result has the calibrated norm only.
    space = AlignedSpace.from_pretrained(world["kd"], modalities=["text", "audio"])
    assert m["embedding"]["norms_before"]["text"] == pytest.approx(float(space.encode_text(["a dog barking"]).norm()))


@pytest.fixture
def without_mini(monkeypatch):
    """An installation without the shipped mini preset (the default whenever it is there): the hub presets'
    selection and download messages are what is left."""
    from gen_align.presets import PRESETS

    monkeypatch.delitem(PRESETS, "mini")


def test_shipped_mini_is_the_default_even_with_hub_weights_present(world):
    from gen_align.pipelines.presence import default_preset

    assert default_preset(["image"], world["home"]) == "mini"


def test_calibrate_preset_then_generate_from_image_with_the_default_preset(world, tmp_path, capsys, without_mini):
    home = linked_home(world, tmp_path, ["stable-unclip-h"])
    pictures = world["root"] / "pictures"
    assert (
        main(["calibrate", "--preset", "stable-unclip-h", "--images", str(pictures), "--weights-dir", str(home)]) == 0
    )
    record = json.loads((home / "calibration" / "stable-unclip-h.json").read_text())
    # Independent reference: the decoder pipeline's own feature extractor + image encoder.
    from diffusers import StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(str(home / PRESET_PATHS["stable-unclip-h"][0]))
    images = [Image.open(pictures / f"p{i}.png").convert("RGB") for i in range(3)]
    with torch.no_grad():
        norms = pipe.image_encoder(pipe.feature_extractor(images, return_tensors="pt").pixel_values).image_embeds
    norms = norms.double().norm(dim=-1)
    assert record["mean_norm"] == pytest.approx(float(norms.mean()), rel=1e-6)
    assert record["std_norm"] == pytest.approx(float(norms.std()), rel=1e-5)
    assert (record["count"], record["embedding_dim"], record["preset"]) == (3, 32, "stable-unclip-h")
    assert len(record["files_sha256"]) == 64 and record["images_dir"] == str(pictures.resolve())
    out = tmp_path / "img"
    assert (
        main(["generate", "--weights-dir", str(home), "--image", world["image"], "--n", "1", *SMALL, "--out", str(out)])
        == 0
    )
    m = json.loads((out / "image_000.json").read_text())
    assert m["preset"] == "stable-unclip-h" and m["space"] == "stable-unclip-h"
    assert m["embedding"]["norm_after"] == pytest.approx(record["mean_norm"], rel=1e-6)
    assert m["embedding"]["calibration"]["source"] == str(home / "calibration" / "stable-unclip-h.json")


def test_default_preset_is_the_smallest_present_and_missing_calibration_is_explained(
    world, tmp_path, capsys, without_mini
):
    base = ["generate", "--image", world["image"], "--out", str(tmp_path / "o")]
    fails([*base, "--weights-dir", str(world["home"])], capsys, "gen-align calibrate --preset stable-unclip-h")
    only_kandinsky = linked_home(world, tmp_path, ["kandinsky-2.2"])
    err = fails([*base, "--weights-dir", str(only_kandinsky)], capsys, "--preset kandinsky-2.2 --images DIR")
    assert "lacks 1 component(s)" in err and "calibration/kandinsky-2.2.json" in err
    assert not (tmp_path / "o").exists()


def test_no_weights_at_all_says_how_to_get_them(world, tmp_path, capsys, monkeypatch, without_mini):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    empty = tmp_path / "empty"
    argv = ["generate", "--text", "a cat", "--audio", world["audio"], "--weights-dir", str(empty)]
    err = fails(argv, capsys, "no preset has its weights", "GEN_ALIGN_HOME", "--weights-dir", "official BEATs file")
    for preset, repos in PRESET_PATHS.items():
        assert f"gen-align download {preset} --weights-dir {empty}" in err and all(repo in err for repo in repos)


def test_user_errors_exit_2_with_a_message(world, tmp_path, capsys):
    sd = ["generate", "--space", world["sd"], "--weights-dir", str(world["home"]), "--out", str(tmp_path / "o")]
    fails(sd, capsys, "no condition given")
    fails([*sd, "--image", str(tmp_path / "missing.png")], capsys, "missing.png does not exist")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    fails([*sd, "--audio", str(corrupt)], capsys, "corrupt.wav")
    fails([*sd, "--text", "x", "--weights", "text0.5"], capsys, "cannot parse --weights 'text0.5'", "text=0.5")
    fails([*sd, "--text", "x", "--weights", "text=abc"], capsys, "NAME=NUMBER")
    fails([*sd, "--text", "x", "--weights", "text=1,audio=1"], capsys, "unknown: ['audio']")
    fails([*sd, "--text", "x", "--audio", world["audio"], "--weights", "text=-1,audio=1"], capsys, ">= 0")
    fails(
        [*sd, "--text", "x", "--audio", world["audio"], "--weights", "text=0,audio=0"], capsys, "all weights are zero"
    )
    fails([*sd, "--text", "   "], capsys, "--text is empty")
    fails([*sd, "--text", "x", "--n", "0"], capsys, "--n must be an integer >= 1")
    fails([*sd, "--text", "x", "--offload"], capsys, "needs a CUDA GPU")
    fails([*sd, "--text", "x", "--preset", "stable-unclip-h"], capsys, "either --preset or --space")
    kd = ["generate", "--space", world["kd"], "--weights-dir", str(world["home"]), "--text", "x"]
    fails([*kd, "--noise-level", "3", "--out", str(tmp_path / "o")], capsys, "stable-unclip decoder only")
    assert not (tmp_path / "o").exists()


def test_dimension_mismatch_and_broken_decoder(world, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    shutil.copytree(world["home"] / PRESET_PATHS["stable-unclip-h"][0], wrong)
    config = json.loads((wrong / "unet" / "config.json").read_text())
    config["projection_class_embeddings_input_dim"] = 48  # a 24-d decoder
    (wrong / "unet" / "config.json").write_text(json.dumps(config))
    argv = ["generate", "--space", world["sd"], "--text", "x", "--out", str(tmp_path / "o")]
    fails([*argv, "--decoder", str(wrong)], capsys, "dimension mismatch", "gives 32-d", "takes 24-d")
    broken = tmp_path / "broken"
    shutil.copytree(world["home"] / PRESET_PATHS["stable-unclip-h"][0], broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    fails([*argv, "--decoder", str(broken), *SMALL], capsys, "could not be loaded", "download it again")


def test_nan_embeddings_and_out_of_memory(world, tmp_path, capsys, monkeypatch):
    argv = ["generate", "--space", world["sd"], "--weights-dir", str(world["home"]), "--text", "x", *SMALL]
    argv += ["--out", str(tmp_path / "o")]
    with monkeypatch.context() as m:
        m.setattr(AlignedSpace, "encode_text", lambda self, texts, **kw: torch.full((1, 32), float("nan")))
        fails(argv, capsys, "NaN")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StableUnCLIPDecoder, "_generate", out_of_memory)
    fails(argv, capsys, "ran out of memory", "--offload", "smaller --n")
    assert not (tmp_path / "o").exists()


def test_interpolate_writes_strip_gif_and_json_with_exact_endpoints(world, tmp_path):
    out = tmp_path / "i"
    common = ["--space", world["sd"], "--weights-dir", str(world["home"]), "--seed", "7", *SMALL]
    argv = ["interpolate", "--start", "text=a dog barking", "--end", f"audio={world['audio']}", "--frames", "3"]
    assert main([*argv, *common, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["interpolation.gif", "interpolation.json", "interpolation.png"]
    strip = Image.open(out / "interpolation.png")
    assert strip.size == (3 * 128, 128)  # 16-pixel frames enlarged 8× (nearest) for viewing
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 3 and gif.info["loop"] == 0 and gif.size == (128, 128)
    record = json.loads((out / "interpolation.json").read_text())
    assert record["t"] == [0.0, 0.5, 1.0] and record["seed"] == 7 and record["mode"] == "slerp"
    assert record["start"] == {"text": "a dog barking"} and record["embedding"]["norm_after"] == pytest.approx(6.0)
    # The first frame is the start input alone, generated with the same seed.
    single = tmp_path / "s"
    assert main(["generate", "--text", "a dog barking", "--n", "1", *common, "--out", str(single)]) == 0
    first = np.asarray(strip.convert("RGB")).astype(int)[::8, :128:8]  # one pixel of each 8 × 8 square
    assert np.abs(first - pixels(single / "image_000.png")).max() <= 2


def test_interpolate_and_calibrate_errors(world, tmp_path, capsys):
    argv = ["interpolate", "--space", world["sd"], "--weights-dir", str(world["home"]), "--end", "text=x"]
    fails([*argv, "--start", "smell=roses"], capsys, "KIND=VALUE")
    fails([*argv, "--start", "text=y", "--frames", "1"], capsys, "--frames must be an integer >= 2")
    empty = tmp_path / "no-images"
    empty.mkdir()
    fails(["calibrate", "--space", world["sd"], "--images", str(empty)], capsys, "holds no images")
    fails(["calibrate", "--space", world["sd"], "--images", str(tmp_path / "nope")], capsys, "is not a directory")


def test_calibrate_space_updates_its_config(world, tmp_path):
    space = tmp_path / "space"
    shutil.copytree(world["sd"], space)
    assert main(["calibrate", "--space", str(space), "--images", str(world["root"] / "pictures")]) == 0
    config = json.loads((space / "config.json").read_text())
    assert config["output_norm"] == config["calibration"]["mean_norm"]
    assert config["calibration"]["previous_output_norm"] == 6.0 and config["calibration"]["count"] == 3
    reference = AlignedSpace.from_pretrained(world["sd"], modalities=["image"])
    files = sorted((world["root"] / "pictures").glob("*.png"))
    assert config["output_norm"] == pytest.approx(float(reference.encode_image(files).norm(dim=-1).mean()), rel=1e-6)


def test_audio_over_the_length_limit_is_refused_before_decoding(world, tmp_path, capsys):
    """`--max-audio-seconds` (default 600) bounds what generate and interpolate decode: a longer clip is refused
    from its header with its length, the limit and the flag, before any model loads (exit 2, nothing written)."""
    out = tmp_path / "o"
    args = ["--space", world["sd"], "--weights-dir", str(world["home"]), *SMALL, "--out", str(out)]
    seconds = sf.info(world["audio"]).duration
    fails(["generate", "--audio", world["audio"], "--max-audio-seconds", "0.5", *args], capsys,
          f"is {seconds:.2f} s long, over the limit max_seconds=0.5", "--max-audio-seconds sets the limit")  # fmt: skip
    fails(["interpolate", "--start", "text=a dog", "--end", f"audio={world['audio']}", "--max-audio-seconds", "0.5",
           *args], capsys, "over the limit")  # fmt: skip
    fails(["generate", "--audio", world["audio"], "--max-audio-seconds", "0", *args], capsys, "--max-audio-seconds")
    assert not out.exists()
