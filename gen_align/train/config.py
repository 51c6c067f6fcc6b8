"""Training configuration: a YAML/TOML file plus ``--set key=value`` overrides, validated up front.

Defaults follow the paper: AdamW, lr 2e-5, batch 512 (Appendix F). The objective's own defaults (τ = 0.07,
λ_uni = λ_align = 1, λ_vol by the ``task`` preset: 0.1 for generation, 1 for retrieval) come from the objective
registry alone, the values ``gen-align objectives`` shows. ``objectives_version`` names the convention of the
objective settings (:data:`~gen_align.objectives.registry.OBJECTIVES_VERSION`); a config or checkpoint of an
older convention is refused, never reinterpreted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gen_align.checks import choice, integer, non_negative, positive
from gen_align.errors import ConfigError, InputFileError
from gen_align.heads import HEAD_KINDS
from gen_align.objectives.registry import OBJECTIVES_VERSION, get_objective, list_objectives
from gen_align.train.schedule import SCHEDULES

PRECISIONS = ("no", "bf16", "fp16")
MODES = ("features", "end-to-end")


@dataclass
class HeadSettings:
    """The heads' architecture (:class:`~gen_align.heads.HeadConfig`); ``residual`` names the modalities whose head
    starts at the identity (towers already in the anchor's space, e.g. ``["text"]`` for CLIP's own text tower)."""

    kind: str = "mlp"
    hidden_dim: int | None = None
    layer_norm: bool = True
    spectral_norm: bool = False
    dropout: float = 0.0
    residual: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything a run needs; ``features`` is a cache written by ``gen-align encode``.

    ``mode="features"`` trains heads over the cached features of every modality. ``mode="end-to-end"``
    also fine-tunes the non-anchor towers of ``space`` (a preset or checkpoint) on the raw text/audio of
    ``manifest``; the anchor stays frozen, so its cached features are used as they are."""

    features: str = ""
    out: str = ""
    mode: str = "features"
    manifest: str = ""
    space: str = ""
    tower_lr: float | None = None
    objective: str = "unialign"
    objective_params: dict[str, Any] = field(default_factory=dict)
    objectives_version: int = OBJECTIVES_VERSION
    anchor: str = "image"
    modalities: list[str] | None = None
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "cosine"
    batch_size: int = 512
    epochs: int = 10
    max_steps: int | None = None
    head: HeadSettings = field(default_factory=HeadSettings)
    modality_dropout: float = 0.0
    val_size: int = 1024
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    mixed_precision: str = "no"
    seed: int = 0

    def validate(self) -> TrainConfig:
        if not self.features:
            raise ConfigError("features is required: the feature-cache directory written by `gen-align encode`.")
        if not self.out:
            raise ConfigError("out is required: the directory for checkpoints, logs and the trained space.")
        choice(self.mode, "mode", MODES)
        if self.mode == "end-to-end" and not (self.manifest and self.space):
            raise ConfigError(
                "mode=end-to-end needs manifest (the raw text/audio) and space (a preset or checkpoint whose "
                "non-anchor towers are fine-tuned)."
            )
        if self.tower_lr is not None:
            positive(self.tower_lr, "tower_lr")
        check_objectives_version(self.objectives_version, "this training config")
        if self.objective not in list_objectives():
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of {sorted(list_objectives())}.")
        if not isinstance(self.objective_params, dict):
            raise ConfigError(f"objective_params must be a table of hyperparameters, got {self.objective_params!r}.")
        get_objective(self.objective, **self.objective_hparams())  # names, task, GRAM's τ: refused here, not at step 1
        if self.modalities is not None and (
            not isinstance(self.modalities, list) or not all(isinstance(m, str) and m for m in self.modalities)
        ):
            raise ConfigError(
                f'modalities must be a list of modality names such as ["image", "audio"], got {self.modalities!r}.'
            )
        positive(self.lr, "lr")
        non_negative(self.weight_decay, "weight_decay")
        integer(self.warmup_steps, "warmup_steps", low=0)
        choice(self.schedule, "schedule", SCHEDULES)
        integer(self.batch_size, "batch_size", low=2, hint="Uniformity terms need at least two items per batch.")
        integer(self.epochs, "epochs")
        if self.max_steps is not None:
            integer(self.max_steps, "max_steps")
        choice(self.head.kind, "head.kind", HEAD_KINDS)
        non_negative(self.head.dropout, "head.dropout")
        residual = self.head.residual
        if (
            isinstance(residual, str)
            or not isinstance(residual, (list, tuple))
            or not all(isinstance(m, str) and m for m in residual)
        ):
            raise ConfigError(f'head.residual must be a list of modality names such as ["text"], got {residual!r}.')
        if self.anchor in residual:
            raise ConfigError(f"head.residual names the anchor {self.anchor!r}, which has no head; drop it.")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout must be in [0, 1), got {self.modality_dropout!r}.")
        integer(self.val_size, "val_size", low=0)
        integer(self.checkpoint_every, "checkpoint_every")
        integer(self.keep_checkpoints, "keep_checkpoints")
        integer(self.log_every, "log_every")
        choice(self.mixed_precision, "mixed_precision", PRECISIONS)
        integer(self.seed, "seed", low=0)
        return self

    def objective_hparams(self) -> dict[str, Any]:
        """The registry hyperparameters given in ``objective_params`` (the registry fills in the rest), and the
        run's anchor for objectives that have one."""
        params = dict(self.objective_params)
        defaults = list_objectives()[self.objective]["defaults"]
        if "anchor" in defaults:
            params.setdefault("anchor", self.anchor)
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as unialign or bf16


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section.")
    tree[leaf] = value


