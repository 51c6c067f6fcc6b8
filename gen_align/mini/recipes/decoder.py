"""Training the mini world's unCLIP decoder on (image, raw anchor embedding) pairs, in the latent space of a frozen
autoencoder (:mod:`.autoencoder`; latent diffusion, as the real unCLIP decoders) or in pixel space.

Standard DDPM training on the cosine schedule of :func:`gen_align.pipelines.mini.mini_scheduler`: random timesteps,
v-prediction (``epsilon`` on request; on the cosine schedule epsilon-prediction learnt far slower and sampled
noisier at 10-25 DDIM steps), optionally Min-SNR-γ loss weights (:func:`min_snr_weights`; with γ = 5 the mini
decoder learnt background texture sooner but ended with less of it, so the mini recipe leaves it off), the
condition dropped to the zero vector with probability ``cond_dropout`` (the
classifier-free-guidance negative), no augmentation. With an autoencoder the diffused ``x0`` is a latent drawn from
its posterior q(z | x) and multiplied by its ``scaling_factor``, and samples are not clipped (latents are unbounded).
The shared :func:`fit` loop gives EMA and resume; the EMA UNet is saved with the scheduler (and the autoencoder) as
a :class:`MiniUnCLIPPipeline` (safetensors) in ``out_dir``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from gen_align.checks import choice, positive
from gen_align.errors import ConfigError, InputDataError
from gen_align.pipelines.mini import MiniUnCLIPPipeline, mini_scheduler, unet_prediction

from .autoencoder import posterior, scaled
from .loop import FitSettings, LossFn, fit

PREDICTION_TYPES = ("epsilon", "v_prediction")


def unet_config(embedding_dim: int, *, token_levels: tuple[int, ...] = (), **overrides: Any) -> dict[str, Any]:
    """The mini UNet: 32 → 16 → 8 pixels, (16, 32, 64) channels, one resnet per level, self-attention only at
    the lowest level and in the middle, the embedding as a projected class embedding with FiLM (~0.63 M params;
    about 6 ms per image per step on one CPU core, so the evaluation's thousands of images stay affordable).

    ``token_levels`` (level indices, 0 the full resolution) also give the embedding to the UNet as Kandinsky 2.2's
    decoder does: projected to 32 layer-normed cross-attention tokens (diffusers' ``encoder_hid_dim_type=
    "image_proj"``) that transformer blocks (self-attention, cross-attention, feed-forward) at those levels attend
    to; the class embedding stays. ``overrides`` replace entries; the block types and attention heads (size 32)
    follow ``block_out_channels``."""
    channels = tuple(overrides.get("block_out_channels", (16, 32, 64)))
    levels = len(channels)
    head = min(32, channels[-1])
    blocks: dict[str, Any] = {
        "down_block_types": ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        "attention_head_dim": head,
    }
    attending = sorted(set(token_levels))
    if any(not isinstance(i, int) or not 0 <= i < levels for i in attending):
        raise ConfigError(f"token_levels {token_levels!r} must be level indices in 0..{levels - 1}, e.g. (1,).")
    if attending:
        down = tuple("CrossAttnDownBlock2D" if i in attending else "DownBlock2D" for i in range(levels))
        lowest = levels - 1 in attending
        heads = tuple(max(1, c // head) for c in channels)
        blocks = {
            "down_block_types": down,
            "up_block_types": tuple(b.replace("Down", "Up") for b in reversed(down)),
            "mid_block_type": "UNetMidBlock2DCrossAttn" if lowest else "UNetMidBlock2D",
            # diffusers reads attention_head_dim as the head count of its transformer blocks but as the head size
            # of the plain attention ones: the lowest level without tokens has the middle block's self-attention
            "attention_head_dim": heads if lowest else heads[:-1] + (head,),
            "encoder_hid_dim_type": "image_proj",
            "encoder_hid_dim": int(embedding_dim),
            "cross_attention_dim": channels[attending[0]],
        }
    config: dict[str, Any] = {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": channels,
        "mid_block_type": "UNetMidBlock2D",
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "resnet_time_scale_shift": "scale_shift",
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": int(embedding_dim),
        **blocks,
    }
    return config | overrides


def build_unet(embedding_dim: int, *, seed: int = 0, **overrides: Any) -> UNet2DConditionModel:
    """A freshly initialised mini UNet (initialisation seeded, the global RNG left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**unet_config(embedding_dim, **overrides))


def check_training_data(images: Any, embeds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` as a uint8 ``(N, 3, S, S)`` tensor and ``embeds`` as a finite float32 ``(N, d)`` one."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputDataError(f"decoder training images must be a uint8 tensor (N, 3, S, S) in 0..255, got {got}.")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise InputDataError(
            f"decoder training images must have shape (N, 3, S, S) (channels first, square), got {tuple(images.shape)}."
        )
    if isinstance(embeds, np.ndarray):
        embeds = torch.from_numpy(embeds)
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 2:
        got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise InputDataError(f"decoder training embeddings must be a float tensor (N, d), got {got}.")
    if len(embeds) != len(images):
        raise InputDataError(
            f"got {len(images)} images but {len(embeds)} embeddings; pass the embedding of each image, in order."
        )
    if len(images) < 2:
        raise InputDataError(f"decoder training needs at least 2 images, got {len(images)}.")
    if not bool(torch.isfinite(embeds).all()):
        raise InputDataError("the decoder training embeddings contain NaN/inf values; re-encode the images in float32.")
    return images.contiguous(), embeds.detach().float().contiguous()


def min_snr_weights(noise_scheduler: DDPMScheduler, gamma: float | None) -> torch.Tensor:
    """Per-timestep loss weights ``(T,)``: Min-SNR-γ (Hang et al. 2023, Eq. 10), min(SNR_t, γ) / SNR_t for the
    noise and min(SNR_t, γ) / (SNR_t + 1) for the velocity, SNR_t = ᾱ_t / (1 − ᾱ_t); all ones when ``gamma`` is
    None. It keeps the nearly clean timesteps, whose targets are easy, from dominating the loss."""
    steps = noise_scheduler.config.num_train_timesteps
    if gamma is None:
        return torch.ones(steps)
    positive(gamma, "snr_gamma")
    alphas = noise_scheduler.alphas_cumprod.double()
    snr = alphas / (1 - alphas)
    velocity = noise_scheduler.config.prediction_type == "v_prediction"
    return (snr.clamp(max=gamma) / (snr + 1 if velocity else snr.clamp(min=1e-30))).float()


class CompiledForward:
    """``module``'s forward through ``torch.compile`` (inductor), channels-last: on a 2-core CPU the mini UNet's
    training step took 0.39 s instead of 0.55-0.70 s in a quick 12-step measurement (benchmarks/decoder_training.py
    times the two side by side), after about two and a half minutes of compilation. When compilation fails on the
    first call (no C++ compiler, an unsupported backend), it warns and runs ``module`` eagerly; later errors are
    raised as they are. Attributes (``config``) are the module's."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.to(memory_format=torch.channels_last)
        self._compiled: Callable[..., Any] | None = torch.compile(self.module)
        self._proven = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["module"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        if self._proven:
            return self._compiled(*args, **kwargs)
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure: train eagerly instead
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training the "
                "decoder eagerly (slower, same loss). Install a C++ compiler (g++) to compile it.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._compiled = None
            return self.module(*args, **kwargs)
        self._proven = True
        return out


X0Sampler = Any  # (indices, generator) -> the clean samples x0 of those items


def pixel_targets(images: torch.Tensor) -> X0Sampler:
    """x0 = the images in ``[-1, 1]`` (pixel-space diffusion)."""
    return lambda indices, _: scaled(images[indices])


def latent_targets(vae: AutoencoderKL, images: torch.Tensor) -> X0Sampler:
    """x0 = scaling_factor · z, z drawn from the frozen autoencoder's posterior (encoded once, sampled per step)."""
    mean, std = posterior(vae, images)
    factor = float(vae.config.scaling_factor)
    return lambda indices, generator: (
        factor * (mean[indices] + std[indices] * torch.randn(mean[indices].shape, generator=generator))
    )


def make_loss(
    targets: X0Sampler,
    embeds: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    *,
    cond_dropout: float,
    device: torch.device,
    snr_gamma: float | None = None,
    forward: Callable[..., Any] | None = None,
) -> LossFn:
    """The denoising loss over a batch of item indices: MSE to the noise (or the velocity) of ``targets``' x0, each
    sample weighted by :func:`min_snr_weights` of its timestep. ``forward`` (e.g. a :class:`CompiledForward` of the
    trained UNet) computes the prediction instead of the model :func:`fit` passes."""
    steps = noise_scheduler.config.num_train_timesteps
    velocity = noise_scheduler.config.prediction_type == "v_prediction"
    weights = min_snr_weights(noise_scheduler, snr_gamma)

    def loss_fn(model: torch.nn.Module, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x0 = targets(indices, generator)
        cond = embeds[indices]
        drop = torch.rand(len(indices), generator=generator) < cond_dropout
        cond = torch.where(drop[:, None], torch.zeros_like(cond), cond)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, steps, (len(indices),), generator=generator)
        target = noise_scheduler.get_velocity(x0, noise, t) if velocity else noise
        noisy = noise_scheduler.add_noise(x0, noise, t)
        pred = unet_prediction(model if forward is None else forward, noisy.to(device), t.to(device), cond.to(device))
        per_sample = (pred.float() - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        return (weights[t].to(device) * per_sample).mean()

    return loss_fn


def train_decoder(
    images: Any,
    embeds: Any,
    *,
    out_dir: str | os.PathLike,
    settings: FitSettings,
    cond_dropout: float = 0.1,
    prediction_type: str = "v_prediction",
    snr_gamma: float | None = None,
    unet_overrides: dict[str, Any] | None = None,
    vae: AutoencoderKL | None = None,
    compile: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> MiniUnCLIPPipeline:
    """Train a mini decoder on ``images`` (uint8 ``(N, 3, S, S)``) and their raw anchor embeddings ``(N, d)``, in
    the latent space of ``vae`` (a trained :func:`~.autoencoder.train_autoencoder`) or, without one, in pixel
    space; save the EMA weights as a :class:`MiniUnCLIPPipeline` in ``out_dir`` and return it (on the CPU).
    ``compile``: the training forward through :class:`CompiledForward` (faster steps, float-level differences)."""
    images, embeds = check_training_data(images, embeds)
    if not 0 <= cond_dropout < 1:
        raise ConfigError(f"cond_dropout must be in [0, 1), got {cond_dropout!r}; 0.1 is usual.")
    choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    overrides = dict(unet_overrides or {})
    factor = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
    if images.shape[-1] % factor:
        raise ConfigError(f"{images.shape[-1]}-pixel images do not fit the autoencoder's {factor}x downsampling.")
    side = int(images.shape[-1]) // factor
    if vae is not None:
        overrides.setdefault("in_channels", vae.config.latent_channels)
        overrides.setdefault("out_channels", vae.config.latent_channels)
    if overrides.setdefault("sample_size", side) != side:
        raise ConfigError(
            f"unet sample_size {overrides['sample_size']} differs from the {side}-pixel diffused samples."
        )
    if side % 2 ** (len(overrides.get("block_out_channels", (16, 32, 64))) - 1):
        raise ConfigError(f"{side}-pixel samples cannot be halved at every UNet level; use fewer levels.")
    device = torch.device(device)
    unet = build_unet(embeds.shape[1], seed=settings.seed, **overrides).to(device)
    scheduler = mini_scheduler(prediction_type=prediction_type, **({} if vae is None else {"clip_sample": False}))
    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    targets = pixel_targets(images) if vae is None else latent_targets(vae, images)
    forward = CompiledForward(unet) if compile else None
    loss_fn = make_loss(
        targets, embeds, noise_scheduler, cond_dropout=cond_dropout, device=device, snr_gamma=snr_gamma, forward=forward
    )
    ema = fit(
        unet, loss_fn, len(images), settings, desc="mini decoder", checkpoint_dir=checkpoint_dir, progress=progress
    )
    ema = ema.to("cpu", memory_format=torch.contiguous_format).eval()  # safetensors stores contiguous tensors
    pipe = MiniUnCLIPPipeline(unet=ema, scheduler=scheduler, vae=vae)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return pipe
