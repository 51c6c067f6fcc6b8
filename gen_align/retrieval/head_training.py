"""Retrieval heads trained on cached paired embeddings: a shared base class, save/load, and a training loop.

A head (:class:`~gen_align.retrieval.gare.GAREHead`, :class:`~gen_align.retrieval.gravi_head.GraviAlignHead`)
learns from ``{query_modality: (N, d_q), gallery_modality: (N, d_g)}`` with row i of each a matching pair.
:func:`train_head` runs AdamW over seeded shuffles of those pairs and returns the per-epoch history.

Checkpoint directory (Hugging Face style, ``save_pretrained`` / ``from_pretrained``)::

    config.json         {"format": "gen-align-retrieval-head", "kind": "gare" | "gravi-align",
                         "config": {...the head's config dataclass...}, "library_version": "...",
                         "training": {...the train_head settings, steps, final loss...}}
    model.safetensors   the state dict, tensors saved as they are (dtype included: a round trip is bit-exact)
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import CheckpointError, ConfigError, EmbeddingError, InputDataError
from gen_align.module_checkpoint import CONFIG_NAME, read_module_config, read_module_weights, save_module
from gen_align.tensors import as_embeddings
from gen_align.train.engine import Engine, OptimizerSettings, settings_identity

__all__ = [
    "RetrievalHead",
    "HeadTrainingHistory",
    "train_head",
    "load_head",
    "check_candidates",
    "RETRIEVAL_HEAD_KINDS",
]

FORMAT = "gen-align-retrieval-head"
_FIX = "re-save the head with head.save_pretrained(directory)"
STATE_FILE = "head_training_state.pt"
RETRIEVAL_HEAD_KINDS = {
    "gare": "gen_align.retrieval.gare:GAREHead",
    "gravi-align": "gen_align.retrieval.gravi_head:GraviAlignHead",
}


class RetrievalHead(nn.Module, abc.ABC):
    """Base of the trainable retrieval heads: a frozen-dataclass ``config`` with ``query_modality`` and
    ``gallery_modality``, a ``training_loss`` over one paired batch, and safetensors + JSON checkpoints."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    accepts_frames: ClassVar[bool] = False  # the gallery may be (N, f, d) frames (GARE)
    config: Any

    @abc.abstractmethod
    def training_loss(
        self,
        queries: torch.Tensor,
        gallery: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {term: value}) on a batch of B paired rows (row i of ``queries`` matches row i of ``gallery``;
        ``gallery`` (B, f, d) frames with a (B, f) ``frame_mask`` for heads that accept frames)."""

    def after_step(self) -> dict[str, float]:
        """Diagnostics of the optimiser step just taken on the last :meth:`training_loss` batch (added to the
        training history's per-epoch terms); none by default."""
        return {}

    # ------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if missing)."""
        config = {
            "format": FORMAT,
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
        }
        return save_module(directory, self, config, training=getattr(self, "training_record", None))

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device | None = None
    ) -> RetrievalHead:
        """Load a directory written by :meth:`save_pretrained` (in eval mode). Called on the base class,
        it builds whichever head kind the config names."""
        directory = Path(directory)
        raw = read_module_config(directory, fmt=FORMAT, what="gen-align retrieval head", fix=_FIX)
        head_cls = _head_class(raw["kind"]) if cls is RetrievalHead else cls
        if raw["kind"] != head_cls.kind:
            raise CheckpointError(
                f"{directory / CONFIG_NAME} holds a {raw['kind']!r} head, not a {head_cls.kind!r} head; "
                "load it with gen_align.retrieval.head_training.load_head(directory)."
            )
        fields = {f.name for f in dataclasses.fields(head_cls.config_class)}
        unknown = sorted(set(raw["config"]) - fields)
        if unknown:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: unknown {head_cls.kind} config keys {unknown}; the checkpoint was written "
                "by another gen-align version — upgrade gen-align or re-save the head."
            )
        try:
            config = head_cls.config_class(**raw["config"])
        except (TypeError, ConfigError) as err:
            raise CheckpointError(f"{directory / CONFIG_NAME}: invalid {head_cls.kind} config: {err}") from err
        head = head_cls(config)
        tensors = read_module_weights(directory, head, what="retrieval head", fix=_FIX)
        dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if len(dtypes) == 1:  # saved in float64 / bfloat16: load in that dtype, bit for bit
            head.to(dtypes.pop())
        head.load_state_dict(tensors)
        head.training_record = raw.get("training")
        head.eval()
        return head.to(device) if device is not None else head


