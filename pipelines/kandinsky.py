"""Kandinsky 2.2 decoder (``KandinskyV22Pipeline``) driven by precomputed image embeddings.

``image_embeds`` and ``negative_image_embeds`` are ``(B, d)`` raw CLIP ViT-bigG/14 embeddings. The negative is
what the 2.2 prior uses (``KandinskyV22PriorPipeline.get_zero_embed``): the prior's image encoder applied to an
all-zero image ``torch.zeros(1, 3, S, S)``, not a zero vector. It is computed once per decoder and cached, from
the image encoder handed in (for the kandinsky-2.2 preset that is the space's own image tower) or, failing
that, from the prior's ``image_encoder`` loaded from ``prior_source``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import KandinskyV22Pipeline
from torch import nn

from gen_align.errors import ConfigError, EmbeddingError
from gen_align.weights import load_from_source

from .decoders import DiffusersDecoder

PRIOR_SOURCE = "kandinsky-community/kandinsky-2-2-prior"


@torch.inference_mode()
def zero_image_embed(image_encoder: nn.Module) -> torch.Tensor:
    """``image_encoder(zeros(1, 3, S, S)).image_embeds`` as float32 on the CPU: the 2.2 prior's negative."""
    param = next(image_encoder.parameters())
    size = image_encoder.config.image_size
    zeros = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    return image_encoder(zeros)["image_embeds"].float().cpu()


class KandinskyDecoder(DiffusersDecoder):
    """``KandinskyV22Pipeline`` behind the Decoder contract, with the prior's zero-image negative."""

    pipeline_class = KandinskyV22Pipeline
    kind = "kandinsky-2.2"
    default_guidance = 4.0  # the pipeline's default
    wants_image_tower = True  # its zero-image embedding is the decoder's negative

    @classmethod
    def unet_embedding_dim(cls, unet: dict[str, Any]) -> int:
        """The UNet's ``encoder_hid_dim``: Kandinsky 2.2 projects the image embedding into its cross-attention."""
        return int(unet["encoder_hid_dim"])

    @classmethod
    def space_kwargs(cls, space: Any) -> dict[str, Any]:
        """The prior's negative: the space's image tower (the 2.2 prior's encoder) applied to an all-zero image."""
        if "image" not in space.towers:
            return {}
        return {"negative_embed": zero_image_embed(space.towers["image"].model)}

    def __init__(
        self,
        pipe: Any,
        *,
        negative_embed: torch.Tensor | None = None,
        image_encoder: nn.Module | None = None,
        prior_source: str = PRIOR_SOURCE,
        weights_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pipe, **kwargs)
        self.prior_source = prior_source
        self.weights_dir = weights_dir
        self._negative = None
        if negative_embed is not None:
            self._negative = self._check_negative(negative_embed.detach().float().cpu().reshape(1, -1))
        elif image_encoder is not None:
            self._negative = self._check_negative(zero_image_embed(image_encoder))

    @classmethod
    def from_pretrained(cls, source: str, *, weights_dir: str | None = None, **kwargs: Any) -> KandinskyDecoder:
        """As :meth:`DiffusersDecoder.from_pretrained`; ``weights_dir`` is also where the prior is looked for."""
        decoder = super().from_pretrained(source, weights_dir=weights_dir, **kwargs)
        decoder.weights_dir = weights_dir
        return decoder

    @property
    def embedding_dim(self) -> int:
        return int(self.pipe.unet.config.encoder_hid_dim)

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.movq_scale_factor)

    @property
    def negative_embed(self) -> torch.Tensor:
        """The zero-image embedding ``(1, d)`` (computed on first use, then cached)."""
        if self._negative is None:
            from transformers import CLIPVisionModelWithProjection

            encoder = load_from_source(
                CLIPVisionModelWithProjection.from_pretrained,
                self.prior_source,
                subfolder="image_encoder",
                what=f"Kandinsky 2.2 prior image encoder {self.prior_source}/image_encoder (for the negative)",
                weights_dir=self.weights_dir,
            )
            self._negative = self._check_negative(zero_image_embed(encoder.eval()))
        return self._negative

    def _check_negative(self, negative: torch.Tensor) -> torch.Tensor:
        if negative.shape[-1] != self.embedding_dim:
            raise ConfigError(
                f"the image encoder gives {negative.shape[-1]}-d embeddings but the Kandinsky decoder takes "
                f"{self.embedding_dim}-d ones; use the kandinsky-2.2 prior's image encoder."
            )
        if not bool(torch.isfinite(negative).all()):
            raise EmbeddingError("the zero-image negative embedding is NaN/inf; compute it in float32.")
        return negative

    def _pipeline_inputs(self, embeds: torch.Tensor, *, height: int, width: int) -> dict[str, Any]:
        negative = self.negative_embed.to(embeds.device, embeds.dtype).expand(len(embeds), -1)
        return {"image_embeds": embeds, "negative_image_embeds": negative, "height": height, "width": width}
