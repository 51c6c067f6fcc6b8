"""The shipped ``mini`` preset: inside the package, small, the offline default, and its images carry the input's
attributes (scored by the shipped attribute classifier on fresh world items the models never saw)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from gen_align.cli import main
from gen_align.mini.shipped import MINI_CLASSIFIER, MINI_DECODER, MINI_EXAMPLES, MINI_SPACE, MINI_WEIGHTS
from gen_align.mini.world.attributes import NAMES, index_tensor
from gen_align.mini.world.dataset import make_item

UNSEEN_SEED = 12345  # a world seed no shipped model was trained or tested on
ITEMS = 64
# minimum accuracy per attribute and of all four at once, from text, from audio and decoding the true image
# embedding (10 steps, the decoder's default guidance 4, seed 0), on these 64 unseen items: the shipped preset's
# measured values (docs/mini.md) less a margin of about two binomial standard deviations; chance: shape 0.2,
# colour 0.17, size 0.5, background 0.33, all four 0.006
# measured (2026-12-03, guidance 4): text 0.875 / 1.0 / 1.0 / 0.922, all four 0.797; audio 0.812 / 0.984 / 0.984 /
# 0.953, all four 0.766; image 0.875 / 1.0 / 1.0 / 0.891, all four 0.781 (at guidance 2: all four 0.75 / 0.766 /
# 0.797 on these items; on 512 test items from the true embedding 75.6 % → 84.6 %)
T2I_MIN = {"shape": 0.75, "colour": 0.95, "size": 0.95, "background": 0.78, "all_correct": 0.62}
A2I_MIN = {"shape": 0.75, "colour": 0.95, "size": 0.9, "background": 0.8, "all_correct": 0.64}
RECONSTRUCTION_MIN = {"shape": 0.8, "colour": 0.95, "size": 0.95, "background": 0.75, "all_correct": 0.67}


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unseen")
    items = [make_item(UNSEEN_SEED, "test", i) for i in range(ITEMS)]
    for item in items:
        sf.write(folder / f"{item['id']}.wav", item["audio"], item["sample_rate"], subtype="PCM_16")
    return folder, items


@pytest.fixture(scope="module")
def shipped():
    from gen_align.mini.recipes.classifier import AttributeClassifier
    from gen_align.pipelines.decoders import load_decoder
    from gen_align.space import AlignedSpace

    space = AlignedSpace.from_pretrained("mini")
    decoder = load_decoder(str(MINI_DECODER), device="cpu", progress=False)
    return space, decoder, AttributeClassifier.from_pretrained(MINI_CLASSIFIER)


def test_the_preset_is_package_data_under_20_mb_in_safetensors():
    files = [p for p in MINI_WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert (MINI_SPACE / "config.json").is_file() and (MINI_EXAMPLES / "examples.json").is_file()


def test_it_is_the_offline_default(tmp_path, monkeypatch):
    from gen_align.pipelines.presence import available_presets, default_preset

    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path))  # nothing downloaded anywhere
    assert default_preset(["text", "audio", "image"], tmp_path) == "mini"
    assert available_presets(["text"], tmp_path) == ["mini"]


def _accuracy(classifier, images, items) -> dict[str, float]:
    from gen_align.mini.recipes.classifier import attribute_accuracy

    return attribute_accuracy(classifier, images, index_tensor([i["attributes"] for i in items]))


def _meets(accuracy: dict[str, float], minimum: dict[str, float]) -> None:
    short = {k: (round(accuracy[k], 3), v) for k, v in minimum.items() if accuracy[k] < v}
    assert not short, f"below the measured minimum (got, minimum): {short}; all: {accuracy}"


@pytest.mark.parametrize("kind", ["text", "audio"])
def test_text_and_audio_to_image_reach_the_measured_attribute_accuracy(shipped, unseen, kind):
    from gen_align.pipelines.calibration import rescale

    space, decoder, classifier = shipped
    folder, items = unseen
    if kind == "text":
        z = space.encode_text([i["text"] for i in items])
    else:
        z = space.encode_audio([str(folder / f"{i['id']}.wav") for i in items])
    images = decoder(rescale(z, decoder_stats(space)), seed=0, steps=10)  # the decoder's default guidance (4)
    _meets(_accuracy(classifier, images, items), T2I_MIN if kind == "text" else A2I_MIN)


def test_the_decoder_reconstructs_every_attribute_from_the_true_image_embedding(shipped, unseen):
    """The upper bound of every method: the decoder given the image's own CLIP embedding draws its attributes."""
    space, decoder, classifier = shipped
    _, items = unseen
    z = space.encode_image([i["image"] for i in items])
    images = decoder(z, seed=0, steps=10)
    _meets(_accuracy(classifier, images, items), RECONSTRUCTION_MIN)


