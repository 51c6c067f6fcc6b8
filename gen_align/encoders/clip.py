"""Frozen CLIP towers in the decoders' own (transformers) format.

The vision tower is the decoder pipeline's ``image_encoder`` with its own image processor, so
:meth:`CLIPVisionTower.encode` returns exactly the raw ``image_embeds`` the decoder was trained on. The text
tower is the matching CLIP text model with projection (``text_embeds``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from gen_align.encoders.image_io import load_images
from gen_align.encoders.text_io import check_texts, truncate_token_ids
from gen_align.io import write_folder_atomic
from gen_align.weights import load_from_source


class _CLIPTower(nn.Module):
    """A frozen transformers CLIP model with its processor/tokenizer, stored in the hub repo layout
    (``<source>/<subfolder>`` for the model, ``<source>/<aux_subfolder>`` for the processor/tokenizer)."""

    kind: str
    model_class: type
    aux_class: type
    aux_key: str  # the tower config key naming the processor/tokenizer subfolder
    layout: tuple[str, str]  # (model subfolder, aux subfolder) written by save()
    names: tuple[str, str]  # what the two parts are called in error messages

    def __init__(self, model: nn.Module, aux: Any) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.aux = aux

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], base_dir: str | os.PathLike | None = None, weights_dir: str | None = None
    ) -> _CLIPTower:
        """Load model + processor/tokenizer from ``cfg['source']`` (hub id or directory) and its subfolders."""
        where = {"base_dir": base_dir, "weights_dir": weights_dir}
        parts = []
        for loader, key, name in zip(
            (cls.model_class, cls.aux_class), ("subfolder", cls.aux_key), cls.names, strict=True
        ):
            what = f"{name} {cfg['source']}/{cfg.get(key) or ''}"
            parts.append(
                load_from_source(loader.from_pretrained, cfg["source"], subfolder=cfg.get(key), what=what, **where)
            )
        return cls(*parts)

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write model and processor/tokenizer under ``directory``; returns the tower config for it."""
        directory = Path(directory)

        def write(folder: Path) -> None:
            self.model.save_pretrained(folder / self.layout[0])
            self.aux.save_pretrained(folder / self.layout[1])

        write_folder_atomic(directory, write, hint="Free disk space and save again.")
        return {"kind": self.kind, "source": str(directory), "subfolder": self.layout[0], self.aux_key: self.layout[1]}


class CLIPVisionTower(_CLIPTower):
    """``image_encoder(processor(images).pixel_values).image_embeds`` — the unCLIP pipelines' own path."""

    kind = "clip-vision"
    model_class = CLIPVisionModelWithProjection
    aux_class = CLIPImageProcessor
    aux_key = "processor_subfolder"
    layout = ("image_encoder", "feature_extractor")
    names = ("CLIP image encoder", "CLIP image processor")

    def preprocess(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        """Pixel values of RGB images (any input mode is converted first); no bar of its own (callers show one
        over their batches)."""
        return self.aux(images=load_images(images, progress=False), return_tensors="pt").pixel_values

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        return self.model(pixel_values.to(device=param.device, dtype=param.dtype)).image_embeds

    def encode(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        """Raw (unnormalised) image embeddings ``(B, d)``."""
        return self(self.preprocess(images))


class CLIPTextTower(_CLIPTower):
    """``text_model(tokens).text_embeds``; prompts longer than the context are truncated with a warning."""

    kind = "clip-text"
    model_class = CLIPTextModelWithProjection
    aux_class = CLIPTokenizer
    aux_key = "tokenizer_subfolder"
    layout = ("text_encoder", "tokenizer")
    names = ("CLIP text encoder", "CLIP tokenizer")

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.aux

    @property
    def max_length(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings))

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, L)`` padded with the pad token after the end-of-text token."""
        texts = check_texts(texts)
        ids = self.tokenizer(texts, truncation=False, add_special_tokens=True).input_ids
        ids = truncate_token_ids(ids, self.max_length, end_token_id=self.tokenizer.eos_token_id, warn_name="text")
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        return torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(input_ids.to(device)).text_embeds

    def encode(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Raw text embeddings ``(B, d)`` in the CLIP joint space."""
        return self(self.tokenize(texts))
