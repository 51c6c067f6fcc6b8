"""The checkpoint folder of our own small modules (attribute classifier, retrieval heads), Hugging Face style::

    config.json         {"format": "<the module family>", "config": {...}, "library_version": "...",
                         "training": {...how it was trained, when known...}, ...more keys of the family...}
    model.safetensors   the state dict, tensors saved as they are (a round trip is bit-exact)

Writing is atomic; reading checks the format tag, the keys and every tensor shape against the module, and says
what is wrong and how to fix it: a missing file raises :class:`WeightsNotFoundError`, an unreadable or mismatched
one :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gen_align.errors import CheckpointError, WeightsNotFoundError
from gen_align.io import write_json_atomic, write_safetensors_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_module(
    directory: str | os.PathLike, module: nn.Module, config: dict[str, Any], *, training: dict[str, Any] | None = None
) -> Path:
    """Write ``module``'s state dict and ``config`` (which holds at least ``format``) into ``directory``, with the
    library version and, when given, the ``training`` settings that produced the weights."""
    from gen_align import __version__

    directory = Path(directory)
    config = {**config, "library_version": __version__, **({"training": training} if training is not None else {})}
    metadata = {k: str(config[k]) for k in ("format", "kind") if k in config}
    write_safetensors_atomic(directory / WEIGHTS_NAME, module.state_dict(), metadata)
    write_json_atomic(directory / CONFIG_NAME, config)
    return directory


def read_module_config(directory: Path, *, fmt: str, what: str, fix: str) -> dict[str, Any]:
    """``directory/config.json`` as a dict with ``format == fmt`` and a ``config`` object. ``what`` names the module
    family in messages ("attribute classifier"); ``fix`` says how to write a good checkpoint."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} does not exist: {directory} is not a {what} checkpoint ({fix}).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} ({err}); {fix}.") from err
    if not isinstance(raw, dict) or raw.get("format") != fmt or not isinstance(raw.get("config"), dict):
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a {what} config (format {got!r}, expected {fmt!r} with a 'config' object); point to a "
            f"directory written by its save_pretrained."
        )
    return raw


def read_module_weights(directory: Path, module: nn.Module, *, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors``, checked key by key and shape by shape against ``module``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} is missing: the {what}'s config is there but not its weights; {fix}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is corrupt or truncated: {fix}."
        ) from err
    mismatch = state_mismatch(module.state_dict(), tensors)
    if mismatch:
        raise CheckpointError(
            f"{path} does not match its config.json ({mismatch}): the two files come from different {what}s; {fix}."
        )
    return tensors


def state_mismatch(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``tensors`` from loading into a module whose state dict is ``expected`` ("missing [...],
    unexpected [...], wrong shapes [...]", five names each at most), or None when every key and shape matches."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    if not (missing or unexpected or wrong):
        return None
    return f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
