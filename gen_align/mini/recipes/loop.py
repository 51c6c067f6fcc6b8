"""The loop every mini-world model trains with (CLIP, BEATs, decoder, classifier), on the shared
:class:`~gen_align.train.engine.Engine`.

Minibatches of shuffled item indices are drawn from a seeded generator; the engine does AdamW with linear warm-up
and cosine decay, clipping, the optional EMA copy and the progress bar. The state (``fit_state.pt`` in
``checkpoint_dir``, written atomically every ``checkpoint_every`` steps and at the end) holds the engine's state and
the loop's position, so an interrupted run continues where it stopped and gives the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import ConfigError
from gen_align.train.engine import Engine, OptimizerSettings, TrainingDivergedError, decay_groups, settings_identity

__all__ = ["STATE_FILE", "FitSettings", "LossFn", "TrainingDivergedError", "fit"]

STATE_FILE = "fit_state.pt"


@dataclass(frozen=True)
class FitSettings:
    """Steps, batch and optimiser of one :func:`fit` run."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup: int = 0
    seed: int = 0
    ema_decay: float | None = None
    checkpoint_every: int = 500
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        integer(self.steps, "steps")
        integer(self.batch_size, "batch_size")
        positive(self.lr, "lr")
        non_negative(self.weight_decay, "weight_decay")
        integer(self.warmup, "warmup", low=0)
        integer(self.seed, "seed", low=0)
        integer(self.checkpoint_every, "checkpoint_every")
        self.optimizer()  # ema_decay and grad_clip are checked there

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(self.lr, self.weight_decay, self.warmup, "cosine", self.grad_clip, self.ema_decay)


LossFn = Callable[[nn.Module, Tensor, torch.Generator], Tensor]


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    num_items: int,
    settings: FitSettings,
    *,
    desc: str,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place for ``settings.steps`` steps; returns the EMA copy (or ``model`` without EMA).

    Args:
        model: the module to train.
        loss_fn: ``loss_fn(model, indices, generator)`` gets a batch of item indices (without replacement within an
            epoch) and a CPU generator for its own randomness (noise, augmentation), both restored exactly on resume.
        num_items: the dataset size (≥ 2).
        settings: steps, batch, optimiser.
        desc: the run's name (progress bar, errors, the state's identity).
        checkpoint_dir: where ``fit_state.pt`` lives; a state found there is resumed.
        progress: show the progress bar.

    Raises:
        TrainingDivergedError: the loss became NaN/inf.
        CheckpointError: the state in ``checkpoint_dir`` is unreadable or belongs to another run.
        ConfigError: the model has nothing to train.
    """
    integer(num_items, "num_items", low=2)
    batch = min(settings.batch_size, num_items)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: the model has no trainable parameters.")
    engine = Engine(model, decay_groups(params, settings.weight_decay), settings.optimizer(), settings.steps, desc=desc)
    generator = torch.Generator().manual_seed(settings.seed)
    order, cursor = torch.randperm(num_items, generator=generator), 0
    identity = settings_identity(settings, num_items=num_items)

    state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir is not None else None
    if state_path is not None and state_path.exists():
        extra = engine.load(state_path, identity=identity)
        generator.set_state(extra["generator"])
        order, cursor = extra["order"], extra["cursor"]

    model.train()
    engine.progress(enabled=progress)
    while engine.step < settings.steps:
        if cursor + batch > num_items:
            order, cursor = torch.randperm(num_items, generator=generator), 0
        indices = order[cursor : cursor + batch]
        cursor += batch
        loss = loss_fn(model, indices, generator)
        engine.update(loss)
        engine.bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if state_path is not None and (engine.step % settings.checkpoint_every == 0 or engine.step == settings.steps):
            position = {"generator": generator.get_state(), "order": order, "cursor": cursor}
            engine.save(state_path, identity=identity, extra=position)
    engine.close()
    model.eval()
    return engine.result()
