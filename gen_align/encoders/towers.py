"""The tower kinds a space config may name: their classes (by import path) and their typed config fields.

A tower config is a JSON object such as ``{"kind": "beats", "source": "beats/BEATs_iter3_plus_AS2M.pt",
"window_seconds": 10.0}``. :func:`check_tower_config` refuses unknown kinds, unknown keys (a misspelt key would
otherwise be ignored) and values of the wrong type, naming the key and the expected type; :func:`tower_class`
gives the class whose ``from_config`` loads it.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Mapping
from typing import Any

from gen_align.errors import ConfigError

TOWER_CLASSES = {
    "clip-vision": "gen_align.encoders.clip:CLIPVisionTower",
    "clip-text": "gen_align.encoders.clip:CLIPTextTower",
    "open-clip-vision": "gen_align.encoders.open_clip_vision:OpenCLIPVisionTower",
    "beats": "gen_align.encoders.beats_tower:BEATsTower",
    "imagebind-audio": "gen_align.encoders.imagebind_tower:ImageBindAudioTower",
}

_TEXT, _NUMBER, _WHOLE, _FLAG = "a string", "a number", "a whole number", "true or false"
NATIVE = {"native": (_FLAG, False)}
"""Any tower may say ``"native": true``: its output is already in the anchor's space (ImageBind audio in OpenCLIP
ViT-H/14's), so the space uses it without a trained head."""
TOWER_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {  # kind -> {key: (type, required)}
    "clip-vision": {"source": (_TEXT, True), "subfolder": (_TEXT, False), "processor_subfolder": (_TEXT, False)},
    "clip-text": {"source": (_TEXT, True), "subfolder": (_TEXT, False), "tokenizer_subfolder": (_TEXT, False)},
    "open-clip-vision": {"source": (_TEXT, True), "subfolder": (_TEXT, False)},
    "beats": {"source": (_TEXT, True), "window_seconds": (_NUMBER, False), "silence": (_TEXT, False)},
    "imagebind-audio": {
        "source": (_TEXT, True),
        "num_heads": (_WHOLE, False),
        "clips": (_WHOLE, False),
        "silence": (_TEXT, False),
    },
}


def _has_type(value: Any, expected: str) -> bool:
    if expected == _FLAG:
        return isinstance(value, bool)
    if expected in (_NUMBER, _WHOLE):
        whole = expected == _NUMBER or isinstance(value, numbers.Integral)
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and whole
    return isinstance(value, str) and bool(value)


def check_tower_config(
    modality: str, cfg: object, where: str = "the space config", *, complete: bool = True
) -> dict[str, Any]:
    """``cfg`` if it is a valid tower config, else a ConfigError that names the key, the value and what it takes.
    ``complete=False`` checks only the keys that are there (a space may record a tower it never loads)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"towers.{modality} in {where} must be an object such as {{'kind': 'beats', ...}}, got {cfg!r}."
        )
    kind = cfg.get("kind")
    if kind not in TOWER_FIELDS:
        raise ConfigError(f"towers.{modality}.kind in {where} is {kind!r}; expected one of {sorted(TOWER_FIELDS)}.")
    fields = {**TOWER_FIELDS[kind], **NATIVE}
    unknown = sorted(set(cfg) - set(fields) - {"kind"})
    if unknown:
        raise ConfigError(
            f"towers.{modality} ({kind}) in {where} has unknown key(s) {unknown}; valid: {sorted(fields)}."
        )
    for key, (expected, required) in fields.items():
        if key not in cfg or cfg[key] is None:
            if required and complete:
                raise ConfigError(f"towers.{modality} ({kind}) in {where} needs {key!r} ({expected}).")
            continue
        if not _has_type(cfg[key], expected):
            positive = " > 0" if expected in (_NUMBER, _WHOLE) else ""
            raise ConfigError(f"towers.{modality}.{key} in {where} must be {expected}{positive}, got {cfg[key]!r}.")
    return dict(cfg)


def tower_class(kind: str) -> type:
    """The class registered for tower ``kind`` (imported on first use)."""
    if kind not in TOWER_CLASSES:
        raise ConfigError(f"unknown tower kind {kind!r}; expected one of {sorted(TOWER_CLASSES)}.")
    module, _, name = TOWER_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name)