def _head_class(kind: str) -> type[RetrievalHead]:
    if kind not in RETRIEVAL_HEAD_KINDS:
        raise CheckpointError(f"unknown retrieval head kind {kind!r}; known kinds: {sorted(RETRIEVAL_HEAD_KINDS)}.")
    module, name = RETRIEVAL_HEAD_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_head(directory: str | os.PathLike, *, device: str | torch.device | None = None) -> RetrievalHead:
    """Load any retrieval head checkpoint directory; the class is chosen by ``kind`` in its config.json."""
    return RetrievalHead.from_pretrained(directory, device=device)


def check_candidates(candidates: torch.Tensor | np.ndarray, num_queries: int, num_gallery: int) -> torch.Tensor:
    """``candidates`` as a (num_queries, K) LongTensor of gallery indices, or :class:`InputDataError`."""
    candidates = torch.as_tensor(candidates)
    if candidates.ndim != 2 or candidates.shape[0] != num_queries or candidates.shape[1] == 0:
        raise InputDataError(
            f"candidates: expected a ({num_queries}, K) array of gallery indices (one row per query, K ≥ 1), "
            f"got shape {tuple(candidates.shape)}; e.g. cosine_scores(q, g).topk(K).indices."
        )
    if candidates.is_floating_point() or candidates.dtype == torch.bool or candidates.is_complex():
        raise InputDataError(f"candidates: expected integer gallery indices, got dtype {candidates.dtype}.")
    if bool((candidates < 0).any()) or bool((candidates >= num_gallery).any()):
        raise InputDataError(
            f"candidates: indices must lie in [0, {num_gallery}) (the gallery has {num_gallery} items), got "
            f"min {int(candidates.min())}, max {int(candidates.max())}."
        )
    return candidates.long()