def test_the_classifier_reads_real_world_images(shipped, unseen):
    _, _, classifier = shipped
    _, items = unseen
    accuracy = _accuracy(classifier, [i["image"] for i in items], items)
    assert all(accuracy[name] >= 0.9 for name in NAMES), accuracy


def test_readme_generation_runs_offline_on_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path / "home"))
    example = json.loads((MINI_EXAMPLES / "examples.json").read_text())[0]
    out = tmp_path / "out"
    args = ["generate", "--text", "a small red star on stripes", "--audio", str(MINI_EXAMPLES / example["audio"])]
    assert main([*args, "--n", "2", "--steps", "4", "--out", str(out)]) == 0
    sidecar = json.loads((out / "image_000.json").read_text())
    assert (sidecar["preset"], sidecar["decoder"]["kind"], sidecar["size"]) == ("mini", "mini", [32, 32])
    assert (out / "grid.png").is_file()


def decoder_stats(space):
    from gen_align.pipelines.decoders import EmbeddingStats

    return EmbeddingStats(float(space.config["output_norm"]))


def test_image_embeddings_are_at_the_decoders_scale(shipped, unseen):
    space, _, _ = shipped
    _, items = unseen
    norms = space.encode_image([i["image"] for i in items]).norm(dim=-1)
    assert torch.allclose(norms.mean(), torch.tensor(space.config["output_norm"]), rtol=0.1)


def test_a_prompt_outside_the_worlds_words_is_warned_about(tmp_path, capsys, monkeypatch):
    """The mini preset's text tower knows only its world's words: a prompt with none of them ("a dog barking in
    the rain") still makes images but warns, on stderr and in the sidecar, and says what it understands; a prompt
    with one of them does not."""
    from gen_align.mini.world.captions import SYNONYMS

    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path / "home"))
    space = __import__("gen_align.space", fromlist=["AlignedSpace"]).AlignedSpace.from_pretrained("mini", modalities=[])
    assert space.prompt_warning("a huge emerald disc") is None
    for value in (v for values in SYNONYMS.values() for v in values):  # every attribute value's own name is known
        assert space.prompt_warning(f"a {value}") is None, value
    args = ["generate", "--text", "a dog barking in the rain", "--n", "1", "--steps", "1", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: none of the words of 'a dog barking in the rain' is one this space's text tower learned" in err
    assert "shape: circle, square, triangle, star, cross" in err
    sidecar = json.loads((tmp_path / "o" / "image_000.json").read_text())
    assert sidecar["warnings"] == [err.split("warning: ", 1)[1].strip()]


def test_calibrating_a_preset_with_its_own_norm_says_which_norm_generate_uses(tmp_path, capsys):
    """`gen-align calibrate --preset mini` writes calibration/mini.json, but the mini space carries its own
    output_norm, which generate keeps using: the command says so and how to rescale instead, and the sidecar names
    the norm used."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        make_item(UNSEEN_SEED, "test", 100 + i)["image"].save(images / f"{i}.png")
    home = tmp_path / "home"
    assert main(["calibrate", "--preset", "mini", "--images", str(images), "--weights-dir", str(home)]) == 0
    said = capsys.readouterr().out
    assert (home / "calibration" / "mini.json").is_file()
    assert "note: the mini space has its own output_norm" in said and "calibrate --space COPY" in said
    out = tmp_path / "out"
    args = ["generate", "--text", "a large blue circle", "--weights-dir", str(home), "--n", "1", "--steps", "1"]
    assert main([*args, "--out", str(out)]) == 0
    embedding = json.loads((out / "image_000.json").read_text())["embedding"]
    own = json.loads((MINI_SPACE / "config.json").read_text())["output_norm"]
    assert embedding["norm_after"] == pytest.approx(own, rel=1e-4)
    assert embedding["calibration"]["source"] == "space config output_norm"
