"""The optimisation engine every gen-align training loop runs on: written once, used by the heads trainer
(:mod:`gen_align.train.trainer`), the mini-world models (:mod:`gen_align.mini.recipes.loop`) and the retrieval heads
(:mod:`gen_align.retrieval.head_training`).

A loop owns its data (what a batch is, how the order is drawn); the engine owns everything after the loss:
the finite-loss guard, AdamW, the linear warm-up + cosine (or constant) schedule, gradient clipping, an EMA copy
of the weights, the progress bar and the training state (weights, optimiser, schedule, EMA, the mixed-precision
scaler and the loop's own position), saved atomically and restored bit for bit.

Example:
    >>> import torch
    >>> from gen_align.train.engine import Engine, OptimizerSettings
    >>> model = torch.nn.Linear(2, 1)
    >>> engine = Engine(model, model.parameters(), OptimizerSettings(lr=0.1), total_steps=3, desc="demo")
    >>> for _ in range(3):
    ...     engine.update(model(torch.ones(4, 2)).pow(2).mean())
    >>> engine.step
    3
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import CheckpointError, ConfigError, GenAlignError
from gen_align.io import write_bytes_atomic
from gen_align.train.schedule import SCHEDULES, warmup_schedule

STATE_FORMAT = "gen-align-training-state"


class TrainingDivergedError(GenAlignError, ArithmeticError):
    """The loss became NaN/inf."""


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its schedule: ``lr``, ``weight_decay`` (for groups that do not set their own), ``warmup`` steps,
    ``schedule`` ("cosine" | "constant"), ``grad_clip`` (max global norm, None: none) and ``ema_decay`` (None: no
    EMA copy)."""

    lr: float
    weight_decay: float = 0.01
    warmup: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = None
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        positive(self.lr, "lr")
        non_negative(self.weight_decay, "weight_decay")
        integer(self.warmup, "warmup", low=0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}.")
        if self.grad_clip is not None:
            positive(self.grad_clip, "grad_clip", "(or None for no clipping)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay!r}.")


