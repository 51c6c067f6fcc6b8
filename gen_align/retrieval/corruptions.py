"""Input-level corruptions for robustness curves: pure, seeded functions (the input is never modified).

| name           | function                                | input                                           |
|----------------|-----------------------------------------|-------------------------------------------------|
| "audio-noise"  | ``add_gaussian_noise(w, snr_db, seed)`` | float waveform (T,) or (C, T), NumPy or torch   |
| "image-blur"   | ``gaussian_blur(image, radius)``        | PIL image                                       |
| "word-dropout" | ``word_dropout(text, p, seed)``         | string                                          |
| "synonyms"     | ``synonym_substitution(text, p, seed)`` | string (words of :data:`SYNONYMS` are swapped)  |

:func:`get_corruption` binds the severity and returns ``f(item, seed) -> corrupted item``, the form
:func:`~gen_align.retrieval.geometry_metrics.robustness_curve` calls.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gen_align.checks import choice, integer, non_negative
from gen_align.errors import ConfigError, InputDataError

__all__ = [
    "CORRUPTIONS",
    "SYNONYMS",
    "add_gaussian_noise",
    "gaussian_blur",
    "get_corruption",
    "synonym_substitution",
    "word_dropout",
]

CORRUPTIONS = ("audio-noise", "image-blur", "word-dropout", "synonyms")
_SYNONYM_GROUPS = (  # caption words of VGGSound / COCO-style text and of the mini world, in groups of synonyms
    ("dog", "hound", "puppy"), ("cat", "kitten", "feline"), ("man", "guy", "gentleman"), ("woman", "lady"),
    ("person", "individual"), ("child", "kid"), ("people", "folks"), ("car", "automobile", "vehicle"),
    ("playing", "performing"), ("talking", "speaking", "chatting"), ("singing", "crooning"),
    ("running", "jogging"), ("walking", "strolling"), ("loud", "noisy"), ("quiet", "soft"), ("music", "tune"),
    ("sound", "noise"), ("water", "liquid"), ("rain", "drizzle"), ("bird", "songbird"), ("road", "street"),
    ("small", "little", "tiny"), ("large", "big", "huge"), ("red", "crimson", "scarlet"), ("blue", "azure"),
    ("green", "emerald"), ("yellow", "golden"), ("purple", "violet"), ("orange", "amber"),
    ("circle", "disc", "ring"), ("square", "box"), ("triangle", "wedge"), ("star", "pentagram"),
    ("cross", "plus"), ("stripes", "bands"), ("dots", "spots"), ("plain", "bare"), ("picture", "image", "photo"),
)  # fmt: skip
SYNONYMS: dict[str, tuple[str, ...]] = {
    word: tuple(other for other in group if other != word) for group in _SYNONYM_GROUPS for word in group
}
"""The built-in synonym table: every word of a group maps to the others of its group."""


def add_gaussian_noise(waveform: np.ndarray | torch.Tensor, snr_db: float, seed: int = 0) -> np.ndarray | torch.Tensor:
    """``waveform`` + white Gaussian noise at exactly ``snr_db`` dB SNR; same type, dtype, shape and device.

    SNR = 10 log10(P_signal / P_noise), P = mean of the squared samples over all channels. The noise is drawn
    from N(0, 1) with ``np.random.default_rng(seed)`` and scaled so that its realised power gives the SNR
    exactly (up to the output dtype's rounding).
    """
    if isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real) or not math.isfinite(snr_db):
        raise ConfigError(f"snr_db must be a finite number of decibels (e.g. 10, 0, -5), got {snr_db!r}.")
    integer(seed, "seed", low=0)
    is_torch = isinstance(waveform, torch.Tensor)
    if not is_torch and not isinstance(waveform, np.ndarray):
        raise InputDataError(
            f"add_gaussian_noise: expected a waveform as a NumPy array or torch tensor, got {type(waveform).__name__}; "
            "decode audio files first (gen_align.encoders.audio_io.load_audio)."
        )
    x = waveform.detach().cpu().numpy() if is_torch else waveform
    if not np.issubdtype(x.dtype, np.floating):
        raise InputDataError(
            f"add_gaussian_noise: expected a floating-point waveform in [-1, 1], got dtype {x.dtype}; "
            "convert integer PCM first (e.g. int16 / 2**15)."
        )
    if x.ndim not in (1, 2) or x.size == 0:
        raise InputDataError(f"add_gaussian_noise: expected a non-empty (T,) or (C, T) waveform, got shape {x.shape}.")
    signal = x.astype(np.float64)
    if not np.isfinite(signal).all():
        raise InputDataError("add_gaussian_noise: the waveform holds NaN/inf samples; fix the decoding first.")
    power = float(np.mean(signal**2))
    if power == 0:
        raise InputDataError("add_gaussian_noise: the waveform is silent (all zeros), so no SNR is defined.")
    noise = np.random.default_rng(int(seed)).standard_normal(signal.shape)
    noise *= math.sqrt(power / 10.0 ** (float(snr_db) / 10.0) / float(np.mean(noise**2)))
    out = (signal + noise).astype(x.dtype)
    return torch.from_numpy(out).to(waveform.device) if is_torch else out


def gaussian_blur(image: Any, radius: float) -> Any:
    """A Gaussian-blurred copy of a PIL ``image`` (``PIL.ImageFilter.GaussianBlur(radius)``, radius in pixels ≥ 0)."""
    from PIL import Image, ImageFilter

    radius = non_negative(radius, "radius", "(the blur's standard deviation in pixels, e.g. 2)")
    if not isinstance(image, Image.Image):
        raise InputDataError(
            f"gaussian_blur: expected a PIL image, got {type(image).__name__}; convert arrays with "
            "PIL.Image.fromarray(array) or open files with PIL.Image.open(path)."
        )
    return image.copy() if radius == 0 else image.filter(ImageFilter.GaussianBlur(radius))


def word_dropout(text: str, p: float, seed: int = 0) -> str:
    """``text`` with round(p · n) of its n whitespace-separated words removed (chosen uniformly with
    ``random.Random(seed)``, at least one word always kept), the rest joined by single spaces in order.

    The count is exact, not Bernoulli, so short captions lose the stated fraction. Nothing to drop
    (p rounds to 0 words, or fewer than two words) returns ``text`` unchanged."""
    if not isinstance(text, str):
        raise InputDataError(f"word_dropout: expected a string, got {type(text).__name__}.")
    p = non_negative(p, "p", "(the fraction of words to drop, in [0, 1])")
    if p > 1:
        raise ConfigError(f"p must be a fraction in [0, 1], got {p}.")
    integer(seed, "seed", low=0)
    words = text.split()
    n_drop = min(math.floor(p * len(words) + 0.5), len(words) - 1)
    if n_drop <= 0:
        return text
    dropped = set(random.Random(int(seed)).sample(range(len(words)), n_drop))
    return " ".join(w for i, w in enumerate(words) if i not in dropped)


def synonym_substitution(text: str, p: float, seed: int = 0, table: dict[str, tuple[str, ...]] | None = None) -> str:
    """``text`` with round(p · n) of its n replaceable words (those in ``table``, default :data:`SYNONYMS`,
    case-insensitively, trailing punctuation kept) replaced by one of their synonyms, all choices drawn with
    ``random.Random(seed)``; the other words and the spacing of the words kept. As :func:`word_dropout`, the count
    is exact; a text without a replaceable word is returned unchanged."""
    if not isinstance(text, str):
        raise InputDataError(f"synonym_substitution: expected a string, got {type(text).__name__}.")
    p = non_negative(p, "p", "(the fraction of replaceable words to swap, in [0, 1])")
    if p > 1:
        raise ConfigError(f"p must be a fraction in [0, 1], got {p}.")
    integer(seed, "seed", low=0)
    table = SYNONYMS if table is None else table
    words = text.split()
    stems = [w.rstrip(".,;:!?").lower() for w in words]
    replaceable = [i for i, stem in enumerate(stems) if table.get(stem)]
    count = math.floor(p * len(replaceable) + 0.5)
    if count == 0:
        return text
    rng = random.Random(int(seed))
    for i in sorted(rng.sample(replaceable, count)):
        word, stem = words[i], stems[i]
        new = rng.choice(table[stem])
        new = new.capitalize() if word[:1].isupper() else new
        words[i] = new + word[len(word.rstrip(".,;:!?")) :]
    return " ".join(words)


def get_corruption(name: str, **params: Any) -> Callable[[Any, int], Any]:
    """``f(item, seed)`` applying corruption ``name`` with its severity bound: "audio-noise" (``snr_db``;
    items are waveforms or ``(waveform, sample_rate)`` pairs), "image-blur" (``radius``; seed unused),
    "word-dropout" and "synonyms" (``p``)."""
    choice(name, "corruption", CORRUPTIONS)
    needed = {"audio-noise": "snr_db", "image-blur": "radius", "word-dropout": "p", "synonyms": "p"}[name]
    if set(params) != {needed}:
        raise ConfigError(f"corruption {name!r} takes exactly one parameter, {needed}=..., got {sorted(params)}.")
    value = params[needed]
    if name == "audio-noise":
        add_gaussian_noise(np.ones(1), value)  # validates snr_db now rather than on the first item

        def noisy(item: Any, seed: int) -> Any:
            if isinstance(item, tuple) and len(item) == 2:
                return add_gaussian_noise(item[0], value, seed), item[1]
            return add_gaussian_noise(item, value, seed)

        return noisy
    if name == "image-blur":
        non_negative(value, "radius")
        return lambda item, seed: gaussian_blur(item, value)
    text_fn = word_dropout if name == "word-dropout" else synonym_substitution
    text_fn("", value)  # validates p
    return lambda item, seed: text_fn(item, value, seed)
