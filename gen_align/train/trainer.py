"""Head training over cached features with any registered objective, on CPU, one GPU or many (accelerate).

Each step draws a global batch of ``batch_size`` items (a seeded shuffle per epoch); every process embeds
its share, the embeddings are gathered with gradient (``torch.distributed.nn.functional.all_gather``) so
the loss sees the global batch, and DDP averages the gradients. Per-step randomness (head dropout,
modality masking) is seeded from (seed, step), so a run resumed from a checkpoint ends with the weights of
an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gen_align.errors import CheckpointError, ConfigError, InputFileError, OutputError
from gen_align.heads import HeadConfig, HeadSet
from gen_align.io import FolderLock, write_folder_atomic, write_json_atomic
from gen_align.objectives.registry import Objective, get_objective
from gen_align.space import AlignedSpace, write_space_checkpoint
from gen_align.train.config import TrainConfig, check_objectives_version
from gen_align.train.engine import Engine, OptimizerSettings, read_training_state
from gen_align.train.features import FeatureData, ManifestData
from gen_align.train.validation import validation_metrics

STATE_NAME = "trainer_state.json"
ENGINE_STATE_NAME = "training_state.pt"
RESUME_KEYS = ("features", "objective", "objective_params", "batch_size", "head", "modalities", "seed", "val_size")


def build_heads(config: TrainConfig, dims: dict[str, int], anchor: str) -> dict[str, HeadConfig]:
    """One head config per non-anchor modality, mapping its feature dimension to the anchor's."""
    h = config.head
    return {
        m: HeadConfig(
            dims[m], dims[anchor], h.kind, h.hidden_dim, h.layer_norm, h.spectral_norm, h.dropout, m in h.residual
        )
        for m in dims
        if m != anchor
    }


class EndToEndModel(nn.Module):
    """Trainable non-anchor towers followed by the heads; the anchor's cached features pass through."""

    def __init__(self, towers: dict[str, nn.Module], heads: HeadSet) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(towers).requires_grad_(True)
        self.heads = heads

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        features = {m: self.towers[m].encode(v) if m in self.towers else v for m, v in batch.items()}
        return self.heads(features)


class TrainedModules(nn.Module):
    """What the optimiser trains: the heads (behind trainable towers in end-to-end mode) and the objective's own
    parameters (GRAM's temperature), in one module so DDP, the optimiser and checkpoints cover all of them."""

    def __init__(self, net: nn.Module, objective_state: nn.Module | None) -> None:
        super().__init__()
        self.net = net
        self.objective_state = objective_state

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.net(batch)