# ------------------------------------------------------------------------------------------- training
@dataclass
class HeadTrainingHistory:
    """Per-epoch mean of the loss and of each logged term, optimiser steps and wall time."""

    loss: list[float] = field(default_factory=list)
    terms: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _paired_features(
    head: RetrievalHead, features: Mapping[str, torch.Tensor | np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(features, Mapping):
        raise EmbeddingError(
            f"features: expected a dict {{modality: (N, d)}}, got {type(features).__name__}; "
            f"pass {{{head.config.query_modality!r}: queries, {head.config.gallery_modality!r}: gallery}}."
        )
    q_name, g_name = head.config.query_modality, head.config.gallery_modality
    missing = [m for m in (q_name, g_name) if m not in features]
    if missing:
        raise EmbeddingError(
            f"features has no {missing} entry (it has {sorted(features)}); this head maps {q_name!r} queries to "
            f"{g_name!r} gallery items — rename the keys, or build the head with query_modality/gallery_modality "
            "set to your modality names."
        )
    queries = as_embeddings(features[q_name], f"features[{q_name!r}]", min_batch=2)
    raw_gallery = features[g_name]
    if head.accepts_frames and isinstance(raw_gallery, (torch.Tensor, np.ndarray)) and raw_gallery.ndim == 3:
        gallery = torch.as_tensor(raw_gallery)  # (N, f, d) frames
        if not gallery.is_floating_point() or gallery.shape[0] < 2:
            raise EmbeddingError(
                f"features[{g_name!r}]: expected floating-point (N, f, d) frames with N ≥ 2, got {gallery.dtype} "
                f"of shape {tuple(gallery.shape)}."
            )
    else:
        gallery = as_embeddings(features[g_name], f"features[{g_name!r}]", min_batch=2)
    if queries.shape[0] != gallery.shape[0]:
        raise EmbeddingError(
            f"features: {queries.shape[0]} {q_name} rows but {gallery.shape[0]} {g_name} rows; row i of each must "
            "be one matching pair, so both need the same number of rows."
        )
    for name, x in ((q_name, queries), (g_name, gallery)):
        if not bool(torch.isfinite(x).all()):
            raise EmbeddingError(f"features[{name!r}] holds NaN/inf values; fix or drop those rows before training.")
    return queries, gallery


def train_head(
    head: RetrievalHead,
    features: Mapping[str, torch.Tensor | np.ndarray],
    *,
    frame_mask: torch.Tensor | np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str | torch.device | None = None,
    max_grad_norm: float | None = 1.0,
    checkpoint_dir: str | os.PathLike | None = None,
) -> HeadTrainingHistory:
    """Train ``head`` in place with AdamW on paired cached embeddings; returns the history (head left in eval mode).

    Each epoch draws a seeded permutation and splits it into ceil(N / batch_size) batches of near-equal
    size (never a tiny last batch; at least 2 pairs each). For heads that accept frames (GARE) the gallery
    entry of ``features`` may be (N, f, d) frames, with ``frame_mask`` (N, f, True = a real frame).
    ``seed`` fixes the shuffles and the heads' sampling noise; the initial weights are fixed by the seed in
    force when the head was built.
    ``max_grad_norm`` clips the global gradient norm (None: no clipping). ``device``: default the head's.
    ``checkpoint_dir``: where the training state (``head_training_state.pt``) is written after every epoch and
    resumed from, so a killed run continues from its last finished epoch with the weights of an uninterrupted run.
    The optimisation step is :class:`~gen_align.train.engine.Engine` (AdamW at a constant rate).

    Raises:
        EmbeddingError: features missing, misshaped or non-finite.
        ConfigError: a bad setting (epochs, batch_size, lr, ...).
        TrainingDivergedError: the loss became NaN/inf.
        CheckpointError: the state in ``checkpoint_dir`` is unreadable or from another run.
    """
    epochs = integer(epochs, "epochs")
    batch_size = integer(batch_size, "batch_size", low=2, hint="InfoNCE needs at least one negative per batch.")
    lr = positive(lr, "lr", "(e.g. 1e-3)")
    weight_decay = non_negative(weight_decay, "weight_decay", "(AdamW's default is 0.01)")
    seed = integer(seed, "seed", low=0)
    if max_grad_norm is not None:
        max_grad_norm = positive(max_grad_norm, "max_grad_norm", "(or None for no clipping)")
    queries, gallery = _paired_features(head, features)
    n = queries.shape[0]
    if device is None:
        device = next(head.parameters()).device
    device = torch.device(device)
    dtype = next(head.parameters()).dtype
    head.to(device)
    queries, gallery = queries.to(device=device, dtype=dtype), gallery.to(device=device, dtype=dtype)
    if frame_mask is not None:
        if gallery.ndim != 3:
            raise ConfigError(
                "frame_mask given with (N, d) gallery embeddings; it applies to (N, f, d) frames — pass the "
                f"frames as features[{head.config.gallery_modality!r}], or drop frame_mask."
            )
        frame_mask = torch.as_tensor(frame_mask).to(device)
        if tuple(frame_mask.shape) != tuple(gallery.shape[:2]):
            raise EmbeddingError(
                f"frame_mask: expected shape {tuple(gallery.shape[:2])} (one flag per gallery frame), got "
                f"{tuple(frame_mask.shape)}."
            )
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    n_batches = max(1, min(math.ceil(n / batch_size), n // 2))  # every batch keeps ≥ 2 pairs
    settings = OptimizerSettings(lr, weight_decay, schedule="constant", grad_clip=max_grad_norm)
    engine = Engine(
        head,
        head.parameters(),
        settings,
        epochs * n_batches,
        desc=f"{head.kind} head",
        diverged_hint=f"lower lr (now {lr}) or check the features for extreme values",
    )
    identity = settings_identity(head.config, settings, kind=head.kind, items=n, epochs=epochs, batch_size=batch_size)
    history = HeadTrainingHistory()
    state_path = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir is not None else None
    if state_path is not None and state_path.exists():
        extra = engine.load(state_path, identity=identity)
        order_gen.set_state(extra["order_generator"])
        noise_gen.set_state(extra["noise_generator"])
        history = HeadTrainingHistory(**extra["history"])
    start = time.perf_counter() - history.seconds
    head.train()
    try:
        for _ in range(len(history.loss), epochs):
            total, sums = 0.0, {}
            for idx in torch.tensor_split(torch.randperm(n, generator=order_gen), n_batches):
                idx = idx.to(device)
                loss, logs = head.training_loss(
                    queries[idx],
                    gallery[idx],
                    frame_mask=None if frame_mask is None else frame_mask[idx],
                    generator=noise_gen,
                )
                engine.update(loss)
                total += float(loss.detach())
                for k, v in (logs | head.after_step()).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            history.steps = engine.step
            history.loss.append(total / n_batches)
            history.terms.append({k: v / n_batches for k, v in sums.items()})
            history.seconds = time.perf_counter() - start
            if state_path is not None:
                generators = {"order_generator": order_gen.get_state(), "noise_generator": noise_gen.get_state()}
                engine.save(state_path, identity=identity, extra={**generators, "history": history.to_dict()})
    finally:
        head.eval()
        history.seconds = time.perf_counter() - start
    head.training_record = {
        **identity,
        "steps": history.steps,
        "final_loss": history.loss[-1] if history.loss else None,
    }
    return history
