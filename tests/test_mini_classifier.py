"""The mini world's attribute classifier: training, accuracy, the FID-extractor contract, checkpoints, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sklearn.metrics import accuracy_score

from gen_align.errors import CheckpointError, ConfigError, InputDataError, WeightsNotFoundError
from gen_align.mini import shipped
from gen_align.mini.recipes.classifier import (
    AttributeClassifier,
    AttributeClassifierConfig,
    attribute_accuracy,
    augment_batch,
    shipped_extractor,
    train_classifier,
)
from gen_align.mini.recipes.loop import FitSettings
from gen_align.mini.world.attributes import ATTRIBUTES, NAMES

COLOURS = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
}
SCALE = 4  # draw at 4× and downsample: antialiased edges like a real renderer


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, n = [r] * 4, 4
    elif shape == "triangle":
        radii, n = [r * 1.15] * 3, 3
    elif shape == "star":
        radii, n = [r * 1.15, r * 0.45] * 5, 10
    else:  # cross: a plus sign of 12 corners
        a, b = r, r * 0.38
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b)]
        pts.append((-b, a))
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    return [
        (cx + q * math.cos(angle + 2 * math.pi * i / n), cy + q * math.sin(angle + 2 * math.pi * i / n))
        for i, q in enumerate(radii)
    ]


def render(attrs: dict[str, str], rng: np.random.Generator) -> Image.Image:
    """A 32×32 synthetic mini-world image of ``attrs`` (random grey, position, rotation, colour jitter)."""
    size = 32 * SCALE
    grey = int(rng.integers(150, 200))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    dark = (grey - 45,) * 3
    if attrs["background"] == "stripes":
        step = int(rng.integers(5, 7)) * SCALE
        for y in range(int(rng.integers(0, step)), size, step):
            draw.rectangle([0, y, size, y + 2 * SCALE - 1], fill=dark)
    elif attrs["background"] == "dots":
        step = 6 * SCALE
        off = int(rng.integers(0, step))
        for y in range(off - step, size, step):
            for x in range(off - step, size, step):
                draw.ellipse([x, y, x + 2 * SCALE, y + 2 * SCALE], fill=dark)
    r = (rng.uniform(5.0, 6.5) if attrs["size"] == "small" else rng.uniform(10.0, 12.0)) * SCALE
    margin = r * 1.15
    cx, cy = rng.uniform(margin, size - margin, size=2)
    colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[attrs["colour"]])
    if attrs["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(attrs["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return img.resize((32, 32), Image.Resampling.LANCZOS)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[Image.Image]]:
    """``n`` random items: uint8 (n, 3, 32, 32) images, (n, 4) indices, and the PIL images."""
    rng = np.random.default_rng(seed)
    indices = torch.stack([torch.from_numpy(rng.integers(0, len(ATTRIBUTES[k]), size=n)) for k in NAMES], dim=1)
    pil = [render({k: ATTRIBUTES[k][int(v)] for k, v in zip(NAMES, row, strict=True)}, rng) for row in indices]
    images = torch.from_numpy(np.stack([np.asarray(im) for im in pil])).permute(0, 3, 1, 2).contiguous()
    return images, indices.long(), pil


SMALL = AttributeClassifierConfig(widths=(16, 32, 48), feature_dim=32)
SETTINGS = FitSettings(steps=250, batch_size=32, lr=3e-3, warmup=20, seed=0)


@pytest.fixture(scope="module")
def trained() -> tuple[AttributeClassifier, tuple]:
    images, indices, _ = make_data(400, seed=1)
    model = train_classifier(images, indices, settings=SETTINGS, config=SMALL, progress=False)
    return model, make_data(300, seed=2)


def test_training_reaches_high_held_out_accuracy(trained):
    model, (images, indices, _) = trained
    acc = attribute_accuracy(model, images, indices)
    print("held-out accuracy", {k: round(v, 3) for k, v in acc.items()})
    assert acc["colour"] >= 0.95 and acc["size"] >= 0.95 and acc["background"] >= 0.9
    assert acc["shape"] >= 0.8
    assert acc["mean"] >= 0.9


def test_attribute_accuracy_matches_an_independent_count(trained):
    model, (images, indices, pil) = trained
    dicts = [{k: ATTRIBUTES[k][int(v)] for k, v in zip(NAMES, row, strict=True)} for row in indices]
    acc = attribute_accuracy(model, pil, dicts, batch_size=64)  # PIL inputs + attribute dicts
    predicted = model.predict(images)
    for i, name in enumerate(NAMES):
        assert acc[name] == pytest.approx(accuracy_score(indices[:, i].numpy(), predicted[name].numpy()))
    right = np.stack([predicted[n].numpy() == indices[:, i].numpy() for i, n in enumerate(NAMES)], axis=1)
    assert acc["all_correct"] == pytest.approx(right.all(axis=1).mean())
    assert acc["mean"] == pytest.approx(right.mean())

    # a classifier that always answers value 1 of every attribute: accuracy = frequency of value 1
    constant = AttributeClassifier(SMALL).eval()
    with torch.no_grad():
        constant.head.weight.zero_()
        constant.head.bias.zero_()
        offset = 0
        for name in NAMES:
            constant.head.bias[offset + 1] = 1.0
            offset += len(ATTRIBUTES[name])
    acc = attribute_accuracy(constant, images, indices.numpy(), batch_size=7)
    for i, name in enumerate(NAMES):
        assert acc[name] == pytest.approx((indices[:, i] == 1).float().mean().item())
    assert acc["all_correct"] == pytest.approx((indices == 1).all(dim=1).float().mean().item())


def test_fid_extractor_contract(trained, tmp_path):
    from gen_align.eval.features import FeatureStatistics

    model, (images, _, pil) = trained
    assert model(images[:5]).shape == (5, SMALL.feature_dim)
    assert model.num_features == SMALL.feature_dim and model.input_size == 32
    stats = FeatureStatistics(model)
    assert stats.num_features == SMALL.feature_dim and stats.image_size == 32
    large = [im.resize((48, 48), Image.Resampling.BICUBIC) for im in pil[:20]]
    from_pil = stats.extract(large)
    assert from_pil.shape == (20, SMALL.feature_dim) and torch.isfinite(from_pil).all()
    stats.update(images[:50])
    assert stats.compute().n == 50
    # another input size is resized inside the model (uint8 and float inputs agree)
    big = torch.nn.functional.interpolate(images[:4].float(), size=64, mode="nearest").to(torch.uint8)
    assert model(big).shape == (4, SMALL.feature_dim)
    torch.testing.assert_close(model(images[:4]), model(images[:4].float() / 255))


def test_shipped_extractor_missing_weights(monkeypatch, tmp_path):
    from gen_align.eval.vggsound_fid import load_extractor

    monkeypatch.setattr(shipped, "MINI_CLASSIFIER", tmp_path / "nothing-here")
    with pytest.raises(WeightsNotFoundError, match="gen-align mini train --ship"):
        shipped_extractor()
    with pytest.raises(ConfigError, match="gen-align mini train --ship"):
        load_extractor("gen_align.mini.recipes.classifier:shipped_extractor")


def test_shipped_extractor_loads_a_shipped_classifier(monkeypatch, tmp_path):
    from gen_align.eval.vggsound_fid import load_extractor

    AttributeClassifier(SMALL).eval().save_pretrained(tmp_path / "classifier")
    monkeypatch.setattr(shipped, "MINI_CLASSIFIER", tmp_path / "classifier")
    stats = load_extractor("gen_align.mini.recipes.classifier:shipped_extractor")
    assert stats.num_features == SMALL.feature_dim and stats.image_size == 32


def test_save_load_round_trip(trained, tmp_path):
    model, (images, _, _) = trained
    model.save_pretrained(tmp_path / "clf")
    loaded = AttributeClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.config == model.config and not loaded.training
    torch.testing.assert_close(loaded(images[:16]), model(images[:16]), rtol=0, atol=0)
    torch.testing.assert_close(loaded.logits(images[:16]), model.logits(images[:16]), rtol=0, atol=0)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        AttributeClassifier.from_pretrained(tmp_path / "missing")
    directory = AttributeClassifier(SMALL).save_pretrained(tmp_path / "clf")
    (directory / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        AttributeClassifier.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="weights"):
        AttributeClassifier.from_pretrained(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        AttributeClassifier.from_pretrained(directory)
    # config and weights of different sizes
    AttributeClassifier(SMALL).save_pretrained(tmp_path / "a")
    AttributeClassifier().save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match its config"):
        AttributeClassifier.from_pretrained(tmp_path / "a")


def test_bad_inputs():
    model = AttributeClassifier(SMALL).eval()
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    indices = torch.zeros(4, 4, dtype=torch.long)
    settings = FitSettings(steps=1, batch_size=2, lr=1e-3)
    bad_calls = {
        "int32 images": lambda: model(images.int()),
        "HWC images": lambda: model(images.permute(0, 2, 3, 1)),
        "NaN images": lambda: model(torch.full((2, 3, 32, 32), float("nan"))),
        "0-255 floats": lambda: model(images.float() + 255),
        "float training images": lambda: train_classifier(images.float(), indices, settings=settings),
        "wrong size": lambda: train_classifier(images[:, :, :16, :16].contiguous(), indices, settings=settings),
        "mismatched N": lambda: train_classifier(images, indices[:3], settings=settings),
        "int32 indices": lambda: train_classifier(images, indices.int(), settings=settings),
        "out of range": lambda: train_classifier(images, indices + 5, settings=settings),
        "labels N": lambda: attribute_accuracy(model, images, indices[:2]),
        "bad dict": lambda: attribute_accuracy(model, images[:1], [{"shape": "blob"}]),
    }
    for what, call in bad_calls.items():
        with pytest.raises(InputDataError):
            call()
            pytest.fail(what)


def test_augmentation_keeps_colours_and_size():
    images, _, _ = make_data(8, seed=3)
    x = images.float() / 255
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # colours are untouched: every output pixel is an input pixel of the same image (shift/flip/rotate only)
    for a, b in zip(x, out, strict=True):
        pixels = {tuple(p) for p in a.reshape(3, -1).T.tolist()}
        assert all(tuple(p) in pixels for p in b.reshape(3, -1).T.tolist())


def test_config_checks_and_size():
    assert sum(p.numel() for p in AttributeClassifier().parameters()) < 300_000
    with pytest.raises(ConfigError):
        AttributeClassifierConfig(widths=())
    with pytest.raises(ConfigError):
        AttributeClassifierConfig(image_size=2)
    assert AttributeClassifierConfig(widths=[8, 16]).widths == (8, 16)


def test_checkpoint_dir_resumes(tmp_path):
    images, indices, _ = make_data(16, seed=4)
    settings = FitSettings(steps=3, batch_size=8, lr=1e-3, seed=1)
    tiny = AttributeClassifierConfig(widths=(4, 8), feature_dim=8)
    first = train_classifier(images, indices, settings=settings, config=tiny, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "fit_state.pt").is_file()
    again = train_classifier(images, indices, settings=settings, config=tiny, checkpoint_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.logits(images), first.logits(images), rtol=0, atol=0)
