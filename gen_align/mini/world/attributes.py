"""The mini world's discrete attributes: every item is one value of each (shape, colour, size, background).

Ground truth everywhere: the image renders them, the audio encodes them (colour → pitch class, size → octave,
shape → timbre, background → rhythm), the caption names them, and the attribute classifier predicts them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gen_align.errors import InputDataError

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross"),
    "colour": ("red", "orange", "yellow", "green", "blue", "purple"),
    "size": ("small", "large"),
    "background": ("plain", "stripes", "dots"),
}
NAMES = tuple(ATTRIBUTES)
NUM_LABELS = sum(len(v) for v in ATTRIBUTES.values())  # width of the multi-hot vector


def check_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """``attributes`` as a plain dict with exactly one known value per attribute, or an InputDataError."""
    if not isinstance(attributes, Mapping):
        raise InputDataError(f"attributes must be a mapping like {{'shape': 'star', ...}}, got {attributes!r}.")
    missing = [n for n in NAMES if n not in attributes]
    unknown = sorted(set(attributes) - set(NAMES))
    if missing or unknown:
        raise InputDataError(f"attributes need exactly the keys {list(NAMES)}; missing {missing}, unknown {unknown}.")
    for name, value in attributes.items():
        if value not in ATTRIBUTES[name]:
            raise InputDataError(f"unknown {name} {value!r}; the mini world has {list(ATTRIBUTES[name])}.")
    return {n: str(attributes[n]) for n in NAMES}


def attribute_indices(attributes: Mapping[str, str]) -> dict[str, int]:
    """``{"shape": 3, ...}``: the index of each value in :data:`ATTRIBUTES`."""
    checked = check_attributes(attributes)
    return {n: ATTRIBUTES[n].index(checked[n]) for n in NAMES}


def index_tensor(items: list[Mapping[str, str]]) -> torch.Tensor:
    """``(N, 4)`` long tensor of attribute indices, columns in :data:`NAMES` order."""
    return torch.tensor([[attribute_indices(a)[n] for n in NAMES] for a in items], dtype=torch.long).reshape(-1, 4)


def multi_hot(indices: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` attribute indices → ``(N, NUM_LABELS)`` float multi-hot targets (one block per attribute)."""
    out = torch.zeros(indices.shape[0], NUM_LABELS)
    offset = 0
    for column, name in enumerate(NAMES):
        out[torch.arange(indices.shape[0]), offset + indices[:, column]] = 1.0
        offset += len(ATTRIBUTES[name])
    return out


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(N, NUM_LABELS)`` → one ``(N, n_values)`` block per attribute."""
    sizes = [len(ATTRIBUTES[n]) for n in NAMES]
    return dict(zip(NAMES, torch.split(logits, sizes, dim=-1), strict=True))