def decay_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with weight decay on matrices and none on vectors (biases, norms, scales)."""
    params = list(params)
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


class Engine:
    """One optimisation step at a time: ``engine.update(loss)`` checks the loss, back-propagates, clips, steps
    AdamW and the schedule, and updates the EMA copy; ``engine.step`` counts the steps taken.

    Args:
        model: the module being trained (its parameters must appear in ``param_groups``).
        param_groups: parameters, or AdamW groups (dicts with ``params`` and their own ``lr`` / ``weight_decay``).
        settings: the optimiser, schedule, clipping and EMA settings.
        total_steps: the length of the schedule.
        desc: the run's name, in the progress bar, in errors and in saved states.
        accelerator: an ``accelerate.Accelerator`` for DDP / mixed precision (model and optimiser are prepared
            with it; the schedule steps once per engine step whatever the number of processes).
        diverged_hint: what the NaN-loss error advises (default: lower the learning rate).

    Raises:
        ConfigError: no trainable parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        param_groups: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        settings: OptimizerSettings,
        total_steps: int,
        *,
        desc: str,
        accelerator: Any = None,
        diverged_hint: str = "",
    ) -> None:
        groups = list(param_groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [g for g in groups if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        if not any(p.requires_grad for p in self.params):
            raise ConfigError(f"{desc}: the model has no trainable parameters.")
        self.settings, self.desc, self.total_steps = settings, desc, total_steps
        self.diverged_hint = diverged_hint or f"lower the learning rate (now {settings.lr}) or check the inputs for NaN"
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_schedule(settings.warmup, total_steps, settings.schedule)
        )
        self.ema = copy.deepcopy(model).requires_grad_(False).eval() if settings.ema_decay else None
        self.accelerator = accelerator
        if accelerator is not None:
            model, optimizer = accelerator.prepare(model, optimizer)
        self.model, self.optimizer = model, optimizer
        self.step = 0
        self.bar: Any = None

    # -------------------------------------------------------------------------------------------- steps
    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``.

        Raises:
            TrainingDivergedError: the loss is NaN or infinite (nothing is stepped).
        """
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingDivergedError(
                f"{self.desc}: the loss became {loss.item()} at step {self.step + 1}; {self.diverged_hint}."
            )
        self.optimizer.zero_grad(set_to_none=True)
        acc = self.accelerator
        if acc is None:
            loss.backward()
        else:
            acc.backward(loss)
        if self.settings.grad_clip is not None:
            clip = nn.utils.clip_grad_norm_ if acc is None else acc.clip_grad_norm_
            clip(self.params, self.settings.grad_clip)
        self.optimizer.step()
        if not getattr(self.optimizer, "step_was_skipped", False):  # a mixed-precision overflow skips the step
            self.scheduler.step()
        if self.ema is not None:
            _ema_update(self.ema, self.unwrapped(), self.settings.ema_decay)
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)

    @property
    def lr(self) -> float:
        """The current learning rate of the first group."""
        return self.scheduler.get_last_lr()[0]

    def unwrapped(self) -> nn.Module:
        """The trained module without its DDP wrapper."""
        return self.model if self.accelerator is None else self.accelerator.unwrap_model(self.model)

    def result(self) -> nn.Module:
        """The EMA copy when there is one, else the trained module."""
        return self.ema if self.ema is not None else self.unwrapped()

    def progress(self, *, enabled: bool = True, unit: str = "step") -> Any:
        """Open the progress bar (from the current step to ``total_steps``); ``update`` advances it."""
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=self.desc, unit=unit, disable=not enabled)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser, schedule, EMA, the mixed-precision scaler and the step count."""
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "model": self.unwrapped().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.unwrapped().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def save(self, path: str | os.PathLike, *, identity: Mapping[str, Any], extra: Mapping[str, Any]) -> Path:
        """Write the state, the run's ``identity`` (what must match to resume) and the loop's ``extra`` position
        (tensors, generator states, numbers) to ``path``, atomically.

        Raises:
            OutputError: the file could not be written (full disk, no permission).
        """
        buffer = io.BytesIO()
        payload = {"format": STATE_FORMAT, "desc": self.desc, "identity": dict(identity), "extra": dict(extra)}
        torch.save({**payload, "engine": self.state_dict()}, buffer)
        return write_bytes_atomic(path, buffer.getvalue(), what=f"the {self.desc} training state")

    def load(self, path: str | os.PathLike, *, identity: Mapping[str, Any]) -> dict[str, Any]:
        """Restore a state written by :meth:`save`; returns the loop's ``extra``.

        Raises:
            CheckpointError: the file is unreadable, or was written by a run with another identity.
        """
        state = read_training_state(path)
        saved = (state.get("desc"), state.get("identity"))
        if saved != (self.desc, dict(identity)):
            raise CheckpointError(
                f"{path} holds a {saved[0]!r} run with other settings or data ({saved[1]}); delete it (or use another "
                f"output directory) to train {self.desc!r} with {dict(identity)}."
            )
        self.load_state_dict(state["engine"])
        return state["extra"]


def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in a training state file (loaded with ``weights_only=True``: no pickled code runs).

    Raises:
        CheckpointError: the file is missing, truncated, not a state file, or from an older layout.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state file gets the same advice
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err}); delete it to start over.") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is not a {STATE_FORMAT} file (written by an older gen-align or another tool); delete it to start "
            "over."
        )
    return state


def settings_identity(*settings: Any, **more: Any) -> dict[str, Any]:
    """An identity dict from dataclass settings and plain values (for :meth:`Engine.save` / :meth:`Engine.load`)."""
    out: dict[str, Any] = {}
    for s in settings:
        out.update(asdict(s))
    return {**out, **more}


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
