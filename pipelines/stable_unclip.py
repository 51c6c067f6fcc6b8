"""Stable UnCLIP (``StableUnCLIPImg2ImgPipeline``) driven by precomputed image embeddings.

The pipeline gets ``image_embeds (B, d)`` instead of an image and ``prompt=[""] * B`` (one empty prompt per
embedding, as it needs for B > 1). ``noise_level`` (0 … 999) noises the embedding and appends its timestep
embedding; classifier-free guidance uses the pipeline's own zero-vector negative. The embeddings must be at the
scale of ``image_encoder(...).image_embeds`` (raw, not L2-normalised), which calibration provides.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableUnCLIPImg2ImgPipeline

from gen_align.checks import integer
from gen_align.errors import ConfigError

from .decoders import DiffusersDecoder


class StableUnCLIPDecoder(DiffusersDecoder):
    """``StableUnCLIPImg2ImgPipeline`` behind the Decoder contract (extra call argument: ``noise_level``)."""

    pipeline_class = StableUnCLIPImg2ImgPipeline
    kind = "stable-unclip"
    default_guidance = 10.0  # the pipeline's default
    call_options = {"noise_level": 0}  # the embedding noise level 0..999 (0: the embedding as it is)

    @classmethod
    def unet_embedding_dim(cls, unet: dict[str, Any]) -> int:
        """Half the UNet's projection input: Stable UnCLIP appends a noise-level embedding of the same size."""
        return int(unet["projection_class_embeddings_input_dim"]) // 2

    @property
    def embedding_dim(self) -> int:
        return int(self.pipe.image_normalizer.config.embedding_dim)

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    @property
    def max_noise_level(self) -> int:
        return int(self.pipe.image_noising_scheduler.config.num_train_timesteps) - 1

    def check_noise_level(self, noise_level: int) -> int:
        """``noise_level`` if it is an integer in ``0 … max_noise_level``, else a ConfigError."""
        try:
            level = integer(noise_level, "noise level", low=0)
        except ConfigError:
            level = -1
        if not 0 <= level <= self.max_noise_level:
            raise ConfigError(f"noise level must be an integer in 0..{self.max_noise_level}, got {noise_level!r}.")
        return level

    def _pipeline_inputs(
        self, embeds: torch.Tensor, *, height: int, width: int, noise_level: int = 0
    ) -> dict[str, Any]:
        return {
            "image_embeds": embeds,
            "prompt": [""] * len(embeds),
            "noise_level": self.check_noise_level(noise_level),
            "height": height,
            "width": width,
        }
