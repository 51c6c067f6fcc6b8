"""The mini-world generator: determinism, resumable building, errors, and attributes recoverable from the signals.

The recovery checks use plain signal processing written from the specification (reference hues, harmonic
profiles, rhythm rates), not the generator's own tables, except the shape masks the brief asks to reuse.
"""

from __future__ import annotations

import colorsys
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from gen_align.data.manifest import read_manifest
from gen_align.errors import ConfigError, GenAlignError, InputFileError, OutputError
from gen_align.mini.world.attributes import ATTRIBUTES
from gen_align.mini.world.captions import SYNONYMS, TEMPLATES
from gen_align.mini.world.dataset import build_world, make_item, read_world, world_items
from gen_align.mini.world.render import shape_mask, shape_polygon

RECOVERY_ITEMS = 60
MIN_RATE = 0.95

# --- reference values from the specification -------------------------------------------------------------
REFERENCE_HUES = {"red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 125.0, "blue": 225.0, "purple": 280.0}
NOTES_HZ = {"red": 261.63, "orange": 293.66, "yellow": 329.63, "green": 369.99, "blue": 415.30, "purple": 466.16}
TIMBRES = {
    "circle": [1, 0, 0, 0, 0, 0, 0, 0],
    "square": [1, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7, 0],
    "triangle": [1 / k for k in range(1, 9)],
    "star": [1] * 8,
    "cross": [1, 1, 0, 1, 0, 0, 0, 1],
}
SMALL_AREA_MAX = 160  # pixels: small shapes cover ≈ 55–110, large ones ≈ 220–345


# --- image analysis ----------------------------------------------------------------------------------------
def _chroma(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1) - pixels.min(axis=-1)


def foreground_mask(image: Image.Image) -> np.ndarray:
    """Pixels whose saturation is at least half the shape's: the greys of the background have almost none."""
    chroma = _chroma(np.asarray(image, dtype=float))
    return chroma > 0.5 * np.percentile(chroma, 98)


def image_colour(image: Image.Image) -> str:
    pixels = np.asarray(image, dtype=float)
    chroma = _chroma(pixels)
    core = chroma > 0.8 * np.percentile(chroma, 98)
    r, g, b = pixels[core].mean(axis=0) / 255
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360

    def distance(name: str) -> float:
        d = abs(hue - REFERENCE_HUES[name]) % 360
        return min(d, 360 - d)

    return min(REFERENCE_HUES, key=distance)


def image_size(image: Image.Image) -> str:
    return "small" if foreground_mask(image).sum() < SMALL_AREA_MAX else "large"


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def image_background(image: Image.Image) -> str:
    """Flat → plain; else split the greys at mid-range: stripes give two halves, dots a small minority."""
    grey = np.asarray(image, dtype=float).mean(axis=-1)
    values = grey[~_dilate(foreground_mask(image), 2)]
    low, high = np.percentile(values, [1, 99])
    if high - low < 12:
        return "plain"
    upper = (values > (low + high) / 2).mean()
    return "stripes" if min(upper, 1 - upper) > 0.3 else "dots"


def image_shape(image: Image.Image, pose: dict) -> str:
    mask = foreground_mask(image)

    def iou(shape: str) -> float:
        other = shape_mask(shape, pose)
        return (mask & other).sum() / (mask | other).sum()

    return max(ATTRIBUTES["shape"], key=iou)


# --- audio analysis ----------------------------------------------------------------------------------------
def _spectrum(waveform: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and the power spectrum smoothed over 40 Hz (Hann kernel): the rhythm's sidebands merge into
    one hump centred on each harmonic."""
    power = np.abs(np.fft.rfft(waveform * np.hanning(waveform.size))) ** 2
    freqs = np.fft.rfftfreq(waveform.size, 1 / rate)
    kernel = np.hanning(int(round(40 / freqs[1])) | 1)
    return freqs, np.convolve(power, kernel / kernel.sum(), mode="same")


def fundamental_hz(waveform: np.ndarray, rate: int) -> float:
    """The lowest strong spectral hump (every timbre has its strongest harmonic at 1, maybe tied)."""
    freqs, power = _spectrum(waveform, rate)
    first = int(np.argmax(power > 0.25 * power.max()))
    window = (freqs >= freqs[first]) & (freqs <= freqs[first] * 1.15)
    return float(freqs[window][np.argmax(power[window])])


def audio_pitch(waveform: np.ndarray, rate: int) -> tuple[str, str]:
    """(colour, size) of the nearest note: large = the C4 octave, small = one octave up."""
    f0 = fundamental_hz(waveform, rate)
    candidates = {(c, s): hz * (1 if s == "large" else 2) for c, hz in NOTES_HZ.items() for s in ("small", "large")}
    return min(candidates, key=lambda key: abs(np.log2(f0 / candidates[key])))


def audio_timbre(waveform: np.ndarray, rate: int) -> str:
    """Nearest harmonic profile: amplitudes of harmonics 1..8 relative to the fundamental."""
    freqs, power = _spectrum(waveform, rate)
    f0 = fundamental_hz(waveform, rate)
    peaks = [power[(freqs > k * f0 * 0.97) & (freqs < k * f0 * 1.03)].max() for k in range(1, 9)]
    profile = np.sqrt(np.array(peaks) / peaks[0])
    return min(TIMBRES, key=lambda name: float(np.linalg.norm(profile - np.array(TIMBRES[name]))))


def audio_rhythm(waveform: np.ndarray, rate: int) -> str:
    """Frame RMS (10 ms) between 0.2 s and 1.8 s: flat → plain, else its modulation peak (4 or 8 Hz)."""
    hop = rate // 100
    frames = waveform[: waveform.size // hop * hop].reshape(-1, hop)
    envelope = np.sqrt((frames.astype(float) ** 2).mean(axis=1))[20:180]
    if envelope.std() / envelope.mean() < 0.15:
        return "plain"
    modulation = np.abs(np.fft.rfft(envelope - envelope.mean(), n=2048))
    freqs = np.fft.rfftfreq(2048, 1 / 100)
    band = (freqs > 2) & (freqs < 12)
    peak = freqs[band][np.argmax(modulation[band])]
    return "stripes" if peak < 6 else "dots"


def recovered(item: dict) -> dict[str, bool]:
    """Per check, whether the attribute read from the signal is the true one."""
    truth, image, wave, rate = item["attributes"], item["image"], item["audio"], item["sample_rate"]
    colour, size = audio_pitch(wave, rate)
    return {
        "image colour": image_colour(image) == truth["colour"],
        "image size": image_size(image) == truth["size"],
        "image background": image_background(image) == truth["background"],
        "image shape": image_shape(image, item["pose"]) == truth["shape"],
        "audio colour": colour == truth["colour"],
        "audio size": size == truth["size"],
        "audio shape": audio_timbre(wave, rate) == truth["shape"],
        "audio background": audio_rhythm(wave, rate) == truth["background"],
    }


def recovery_rates(items: list[dict]) -> dict[str, float]:
    results = [recovered(item) for item in items]
    return {check: float(np.mean([r[check] for r in results])) for check in results[0]}


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return list(world_items(0, "test", RECOVERY_ITEMS))


# --- recovery --------------------------------------------------------------------------------------------
def test_attributes_are_recoverable_from_image_and_audio(items):
    rates = recovery_rates(items)
    low = {check: rate for check, rate in rates.items() if rate < MIN_RATE}
    assert not low, f"recovery below {MIN_RATE}: {low} (all: {rates})"


def test_every_attribute_value_occurs(items):
    for name, values in ATTRIBUTES.items():
        seen = {item["attributes"][name] for item in items}
        assert seen == set(values), name


def test_shapes_stay_inside_the_image_with_the_same_area(items):
    for item in items:
        polygon = np.array(shape_polygon(item["attributes"]["shape"], item["pose"]))
        assert polygon.min() >= 0.5 and polygon.max() <= 31.5
        area = shape_mask(item["attributes"]["shape"], item["pose"]).sum()
        assert area == pytest.approx(2.2 * item["pose"]["radius"] ** 2, rel=0.2)


def test_audio_is_informative_but_not_identical(items):
    for item in items:
        wave = item["audio"]
        assert wave.dtype == np.float32 and wave.shape == (32000,) and item["sample_rate"] == 16000
        assert 0.3 - 1e-6 <= np.abs(wave).max() <= 0.9 + 1e-6
    waves = [i["audio"] for i in items[:10]]
    assert all(not np.allclose(waves[0], w, atol=0.01) for w in waves[1:])


# --- captions --------------------------------------------------------------------------------------------
def _mentions(caption: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", caption) is not None


def test_captions_name_every_attribute_and_only_it(items):
    for item in items:
        caption = item["text"]
        assert item["caption"] == caption
        for name, values in SYNONYMS.items():
            named = {value for value, phrases in values.items() if any(_mentions(caption, p) for p in phrases)}
            assert named == {item["attributes"][name]}, (caption, name, named)


def test_captions_use_several_templates():
    skeletons = set()
    for item in world_items(1, "train", 50):
        caption = item["text"]
        for name, values in SYNONYMS.items():
            phrases = sorted(values[item["attributes"][name]], key=len, reverse=True)
            phrase = next(p for p in phrases if _mentions(caption, p))
            caption = re.sub(rf"\b{re.escape(phrase)}\b", "{" + name + "}", caption, count=1)
        skeletons.add(re.sub(r"\ban\b", "a", caption))
    assert len(skeletons) >= 4
    assert skeletons <= {re.sub(r"\ban\b", "a", template) for template in TEMPLATES}


def test_no_ambiguous_synonyms():
    for name, values in SYNONYMS.items():
        phrases = [p for options in values.values() for p in options]
        assert len(phrases) == len(set(phrases)), name
    assert not any("dot" in p or "spot" in p for p in SYNONYMS["shape"]["circle"])


# --- building --------------------------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=3, train=12, test=4, progress=False)


def test_build_is_deterministic(built, tmp_path):
    again = build_world(tmp_path / "again", seed=3, train=12, test=4, progress=False)
    assert _files(built) == _files(again)
    other = build_world(tmp_path / "other", seed=4, train=12, test=4, progress=False)
    first, second = _files(built), _files(other)
    assert first["train/manifest.jsonl"] != second["train/manifest.jsonl"]
    assert first["train/images/train-000000.png"] != second["train/images/train-000000.png"]
    assert first["test/audio/test-000000.wav"] != second["test/audio/test-000000.wav"]


def test_built_world_reads_back_and_matches_make_item(built):
    world = read_world(built)
    assert world["seed"] == 3 and world["sizes"] == {"train": 12, "test": 4}
    assert world["attributes"]["shape"] == list(ATTRIBUTES["shape"]) and "version" in world and "format" in world
    manifest = read_manifest(built / "train" / "manifest.jsonl")
    assert len(manifest) == 12 and not manifest.missing
    assert manifest.ids[:2] == ["train-000000", "train-000001"]
    entry = manifest.items[5]
    item = make_item(3, "train", 5)
    assert entry.id == item["id"] and entry.text == item["text"]
    assert entry.extra["attributes"] == item["attributes"] and entry.extra["pose"] == item["pose"]
    assert np.array_equal(np.asarray(Image.open(entry.image)), np.asarray(item["image"]))
    wave, rate = soundfile.read(entry.audio, dtype="float32")
    assert rate == 16000 and np.abs(wave - item["audio"]).max() < 1.5 / 32767
    assert len(read_manifest(built / "test" / "manifest.jsonl")) == 4


def test_resume_regenerates_exactly_the_missing_files(built, tmp_path):
    before = _files(built)
    reused = built / "test" / "images" / "test-000001.png"
    reused_mtime = reused.stat().st_mtime_ns
    (built / "train" / "images" / "train-000002.png").unlink()
    (built / "train" / "audio" / "train-000007.wav").unlink()
    (built / "test" / "audio" / "test-000003.wav").write_bytes(b"")
    (built / "train" / "manifest.jsonl").unlink()
    (built / "train" / "images" / ".train-000009.png.123.tmp").write_bytes(b"partial")
    build_world(built, seed=3, train=12, test=4, progress=False)
    assert _files(built) == before
    assert reused.stat().st_mtime_ns == reused_mtime


def test_empty_split_is_allowed(tmp_path):
    out = build_world(tmp_path / "w", seed=0, train=0, test=2, progress=False)
    assert not (out / "train").exists()
    assert len(read_manifest(out / "test" / "manifest.jsonl")) == 2


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"train": -1}, "train"),
        ({"test": -5}, "test"),
        ({"train": 2.5}, "train"),
        ({"seed": -1}, "seed"),
        ({"train": 0, "test": 0}, "at least one item"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        build_world(tmp_path / "w", progress=False, **{"train": 2, "test": 1, **kwargs})
    assert not (tmp_path / "w" / "world.json").exists()


def test_other_settings_are_refused(tmp_path):
    out = build_world(tmp_path / "w", seed=0, train=3, test=1, progress=False)
    with pytest.raises(ConfigError, match=r"seed: 0 there, 1 now.*another output folder"):
        build_world(out, seed=1, train=3, test=1, progress=False)
    with pytest.raises(ConfigError, match="sizes"):
        build_world(out, seed=0, train=4, test=1, progress=False)


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_world(tmp_path, train=2, test=1, progress=False)


def test_missing_or_unreadable_world_json(tmp_path):
    with pytest.raises(InputFileError, match="gen-align mini build"):
        read_world(tmp_path)
    (tmp_path / "world.json").write_text("{not json")
    with pytest.raises(InputFileError, match="could not read"):
        read_world(tmp_path)
    with pytest.raises(InputFileError, match="delete"):
        build_world(tmp_path, train=2, test=1, progress=False)
    (tmp_path / "world.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputFileError, match="not a mini world"):
        read_world(tmp_path)


def test_disk_error_names_the_file(tmp_path, monkeypatch):
    import gen_align.mini.world.dataset as world_module

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    build_world(tmp_path / "w", train=1, test=1, progress=False)  # world.json first, then fail on the items
    (tmp_path / "w" / "train" / "images" / "train-000000.png").unlink()
    monkeypatch.setattr(world_module.os, "replace", full_disk)
    with pytest.raises(OutputError, match=r"train-000000\.png: No space left"):
        build_world(tmp_path / "w", train=1, test=1, progress=False)
    assert not list((tmp_path / "w" / "train" / "images").glob(".*.tmp"))


def test_make_item_refuses_bad_arguments():
    with pytest.raises(GenAlignError, match="split"):
        make_item(0, "valid", 0)
    with pytest.raises(GenAlignError, match="index"):
        make_item(0, "train", -1)
    with pytest.raises(GenAlignError, match="count"):
        world_items(0, "train", -1)


def test_png_and_wav_formats(built):
    image = Image.open(io.BytesIO((built / "train" / "images" / "train-000000.png").read_bytes()))
    assert image.size == (32, 32) and image.mode == "RGB" and image.format == "PNG"
    info = soundfile.info(str(built / "train" / "audio" / "train-000000.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 32000)
