"""The mini decoder's autoencoder: a small diffusers ``AutoencoderKL`` (Stable Diffusion's VAE architecture).

As in latent diffusion (Rombach et al. 2022, Sec. 3.1), the autoencoder is trained first and alone, then frozen;
the unCLIP UNet denoises its latents. Loss: MSE + ½ L1 between the image and the reconstruction of a latent drawn
from the posterior, plus ``kl_weight`` · KL(q(z|x) ‖ N(0, I)) (a small weight keeps the latent space smooth
without blurring). The perceptual and adversarial terms of the paper are left out: the world's flat shapes on
simple grounds reconstruct sharply enough without them (docs/mini.md has the figures). The latents' scale
(``scaling_factor``, Stable Diffusion's 0.18215) is measured after training as 1 / std of the posterior means, so
the UNet sees unit-variance latents.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from gen_align.checks import non_negative

from .loop import FitSettings, fit


def autoencoder_config(**overrides: Any) -> dict[str, Any]:
    """32 → 8 pixels with 4 latent channels: (32, 64, 64) channels, one resnet per level (~1 M parameters)."""
    channels = tuple(overrides.get("block_out_channels", (32, 64, 64)))
    config: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
        "block_out_channels": channels,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 32,
    }
    return config | overrides


def build_autoencoder(*, seed: int = 0, **overrides: Any) -> AutoencoderKL:
    """A freshly initialised autoencoder (initialisation seeded, the global RNG left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**autoencoder_config(**overrides))


def scaled(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, S, S)`` → float in ``[-1, 1]``."""
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def posterior(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(N, C, s, s)`` of q(z | x) for uint8 images, unscaled."""
    vae.eval()
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(scaled(images[start : start + batch_size])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_autoencoder(
    images: torch.Tensor,
    *,
    settings: FitSettings,
    kl_weight: float = 1e-6,
    overrides: dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> AutoencoderKL:
    """Train an autoencoder on uint8 ``(N, 3, S, S)`` images; returns it (EMA weights when ``settings`` asks for
    them) in eval mode with ``scaling_factor`` measured on the training images."""
    kl_weight = non_negative(kl_weight, "kl_weight", "(e.g. 1e-6)")
    vae = build_autoencoder(seed=settings.seed, sample_size=int(images.shape[-1]), **(overrides or {}))

    def loss_fn(model: AutoencoderKL, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = scaled(images[indices])
        dist = model.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
        rec = model.decode(z).sample
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + kl_weight * dist.kl().mean()

    vae = fit(
        vae, loss_fn, len(images), settings, desc="mini autoencoder", checkpoint_dir=checkpoint_dir, progress=progress
    )
    mean, _ = posterior(vae, images[: min(len(images), 4096)])
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae.eval().requires_grad_(False)
