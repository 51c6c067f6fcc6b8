"""The mini world's unCLIP decoder: a diffusers UNet conditioned on a raw image embedding, in the latent space of
a small ``AutoencoderKL`` (as the real unCLIP decoders) or, without an autoencoder, in pixel space.

Conditioning is Stable UnCLIP's: the UNet has ``class_embed_type="projection"`` and gets the ``(B, d)`` embedding
as ``class_labels`` (raw scale, as trained), added to its timestep embedding and applied by FiLM
(``resnet_time_scale_shift="scale_shift"``); a UNet built with ``image_tokens`` also attends to the embedding
projected to tokens (Kandinsky 2.2's decoder conditioning). The classifier-free-guidance negative
is a zero vector (training drops the condition to zeros). With a ``vae`` the UNet denoises latents
``C × s × s`` scaled by ``vae.config.scaling_factor`` (Stable Diffusion's convention) and the autoencoder decodes
them to ``3 × S × S`` images, ``S = s · 2^(levels − 1)``; without one it denoises the images in ``[-1, 1]`` directly.
Each image's initial noise comes from its own generator (on the CPU), so image ``i`` depends only on its seed.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from torch import Tensor

from gen_align.checks import choice, integer, non_negative
from gen_align.errors import ConfigError, EmbeddingError

from .decoders import DiffusersDecoder

OUTPUT_TYPES = ("pil", "pt", "np")


def mini_scheduler(**overrides: Any) -> DDIMScheduler:
    """The sampling scheduler saved with a mini decoder: DDIM over a cosine schedule, v-prediction, trailing
    timesteps (the first step starts from pure noise), samples clipped to ``[-1, 1]``."""
    config = {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "set_alpha_to_one": True,
    }
    return DDIMScheduler(**(config | overrides))


def unet_prediction(unet: UNet2DConditionModel, x: Tensor, t: Tensor, embeds: Tensor) -> Tensor:
    """A mini UNet's raw prediction: ``embeds`` as its class embedding and, for a UNet with image tokens
    (``encoder_hid_dim_type="image_proj"``, Kandinsky 2.2's conditioning), as its cross-attention context too."""
    tokens = unet.config.encoder_hid_dim_type == "image_proj"
    added = {"image_embeds": embeds} if tokens else None
    return unet(x, t, encoder_hidden_states=None, class_labels=embeds, added_cond_kwargs=added).sample


class MiniUnCLIPPipeline(DiffusionPipeline):
    """unCLIP from a raw image embedding: ``unet`` (UNet2DConditionModel with a projection class embedding),
    ``scheduler`` (DDIM by default; DDPM works too) and, for a latent decoder, ``vae`` (``AutoencoderKL``)."""

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self, unet: UNet2DConditionModel, scheduler: DDIMScheduler | DDPMScheduler, vae: AutoencoderKL | None = None
    ) -> None:
        super().__init__()
        if unet.config.class_embed_type != "projection":
            raise ConfigError(
                "the mini decoder's UNet needs class_embed_type='projection' (the embedding goes in as class_labels); "
                "build it with gen_align.mini.recipes.decoder.unet_config."
            )
        if vae is not None and vae.config.latent_channels != unet.config.in_channels:
            raise ConfigError(
                f"the autoencoder gives {vae.config.latent_channels}-channel latents but the UNet takes "
                f"{unet.config.in_channels} channels; they come from different decoders."
            )
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along a side (1 in pixel space)."""
        vae = getattr(self, "vae", None)
        return 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def embedding_dim(self) -> int:
        return int(self.unet.config.projection_class_embeddings_input_dim)

    @property
    def sample_size(self) -> int:
        """The UNet's side (latent pixels with a ``vae``)."""
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        """The side of the images drawn."""
        return self.sample_size * self.vae_scale_factor

    def initial_noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        """``(B, C, S, S)`` standard normal noise, image ``i`` drawn from ``generators[i]`` on the CPU."""
        shape = (1, self.unet.config.in_channels, self.sample_size, self.sample_size)
        noise = torch.cat([torch.randn(shape, generator=g, device=g.device) for g in generators])
        return noise.to(self._execution_device, self.unet.dtype)

    def guided_prediction(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, guidance: float) -> Tensor:
        """The UNet's prediction at ``t``, classifier-free guided against the zero embedding when ``guidance > 1``."""
        if guidance <= 1.0:
            return unet_prediction(self.unet, x, t, embeds)
        uncond, cond = unet_prediction(
            self.unet, torch.cat([x, x]), t, torch.cat([torch.zeros_like(embeds), embeds])
        ).chunk(2)
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def __call__(
        self,
        image_embeds: torch.Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images for ``image_embeds (B, d)`` (raw scale): ``generator`` is one per image (or one shared)."""
        embeds = self._check_embeds(image_embeds)
        steps = integer(num_inference_steps, "num_inference_steps", low=1)
        guidance = non_negative(guidance_scale, "guidance_scale")
        choice(output_type, "output_type", OUTPUT_TYPES)
        generators = self._generators(generator, len(embeds))
        x = self.initial_noise(generators) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(steps, device=self._execution_device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(x, t)
            prediction = self.guided_prediction(model_input, t, embeds, guidance)
            x = self.scheduler.step(prediction, t, x, generator=generators).prev_sample
        if getattr(self, "vae", None) is not None:
            x = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        images = self.image_processor.postprocess(x.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _check_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != self.embedding_dim:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise EmbeddingError(f"image_embeds must be a (B, {self.embedding_dim}) float tensor, got {got}.")
        if not bool(torch.isfinite(embeds).all()):
            raise EmbeddingError("image_embeds contain NaN/inf values; encode in float32.")
        return embeds.to(self._execution_device, self.unet.dtype)

    @staticmethod
    def _generators(generator: torch.Generator | list[torch.Generator] | None, count: int) -> list[torch.Generator]:
        if generator is None:
            return [torch.Generator("cpu").manual_seed(int(torch.randint(0, 2**31, ()))) for _ in range(count)]
        if isinstance(generator, torch.Generator):
            return [generator] * count
        if len(generator) != count:
            raise ConfigError(f"got {len(generator)} generators for {count} embeddings; pass one per embedding.")
        return list(generator)


class MiniDecoder(DiffusersDecoder):
    """:class:`MiniUnCLIPPipeline` behind the Decoder contract; one output size (the UNet's sample size)."""

    pipeline_class = MiniUnCLIPPipeline
    kind = "mini"
    # measured on the shipped decoder (512 test items from their true embeddings, all four attributes right):
    # guidance 2 → 75.6 % (10 steps) / 80.7 % (25), 3 → 82.2 / 85.6, 4 → 84.6 / 85.4, 5 → — / 86.7, 6 → 80.1 / 83.4
    # (colour starts to saturate); docs/mini.md, session 9
    default_guidance = 4.0
    default_steps = 25

    @property
    def embedding_dim(self) -> int:
        return int(self.pipe.unet.config.projection_class_embeddings_input_dim)

    @property
    def native_size(self) -> int:
        return int(self.pipe.image_size)

    def _side(self, value: int | None, name: str) -> int:
        if value is not None and value != self.native_size:
            raise ConfigError(
                f"the mini decoder draws {self.native_size}x{self.native_size} pixels only (a model trained at one "
                f"size), got {name} {value!r}; leave {self.names['height']}/{self.names['width']} out."
            )
        return self.native_size

    def _pipeline_inputs(self, embeds: torch.Tensor, *, height: int, width: int) -> dict[str, Any]:
        return {"image_embeds": embeds}  # one size, checked by _side