def masked_loss(
    objective: Objective, z: dict[str, torch.Tensor], anchor: str, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective under stochastic modality masking: each non-anchor modality of each sample is masked with
    probability ``p`` (independently; the query modality of a retrieval objective is never masked).

    A masked modality's terms are dropped, not its embedding zeroed: samples are grouped by the modalities they keep,
    the objective is computed on each group of two or more samples that keeps two or more modalities, and the loss is
    the size-weighted mean of those. A sample left with the anchor alone contributes no term, so masking acts for two
    modalities too (the anchor and one other: the masked samples leave the batch of that step)."""
    if p == 0:
        return objective(z)
    droppable = [m for m in z if m != anchor and m != objective.hparams.get("query")]
    b = next(iter(z.values())).shape[0]
    keep = {m: torch.rand(b, generator=generator) >= p for m in droppable}
    patterns: dict[tuple[str, ...], list[int]] = {}
    for i in range(b):
        present = tuple(m for m in z if m not in keep or bool(keep[m][i]))
        patterns.setdefault(present, []).append(i)
    losses, weights, logs = [], [], {}
    for present, rows in patterns.items():
        if len(rows) < 2 or len(present) < 2:
            continue
        index = torch.tensor(rows, device=z[anchor].device)
        loss, logs = objective({m: z[m][index] for m in present})
        losses.append(loss)
        weights.append(len(rows))
    if not losses:
        raise ConfigError(
            f"modality_dropout={p} left no group of two or more samples with two or more modalities; lower it or "
            "raise batch_size."
        )
    total = sum(weights)
    return sum(w / total * loss for w, loss in zip(weights, losses, strict=True)), logs


def check_output_dir(out: Path, bytes_needed: int) -> None:
    """Fail before training if the output directory is not writable or lacks space for a few checkpoints."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"output directory {out} is not writable: {err.strerror or err}.") from err
    free = shutil.disk_usage(out).free
    if free < bytes_needed:
        raise OutputError(
            f"only {free / 2**20:.0f} MiB free under {out}, checkpoints need about {bytes_needed / 2**20:.0f} MiB; "
            "free space, lower keep_checkpoints, or choose another --out."
        )


def remove_partial_checkpoints(folder: Path) -> None:
    """Remove what a killed run leaves half-written in ``folder``: temporary checkpoint folders (this version's
    ``.step-N.*.tmp`` / ``.old`` and earlier versions' ``.tmp-step-N``)."""
    for leftover in [*folder.glob(".step-*.tmp"), *folder.glob(".step-*.old"), *folder.glob(".tmp-step-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed (a missing or unreadable file), or None."""
    state_file = path / STATE_NAME
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{state_file.name} is missing or unreadable ({type(err).__name__})"
    if (path / ENGINE_STATE_NAME).is_file():
        try:
            read_training_state(path / ENGINE_STATE_NAME)
        except CheckpointError:
            return f"{ENGINE_STATE_NAME} is truncated or unreadable"
    return None


class Trainer:
    """``Trainer(config).fit(resume=...)`` → the trained space directory and ``train_summary.json``."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator

        self.config = config.validate()
        self.out = Path(config.out)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=str(self.out)
        )
        towers: dict[str, nn.Module] = {}
        if config.mode == "end-to-end":
            self.data = ManifestData(
                config.features, config.manifest, config.modalities, config.anchor, config.val_size, config.seed
            )
            raw = [m for m in self.data.modalities if m != config.anchor]
            self.source_space = AlignedSpace.from_pretrained(config.space, modalities=raw)
            towers = dict(self.source_space.towers)
            dims = {m: int(t.embedding_dim) for m, t in towers.items()}
            dims[config.anchor] = int(self.data.anchor_features.shape[1])
        else:
            self.data = FeatureData(config.features, config.modalities, config.anchor, config.val_size, config.seed)
            dims = self.data.dims
        self.dims = dims
        self.head_configs = build_heads(config, dims, config.anchor)
        torch.manual_seed(config.seed)
        heads = HeadSet(self.head_configs)
        objective = get_objective(config.objective, **config.objective_hparams())
        model = TrainedModules(EndToEndModel(towers, heads) if towers else heads, objective.state)
        n_params = sum(p.numel() for p in model.parameters())
        if self.accelerator.is_main_process:
            check_output_dir(self.out, bytes_needed=4 * n_params * 4 * (config.keep_checkpoints + 1))
        self.steps_per_epoch = self.data.steps_per_epoch(config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        groups = [{"params": list(heads.parameters()), "lr": config.lr}]
        if objective.state is not None:
            groups.append({"params": list(objective.state.parameters()), "lr": config.lr, "weight_decay": 0.0})
        if towers:
            tower_params = [p for t in towers.values() for p in t.parameters()]
            groups.append({"params": tower_params, "lr": config.tower_lr or config.lr})
        settings = OptimizerSettings(config.lr, config.weight_decay, config.warmup_steps, config.schedule)
        self.engine = Engine(
            model,
            groups,
            settings,
            self.total_steps,
            desc="train",
            accelerator=self.accelerator,
            diverged_hint="lower lr or use fp32",
        )
        self.model = self.engine.model
        if self.accelerator.is_main_process:
            remove_partial_checkpoints(self.checkpoint_dir())
        self.objective = objective
        self.tau = float(self.objective.hparams.get("tau", 0.07))
        self.epoch, self.batch_in_epoch = 0, 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------- embedding
    def embed(self, split: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anchor features as they are; every other modality through its (tower and) head."""
        device = self.accelerator.device
        batch = self.data.batch(split, rows)
        return self.model({m: v.to(device) if isinstance(v, torch.Tensor) else v for m, v in batch.items()})

    def gather(self, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.accelerator.num_processes == 1:
            return z
        from torch.distributed.nn.functional import all_gather

        return {m: torch.cat(all_gather(v.contiguous())) for m, v in z.items()}

    @property
    def step(self) -> int:
        """Optimiser steps taken (restored on resume)."""
        return self.engine.step

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def resume_identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        current = self.config.to_dict()
        return {key: current[key] for key in RESUME_KEYS}

    def save_checkpoint(self) -> Path:
        """``step-N/``: the engine's state (heads, objective state, optimiser, schedule, scaler) and the data
        position + history, written into a temporary folder and swapped into place; the oldest beyond
        ``keep_checkpoints`` are removed."""
        final = self.checkpoint_dir() / f"step-{self.step:08d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            position = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

            def write(folder: Path) -> None:
                self.engine.save(folder / ENGINE_STATE_NAME, identity=self.resume_identity(), extra=position)
                write_json_atomic(
                    folder / STATE_NAME, {**position, "history": self.history, "config": self.config.to_dict()}
                )

            write_folder_atomic(final, write, hint="Free disk space, or lower keep_checkpoints.")
            for old in sorted(self.checkpoint_dir().glob("step-*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest intact checkpoint; a truncated or half-deleted newer one is reported and passed over."""
        for path in sorted(self.checkpoint_dir().glob("step-*"), reverse=True):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            warnings.warn(f"skipping the checkpoint {path}: {problem}; resuming from an older one.", stacklevel=2)
        return None

    def load_checkpoint(self, path: Path) -> None:
        state_file = path / STATE_NAME
        if not state_file.is_file():
            raise InputFileError(f"{path} is not a training checkpoint (no {STATE_NAME}).")
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{state_file} is unreadable ({err}); resume from another checkpoint.") from err
        saved = state["config"]
        check_objectives_version(saved.get("objectives_version"), f"the checkpoint {path}")
        if not (path / ENGINE_STATE_NAME).is_file():
            raise CheckpointError(
                f"{path} was written by an older gen-align (no {ENGINE_STATE_NAME}); it cannot be resumed by this "
                "version. Start a new run in another --out (or without --resume)."
            )
        current = self.resume_identity()
        for key in RESUME_KEYS:
            if saved.get(key) != current[key]:
                raise ConfigError(
                    f"cannot resume from {path}: {key} was {saved.get(key)!r} there and is {current[key]!r} now. "
                    "Use the same settings, or start a new run in another --out."
                )
        self.engine.load(path / ENGINE_STATE_NAME, identity=current)
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.history = state["history"]

    # ---------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def validate(self, chunk: int = 256) -> dict[str, float]:
        n = self.data.size("val")
        if n < 2:
            return {}
        self.model.eval()
        parts = [self.embed("val", torch.arange(i, min(i + chunk, n))) for i in range(0, n, chunk)]
        self.model.train()
        z = {m: torch.cat([p[m] for p in parts]).float().cpu() for m in parts[0]}
        return validation_metrics(z, self.config.anchor, self.tau)

    def fit(self, resume: bool | str | os.PathLike = False, *, progress: bool = True) -> dict[str, Any]:
        """Train to ``total_steps``; ``resume=True`` continues from the latest checkpoint in ``out``; ``progress``
        shows the step bar (on the main process). A second run into the same ``out`` is refused while this one runs
        (:class:`~gen_align.io.FolderLock`)."""
        with FolderLock(self.config.out, f"rank{self.accelerator.process_index}"):
            return self._fit(resume, progress=progress)

    def _fit(self, resume: bool | str | os.PathLike, *, progress: bool) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.config
        if resume:
            path = self.latest_checkpoint() if resume is True else Path(resume)
            if path is None:
                raise InputFileError(f"--resume: no checkpoint under {self.checkpoint_dir()}.")
            self.load_checkpoint(path)
        acc.init_trackers("gen-align", config={k: str(v) for k, v in cfg.to_dict().items()})
        if not self.history:
            self.history.append({"epoch": 0, "step": 0, "validation": self.validate()})
        started, samples = time.perf_counter(), 0
        self.engine.progress(enabled=progress and acc.is_main_process)
        self.model.train()
        while self.step < self.total_steps:
            for i, rows in enumerate(self.data.batches(self.epoch, cfg.batch_size, cfg.seed)):
                if i < self.batch_in_epoch:
                    continue  # data position of a resumed run
                generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
                torch.manual_seed(cfg.seed * 1_000_003 + self.step)
                with acc.autocast():
                    z = self.gather(self.embed("train", rows[acc.process_index :: acc.num_processes]))
                    loss, logs = masked_loss(self.objective, z, cfg.anchor, cfg.modality_dropout, generator)
                self.engine.update(loss)
                self.batch_in_epoch, samples = i + 1, samples + len(rows)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    values = {"loss": loss.item(), **{f"loss/{k}": v.item() for k, v in logs.items()}}
                    acc.log({**values, "lr": self.engine.lr}, step=self.step)
                    self.engine.bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step >= self.total_steps:
                    break
            if self.batch_in_epoch == self.steps_per_epoch:  # the epoch is complete (also on the last step)
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                metrics = self.validate()
                self.history.append({"epoch": self.epoch, "step": self.step, "validation": metrics})
                acc.log({f"val/{k}": v for k, v in metrics.items()}, step=self.step)
        self.engine.close()
        elapsed = time.perf_counter() - started
        return self.finish(samples / elapsed if elapsed > 0 else float("nan"))

    def save_space(self, summary: dict[str, Any]) -> Path:
        """OUT/space: the anchor's tower from the cache identity, trained heads (and fine-tuned towers), and
        the anchor's mean embedding norm as the output scale (what the decoders were trained on)."""
        cfg, model = self.config, self.accelerator.unwrap_model(self.model).net
        heads = model.heads if isinstance(model, EndToEndModel) else model
        anchor_features = (
            self.data.anchor_features if isinstance(self.data, ManifestData) else self.data.train[cfg.anchor]
        )
        towers = dict(self.data.identity.get("towers", {}))
        config = {
            "format": "gen-align-space",
            "anchor": cfg.anchor,
            "embedding_dim": self.dims[cfg.anchor],
            "towers": towers,
            "heads": {m: c.to_dict() for m, c in self.head_configs.items()},
            "output_norm": float(anchor_features.norm(dim=-1).mean()),
            "training": {
                "objective": summary["objective"],
                "steps": self.step,
                "mode": cfg.mode,
                "settings": cfg.to_dict(),
            },
        }
        if isinstance(model, EndToEndModel):
            config["towers"] = {**towers, **{m: self.source_space.config["towers"][m] for m in model.towers}}
            space = AlignedSpace(config, dict(model.towers), dict(heads.heads))
            return space.save_pretrained(self.out / "space", save_towers=True)
        return write_space_checkpoint(self.out / "space", config, dict(heads.heads))

    def finish(self, samples_per_second: float) -> dict[str, Any]:
        """Write the trained space (config.json + heads.safetensors) and ``train_summary.json``."""
        acc, cfg = self.accelerator, self.config
        if self.history[-1]["step"] != self.step:
            self.history.append({"epoch": self.epoch, "step": self.step, "validation": self.validate()})
        acc.wait_for_everyone()
        summary = {
            "steps": self.step,
            "epochs_completed": self.epoch,
            "train_items": self.data.num_train,
            "val_items": self.data.size("val"),
            "samples_per_second": samples_per_second,
            "objective": self.objective.record(),
            "history": self.history,
            "config": cfg.to_dict(),
        }
        if acc.is_main_process:
            self.save_space(summary)
            write_json_atomic(self.out / "train_summary.json", summary)
        acc.end_training()
        return summary
