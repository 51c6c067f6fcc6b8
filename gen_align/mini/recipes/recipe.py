"""How big every mini-world stage is: the full recipe (the shipped preset) and a seconds-long smoke one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from .loop import FitSettings

OBJECTIVES = ("infonce", "gram", "unialign", "unialign-geodesic")
SHIPPED_OBJECTIVE = "unialign"


@dataclass(frozen=True)
class MiniRecipe:
    """World size, every model's training budget, and which objectives × seeds get heads."""

    seed: int = 0
    train_items: int = 20000
    test_items: int = 1024
    # CLIP: 2000 × 128 encodes shape better than 1000 × 256 at the same cost (linear probe on the image
    # embedding 0.69 vs 0.61, text→image same shape 0.77 vs 0.71; docs/mini.md)
    clip: FitSettings = FitSettings(steps=2000, batch_size=128, lr=1e-3, warmup=200, checkpoint_every=400)
    beats: FitSettings = FitSettings(steps=600, batch_size=128, lr=1e-3, warmup=60, checkpoint_every=200)
    decoder: FitSettings = FitSettings(
        steps=3000, batch_size=64, lr=7e-4, warmup=200, ema_decay=0.999, checkpoint_every=250
    )
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
    head_val: int = 512

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
        decoder=replace(few, ema_decay=0.9),
        classifier=few,
        head_seeds=(0,),
        head_taus=(0.07, 0.5),
        head_epochs=1,
        head_batch=16,
        head_val=8,
    )
