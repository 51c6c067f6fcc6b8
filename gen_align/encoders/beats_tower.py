"""The audio tower of an AlignedSpace: audio files or waveforms -> BEATs clip embeddings.

Sources: an official checkpoint file (``{'cfg', 'model'}`` .pt, e.g. BEATs_iter3+ AS2M) or a directory
written by :meth:`BEATsTower.save` (``config.json`` + ``model.safetensors``, for our own small models).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from gen_align.encoders.audio_io import load_tower_inputs
from gen_align.encoders.beats import BEATs, BEATsConfig, load_beats
from gen_align.encoders.beats_clips import BEATsEncoder
from gen_align.errors import CheckpointError
from gen_align.io import write_json_atomic, write_safetensors_atomic
from gen_align.weights import BEATS_HINT, load_from_source


def load_beats_source(path: str | os.PathLike) -> BEATs:
    """An official ``.pt`` checkpoint, or a ``config.json`` + ``model.safetensors`` directory."""
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_dir():
        return load_beats(path)
    try:
        cfg = BEATsConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
        state = load_file(str(path / "model.safetensors"))
    except SafetensorError as err:
        raise CheckpointError(
            f"{path}/model.safetensors is not a readable safetensors file ({err}): it is truncated or corrupt; copy "
            "the BEATs tower again."
        ) from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a BEATs directory (config.json + model.safetensors): {err}") from err
    model = BEATs(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}/model.safetensors does not match its config.json: {err}") from err
    return model.eval()


class BEATsTower(nn.Module):
    """``encode(items)`` with items = audio paths or ``(waveform, sample_rate)`` pairs -> ``(B, D)``."""

    kind = "beats"

    def __init__(self, model: BEATs, window_seconds: float = 10.0, silence: str = "error") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.window_seconds = float(window_seconds)
        self.silence = silence
        self.encoder = BEATsEncoder(self.model, window_seconds=self.window_seconds, batch_size=8)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.embedding_dim)

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], base_dir: str | os.PathLike | None = None, weights_dir: str | None = None
    ) -> BEATsTower:
        model = load_from_source(
            load_beats_source,
            cfg["source"],
            what=f"BEATs checkpoint {cfg['source']}",
            base_dir=base_dir,
            weights_dir=weights_dir,
            hint=BEATS_HINT,
        )
        return cls(model, cfg.get("window_seconds", 10.0), cfg.get("silence", "error"))

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """``config.json`` + ``model.safetensors`` under ``directory``; returns the tower config."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # clone: the relative-position table is shared by all layers, listed under each (official layout)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        write_safetensors_atomic(directory / "model.safetensors", state)
        write_json_atomic(directory / "config.json", self.model.cfg.to_dict())
        return {
            "kind": self.kind,
            "source": str(directory),
            "window_seconds": self.window_seconds,
            "silence": self.silence,
        }

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        """Decode (any format/rate -> 16 kHz mono), then the masked token mean per clip, windowed."""
        clips = load_tower_inputs(items, self.silence)
        return self.encoder.embed(clips)
