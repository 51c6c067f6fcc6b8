"""The audio tower of an AlignedSpace from ImageBind: audio files or waveforms → ImageBind audio embeddings.

Sources: the official whole-model checkpoint (``imagebind_huge.pth``; only its audio tensors are read) or a folder
written by :meth:`ImageBindAudioTower.save` (``config.json`` + ``model.safetensors``, for small models). The output
is ImageBind's: the mean over 3 clips of 2 s of unit vectors × 20, in the space of OpenCLIP ViT-H/14, which a space
rescales to the decoder's embedding norm like every condition.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gen_align.encoders.audio_io import load_tower_inputs
from gen_align.encoders.imagebind import ImageBindAudio, load_imagebind_audio, save_imagebind_audio
from gen_align.encoders.imagebind_clips import CLIPS_PER_INPUT, ImageBindAudioEncoder
from gen_align.weights import IMAGEBIND_HINT, load_from_source


class ImageBindAudioTower(nn.Module):
    """``encode(items)`` with items = audio paths or ``(waveform, sample_rate)`` pairs → ``(B, out_embed_dim)``."""

    kind = "imagebind-audio"

    def __init__(self, model: ImageBindAudio, clips: int = CLIPS_PER_INPUT, silence: str = "error") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.silence = silence
        self.encoder = ImageBindAudioEncoder(self.model, clips=clips)

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], base_dir: str | os.PathLike | None = None, weights_dir: str | None = None
    ) -> ImageBindAudioTower:
        model = load_from_source(
            load_imagebind_audio,
            cfg["source"],
            what=f"ImageBind checkpoint {cfg['source']}",
            base_dir=base_dir,
            weights_dir=weights_dir,
            hint=IMAGEBIND_HINT,
            num_heads=int(cfg.get("num_heads", 12)),
        )
        return cls(model, int(cfg.get("clips", CLIPS_PER_INPUT)), cfg.get("silence", "error"))

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """``config.json`` + ``model.safetensors`` under ``directory``; returns the tower config."""
        save_imagebind_audio(self.model, directory)
        return {"kind": self.kind, "source": str(Path(directory)), "clips": self.encoder.clips, "silence": self.silence}

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        """Decode (any format/rate → 16 kHz mono), then the mean of the clip embeddings (3 clips of 2 s)."""
        return self.encoder.embed(load_tower_inputs(items, self.silence))