def check_objectives_version(version: object, what: str) -> None:
    """Refuse objective settings written under another convention (their τ means something else)."""
    if version == OBJECTIVES_VERSION:
        return
    if version is None or version == 1:
        raise ConfigError(
            f"{what} was written under objectives version 1 (gen-align before the paper's equations: kernel "
            "exp(-||x-y||^2/tau), uniformity as one log-mean over all pairs, averaged over modalities), and this "
            f"gen-align computes version {OBJECTIVES_VERSION} (the paper's Eq. 9-14, kernel exp(-||x-y||^2/(2 tau^2)), "
            "summed over modalities). The forms differ, so a run cannot continue across them: train anew. To "
            "carry a setting over, the same kernel width is tau_paper = sqrt(tau_old / 2) (0.07 -> 0.187; the "
            "paper's default is 0.07), UniAlign's lambda_vol is now set by task=generation (0.1) or retrieval (1), "
            f"InfoNCE's weights are pair_weights; then set objectives_version: {OBJECTIVES_VERSION}."
        )
    raise ConfigError(f"objectives_version must be {OBJECTIVES_VERSION}, got {version!r} in {what}.")


def _route_objective_keys(tree: dict[str, Any], known: set[str]) -> None:
    """Top-level keys that are hyperparameters of the chosen objective (``--set tau=0.05``,
    ``--set weights.text=0.5``) move into ``objective_params``."""
    objective = tree.get("objective", TrainConfig.objective)
    if not isinstance(objective, str) or objective not in list_objectives():
        return
    hparams = set(list_objectives()[objective]["defaults"])
    params = tree.get("objective_params")
    for key in sorted(set(tree) - known):
        if key in hparams:
            if not isinstance(params, dict):
                params = tree["objective_params"] = {}
            if key in params:
                raise ConfigError(f"{key} is given both at the top level and in objective_params; keep one.")
            params[key] = tree.pop(key)


def _from_tree(tree: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    _route_objective_keys(tree, known)
    unknown = sorted(set(tree) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}.")
    head = tree.get("head", {})
    head_known = {f.name for f in fields(HeadSettings)}
    if not isinstance(head, dict) or set(head) - head_known:
        raise ConfigError(f"head must be a table with keys among {sorted(head_known)}, got {head!r}.")
    try:
        return TrainConfig(**{**tree, "head": HeadSettings(**head)})
    except TypeError as err:
        raise ConfigError(f"invalid training config: {err}") from err


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a ``.yaml``/``.yml``/``.toml`` file (optional), apply ``key=value`` overrides (dotted keys for
    nested tables, values parsed as JSON when possible), validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise InputFileError(f"cannot read training config {path}: {err.strerror or err}") from err
        try:
            if path.suffix == ".toml":
                tree = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                try:
                    tree = yaml.safe_load(text) or {}
                except yaml.YAMLError as err:
                    raise ValueError(str(err)) from err
            else:
                raise ConfigError(f"training config {path} must end in .yaml, .yml or .toml.")
        except (tomllib.TOMLDecodeError, ValueError) as err:
            raise ConfigError(f"training config {path} does not parse: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"training config {path} must hold a mapping of keys to values.")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-4 or head.kind=linear).")
        _set(tree, key.strip(), _parse_value(value.strip()))
    return _from_tree(tree).validate()
