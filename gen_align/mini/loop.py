"""One small training loop for every mini-world model (CLIP, BEATs, decoder, classifier).

AdamW with linear warm-up and cosine decay, minibatches of shuffled item indices drawn from a seeded generator,
an optional EMA copy of the weights, a tqdm bar, and a resumable state file: ``fit_state.pt`` in
``checkpoint_dir`` (written atomically every ``checkpoint_every`` steps and at the end), so an interrupted run
continues where it stopped and gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import CheckpointError, ConfigError, GenAlignError
from gen_align.io import write_bytes_atomic
from gen_align.train.schedule import warmup_schedule

STATE_FILE = "fit_state.pt"


class TrainingDivergedError(GenAlignError, ArithmeticError):
    """The loss became NaN/inf."""


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
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay!r}.")
        if self.grad_clip is not None:
            positive(self.grad_clip, "grad_clip")


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

    ``loss_fn(model, indices, generator)`` gets a batch of item indices (without replacement within an epoch)
    and a CPU generator for its own randomness (noise, augmentation), both restored exactly on resume.
    """
    integer(num_items, "num_items", low=2)
    batch = min(settings.batch_size, num_items)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: the model has no trainable parameters.")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_schedule(settings.warmup, settings.steps))
    ema = copy.deepcopy(model).requires_grad_(False).eval() if settings.ema_decay else None
    generator = torch.Generator().manual_seed(settings.seed)
    order, cursor, step = torch.randperm(num_items, generator=generator), 0, 0

    state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir is not None else None
    if state_path is not None and state_path.exists():
        state = _read_state(state_path, desc, settings, num_items)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        order, cursor, step = state["order"], state["cursor"], state["step"]

    def save() -> None:
        if state_path is None:
            return
        buffer = io.BytesIO()
        torch.save(
            {
                "desc": desc,
                "settings": asdict(settings),
                "num_items": num_items,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "generator": generator.get_state(),
                "order": order,
                "cursor": cursor,
                "step": step,
            },
            buffer,
        )
        write_bytes_atomic(state_path, buffer.getvalue(), what=f"the {desc} training state")

    model.train()
    bar = tqdm(total=settings.steps, initial=step, desc=desc, unit="step", disable=not progress)
    while step < settings.steps:
        if cursor + batch > num_items:
            order, cursor = torch.randperm(num_items, generator=generator), 0
        indices = order[cursor : cursor + batch]
        cursor += batch
        loss = loss_fn(model, indices, generator)
        if not bool(torch.isfinite(loss)):
            raise TrainingDivergedError(
                f"{desc}: the loss became {loss.item()} at step {step + 1}; lower the learning rate "
                f"(now {settings.lr}) or check the inputs for NaN values."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            _ema_update(ema, model, settings.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            save()
    bar.close()
    model.eval()
    return ema if ema is not None else model


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def _read_state(path: Path, desc: str, settings: FitSettings, num_items: int) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state file gets the same advice
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err}); delete it to start over.") from err
    saved = (state.get("desc"), state.get("settings"), state.get("num_items"))
    if saved != (desc, asdict(settings), num_items):
        raise CheckpointError(
            f"{path} holds a {saved[0]!r} run with other settings or data ({saved[1]}, {saved[2]} items); "
            f"delete it (or use another output directory) to train {desc!r} with {asdict(settings)}."
        )
    return state
