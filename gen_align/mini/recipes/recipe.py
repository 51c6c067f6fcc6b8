"""How big every mini-world stage is: the full recipe (the shipped preset) and a seconds-long smoke one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .loop import FitSettings

OBJECTIVES = ("infonce", "gram", "unialign", "unialign-geodesic")
CLIP_VISION = {"layers": [1, 1, 1, 1], "width": 16, "image_size": 32}
"""open_clip's ``CLIPVisionCfg`` of the CLIP image tower: the original CLIP's ModifiedResNet at width 16
(1.3 M parameters; ``layers`` as a list selects the ResNet)."""
AUTOENCODER = {"block_out_channels": (16, 32)}
"""The autoencoder's overrides of :func:`~.autoencoder.autoencoder_config`: 32 → 16 pixels × 4 channels (the
32 → 8 one lost shape and background in its reconstructions; docs/mini.md)."""
DECODER_UNET = {"block_out_channels": (32, 64, 128), "token_levels": (1,)}
"""The latent UNet's overrides of :func:`~.decoder.unet_config`: 16 → 8 → 4 latent pixels, 2.7 M parameters; the
embedding is its class embedding (FiLM, as Stable UnCLIP) and, at the 8 × 8 level, 32 cross-attention tokens (as
Kandinsky 2.2): FiLM alone drew circles for most squares and stars (docs/mini.md)."""
SHIPPED_OBJECTIVE = "unialign"
ABLATED = "unialign"
"""The objective whose variants :data:`ABLATIONS` trains (the paper ablates UniAlign with λ_vol on)."""
ABLATIONS = {
    "unialign-no-uc-no-vol": {"centroid_term": False, "volume_term": False},
    "unialign-no-uc": {"centroid_term": False},
    "unialign-no-vol": {"volume_term": False},
    "unialign-tau-ctr-0.01": {"tau_ctr": 0.01},
    "unialign-tau-ctr-0.03": {"tau_ctr": 0.03},
    "unialign-tau-ctr-0.07": {"tau_ctr": 0.07},
}
"""The paper's ablations (Table 2: U(C) and the Gram volume each in L_vol or not, the full L_vol being ``unialign``
itself; Table 5: τ_ctr ∈ {0.01, 0.03, 0.07}), as UniAlign parameter overrides."""


@dataclass(frozen=True)
class MiniRecipe:
    """World size, every model's training budget, and which objectives × seeds get heads."""

    seed: int = 0
    train_items: int = 20000
    test_items: int = 1024
    # CLIP with the ResNet image tower: 2000 × 128, batches turned and mirrored; a linear probe on its image
    # embeddings finds every attribute ≥ 99.7 % (the ViT it replaced: shape 69 %; docs/mini.md)
    clip: FitSettings = FitSettings(steps=2000, batch_size=128, lr=1e-3, warmup=200, checkpoint_every=400)
    clip_vision: dict[str, Any] = field(default_factory=lambda: dict(CLIP_VISION))
    beats: FitSettings = FitSettings(steps=600, batch_size=128, lr=1e-3, warmup=60, checkpoint_every=200)
    # the decoder (latent diffusion, as the real unCLIP decoders): the autoencoder first, then the unCLIP UNet on its
    # latents (autoencoder None: in pixel space). EMA 0.995: with 0.999 a few thousand steps still average in the
    # early weights and the samples stay grainy (docs/mini.md)
    autoencoder: FitSettings | None = FitSettings(steps=2000, batch_size=64, lr=1e-3, warmup=100, checkpoint_every=250)
    autoencoder_arch: dict[str, Any] = field(default_factory=lambda: dict(AUTOENCODER))
    decoder: FitSettings = FitSettings(
        steps=6000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.995, checkpoint_every=500
    )
    decoder_unet: dict[str, Any] = field(default_factory=lambda: dict(DECODER_UNET))
    # Min-SNR-γ loss weighting (recipes.decoder.min_snr_weights): γ = 5 lost background texture (reconstruction
    # accuracy 81 % vs 93 % unweighted, docs/mini.md), so the recipe leaves the loss unweighted
    decoder_snr_gamma: float | None = None
    classifier: FitSettings = FitSettings(steps=800, batch_size=256, lr=2e-3, warmup=50, checkpoint_every=200)
    objectives: tuple[str, ...] = OBJECTIVES
    head_seeds: tuple[int, ...] = (0, 1, 2)
    # candidates (the paper's τ: the kernel exp(−δ²/(2τ²)) of UniAlign, the softmax temperature of InfoNCE and
    # GRAM, GRAM's initial one), chosen per objective on validation R@1; 0.07 is the paper's (Appendix F)
    head_taus: tuple[float, ...] = (0.07, 0.1, 0.2, 0.35, 0.5, 1.0)
    head_epochs: int = 20
    head_batch: int = 512
    head_lr: float = 1e-3
    head_params: dict[str, dict[str, Any]] | None = None  # objective -> hyperparameter overrides
    # the text tower is CLIP's own (already in the image space): its head starts at the identity, as the paper's
    # pretrained encoders start aligned. From a random start GRAM's sign-invariant volume let text converge to the
    # negated image embeddings (cos −0.42 for every test pair, R@1 0; docs/mini.md)
    head_residual: tuple[str, ...] = ("text",)
    head_val: int = 512
    # how heads() picks τ per objective: "r1" = the best validation R@1 (mean of text→image, audio→image);
    # "r1-then-gap" = among the τ within 2 standard errors of that best R@1, the smallest validation modality gap to
    # the image anchor (the decoder reads image-like embeddings; R@1 alone cannot tell those τ apart, docs/mini.md)
    tau_selection: str = "r1-then-gap"
    ablations: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in ABLATIONS.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stage_hash(self, *fields: str) -> str:
        """A short hash of the fields a stage depends on (a rerun with other values redoes the stage)."""
        blob = json.dumps({f: self.to_dict()[f] for f in fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


FULL = MiniRecipe()


def smoke_recipe(seed: int = 0) -> MiniRecipe:
    """A miniature of the whole pipeline (tiny world, a few steps per model) for CI: seconds, not quality."""
    few = FitSettings(steps=3, batch_size=16, lr=1e-3, checkpoint_every=2)
    return replace(
        FULL,
        seed=seed,
        train_items=48,
        test_items=8,
        clip=few,
        beats=few,
        autoencoder=few,
        autoencoder_arch={"block_out_channels": (8, 8)},
        decoder=replace(few, ema_decay=0.9),
        decoder_unet={"block_out_channels": (8, 16, 16)},
        classifier=few,
        head_seeds=(0,),
        head_taus=(0.07, 0.5),
        head_epochs=1,
        head_batch=16,
        head_val=8,
        ablations={"unialign-no-uc-no-vol": dict(ABLATIONS["unialign-no-uc-no-vol"])},
    )
