"""Named configurations of the aligned space: which frozen towers, which decoder, which dimension.

Presets are data files, one JSON object per preset in ``gen_align/preset_configs/`` (as open_clip's model
configs), read once at import and checked key by key::

    {"name": "stable-unclip-h", "description": "...", "embedding_dim": 1024,
     "decoder": "stabilityai/stable-diffusion-2-1-unclip",
     "towers": {"image": {"kind": "clip-vision", ...}, "text": {...}, "audio": {...}}}

or, for a space shipped as a trained checkpoint, ``"checkpoint"`` (and a ``"decoder"``) instead of ``"towers"``.
A path written ``package:<path>`` is relative to the installed ``gen_align`` package. :func:`add_preset_config`
registers a user's own files the same way.

A preset's image tower is exactly the image encoder its decoder was trained on (same weights, same preprocessing,
raw projection output), so the anchor embedding of ``encode_image`` is the embedding the decoder expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_align.encoders.towers import check_tower_config
from gen_align.errors import ConfigError
from gen_align.weights import BEATS_AS2M, BEATS_HINT

PACKAGE_ROOT = Path(__file__).resolve().parent
PRESET_CONFIGS = PACKAGE_ROOT / "preset_configs"
"""Package data: one JSON file per built-in preset."""
MINI_WEIGHTS = PACKAGE_ROOT / "mini" / "weights"
"""Package data: the shipped mini preset (written by ``gen-align mini train --ship``)."""
MINI_SPACE = MINI_WEIGHTS / "space"
MINI_DECODER = MINI_WEIGHTS / "decoder"
PACKAGE_PREFIX = "package:"

__all__ = [
    "BEATS_AS2M",
    "BEATS_HINT",
    "MINI_DECODER",
    "MINI_SPACE",
    "PRESETS",
    "Preset",
    "add_preset_config",
    "get_preset",
    "list_presets",
    "preset_from_dict",
]


@dataclass(frozen=True)
class Preset:
    """Towers (``{modality: tower config}``), decoder (hub id or folder) and anchor dimension of a named space.

    ``checkpoint``: a trained space directory the preset loads as it is (towers and heads inside; ``towers`` then
    stays empty) — the shipped mini preset."""

    name: str
    description: str
    embedding_dim: int
    decoder: str
    towers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: str | None = None


_FIELDS = {"name": str, "description": str, "embedding_dim": int, "decoder": str, "towers": dict, "checkpoint": str}


def _resolve(value: str) -> str:
    return str(PACKAGE_ROOT / value[len(PACKAGE_PREFIX) :]) if value.startswith(PACKAGE_PREFIX) else value


def preset_from_dict(raw: object, where: str) -> Preset:
    """A :class:`Preset` from one preset file's JSON object, checked key by key.

    Raises:
        ConfigError: a missing or unknown key, a value of the wrong type, both or neither of ``towers`` and
            ``checkpoint``, or an invalid tower config — naming the key and ``where``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold one JSON object (a preset), got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where} has unknown preset key(s) {unknown}; valid keys: {sorted(_FIELDS)}.")
    for key, kind in _FIELDS.items():
        if key in ("towers", "checkpoint") and key not in raw:
            continue
        value = raw.get(key)
        bad = not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value)
        if bad or (key == "embedding_dim" and value < 1):
            what = {str: "a non-empty string", int: "a positive integer", dict: "an object"}[kind]
            raise ConfigError(f"{key} in {where} must be {what}, got {value!r}.")
    if ("towers" in raw) == ("checkpoint" in raw):
        raise ConfigError(f"{where} needs exactly one of 'towers' (hub towers) and 'checkpoint' (a trained space).")
    towers = {m: dict(check_tower_config(m, t, where)) for m, t in raw.get("towers", {}).items()}
    checkpoint = _resolve(raw["checkpoint"]) if "checkpoint" in raw else None
    return Preset(raw["name"], raw["description"], raw["embedding_dim"], _resolve(raw["decoder"]), towers, checkpoint)


def _read_preset_file(path: Path) -> Preset:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the preset file {path}: {err}.") from err
    return preset_from_dict(raw, str(path))


def _builtin_presets() -> dict[str, Preset]:
    found = sorted(
        (_read_preset_file(path) for path in PRESET_CONFIGS.glob("*.json")),
        # the shipped presets first, then by size; a baseline (a tower used untrained, "native") after its main preset
        key=lambda p: (p.checkpoint is None, p.embedding_dim, any(t.get("native") for t in p.towers.values()), p.name),
    )
    return {p.name: p for p in found}


PRESETS: dict[str, Preset] = _builtin_presets()


def add_preset_config(path: str | os.PathLike) -> list[str]:
    """Register the preset file ``path`` (or every ``*.json`` in the folder ``path``) beside the built-in ones.

    Args:
        path: a preset JSON file or a folder of them (the format of ``gen_align/preset_configs/``).

    Returns:
        The names added, usable as ``GenAlignPipeline.from_pretrained(name)`` and ``--preset name``.

    Raises:
        ConfigError: a file is unreadable or invalid, or a name is taken by a built-in preset.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no preset file or folder at {path}; pass a preset .json file or a folder of them.")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"no preset files (*.json) in {path}.")
    presets = [_read_preset_file(f) for f in files]
    builtin = {p.stem for p in PRESET_CONFIGS.glob("*.json")}
    taken = sorted(p.name for p in presets if p.name in builtin)
    if taken:
        raise ConfigError(f"preset name(s) {taken} in {path} are built-in presets; rename them.")
    PRESETS.update({p.name: p for p in presets})
    return [p.name for p in presets]


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {sorted(PRESETS)} (or pass a checkpoint directory)."
        )
    return PRESETS[name]


def list_presets() -> dict[str, str]:
    """Every preset's name with its one-line description, e.g. ``list_presets()["mini"]``.

    Returns:
        ``{name: description}`` in the order of :data:`PRESETS` (the shipped ``mini`` first).
    """
    return {name: preset.description for name, preset in PRESETS.items()}
