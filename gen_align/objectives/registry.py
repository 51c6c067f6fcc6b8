"""Registry of training objectives: ``get_objective(name, **hparams)(z_dict) -> (loss, logs)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gen_align.checks import choice
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.objectives.gram import check_label_smoothing, gram_loss
from gen_align.objectives.infonce import infonce_loss, parse_pair
from gen_align.objectives.transport import local_covariance_loss, sinkhorn_ot_loss
from gen_align.objectives.unialign import check_unialign_options, unialign_loss, unialign_terms, weighted_sum
from gen_align.objectives.uniformity import check_tau
from gen_align.tensors import check_weight_table

Logs = dict[str, torch.Tensor]
ObjectiveFn = Callable[..., tuple[torch.Tensor, Logs]]

OBJECTIVES_VERSION = 2
"""The convention every recorded objective setting is in. 1: gen-align before the paper's equations (kernel
exp(−‖·‖²/τ), global-mean uniformity averaged over modalities); 2: the paper's Eq. 1–14 with its τ."""

TASK_PRESETS: dict[str, dict[str, float]] = {"generation": {"lambda_vol": 0.1}, "retrieval": {"lambda_vol": 1.0}}
"""UniAlign's λ per task (Appendix F: all λ = 1 for retrieval, λ_vol = 0.1 for generation)."""


def _signature_defaults(fn: Callable[..., Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """The keyword defaults of ``fn``: the plain functions are the one source of every registry default."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip and p.default is not inspect.Parameter.empty
    }


def _unialign(z_dict: Mapping[str, torch.Tensor], task: str, **hp: Any) -> tuple[torch.Tensor, Logs]:
    terms = unialign_terms(z_dict, **hp)
    loss = weighted_sum(terms, hp)
    return loss, {name: value.detach() for name, value in terms.items()}


def _infonce(z_dict: Mapping[str, torch.Tensor], pair_weights: Any, **hp: Any) -> tuple[torch.Tensor, Logs]:
    loss = infonce_loss(z_dict, weights=pair_weights, **hp)
    return loss, {"infonce": loss.detach()}


class LearnableTemperature(nn.Module):
    """A trained softmax temperature τ (GRAM's ``contra_temp``: a parameter initialised at 0.07, the logits
    divided by it). Clamped at ``floor`` in use, a guard that only acts where the published form would divide
    by a non-positive number."""

    def __init__(self, init: float, floor: float = 1e-3) -> None:
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(init)))
        self.floor = floor

    def forward(self) -> torch.Tensor:
        return self.tau.clamp_min(self.floor)


def _gram(
    z_dict: Mapping[str, torch.Tensor],
    query: str,
    tau: float,
    label_smoothing: float,
    learnable_tau: bool,
    state: nn.Module | None = None,
) -> tuple[torch.Tensor, Logs]:
    if query not in z_dict or len(z_dict) < 2:
        raise EmbeddingError(
            f"the GRAM objective contrasts the query modality {query!r} with tuples of the others; "
            f"got modalities {sorted(z_dict)}. Pass query=<one of them> and at least one other modality."
        )
    temperature = state() if state is not None else tau
    others = [z for m, z in z_dict.items() if m != query]
    loss = gram_loss(z_dict[query], others, tau=temperature, label_smoothing=label_smoothing)
    logs = {"gram": loss.detach()}
    if state is not None:
        logs["tau"] = temperature.detach()
    return loss, logs


def _geo_ot(
    z_dict: Mapping[str, torch.Tensor],
    anchor: str,
    tau: float,
    lambda_ot: float,
    eps: float,
    iters: int,
    tol: float,
    lambda_cov: float,
    k: int,
    ridge: float,
) -> tuple[torch.Tensor, Logs]:
    if anchor not in z_dict:
        raise EmbeddingError(f"anchor modality {anchor!r} is missing from the batch {sorted(z_dict)}.")
    contrastive = infonce_loss(z_dict, tau=tau, reduction="mean")  # the proposal's 1/N form
    others = [z for m, z in z_dict.items() if m != anchor]
    logs = {"infonce": contrastive.detach()}
    loss = contrastive
    if lambda_ot > 0:
        ot = torch.stack([sinkhorn_ot_loss(z, z_dict[anchor], eps=eps, iters=iters, tol=tol) for z in others]).mean()
        logs["sinkhorn_ot"] = ot.detach()
        loss = loss + lambda_ot * ot
    if lambda_cov > 0:
        cov = torch.stack([local_covariance_loss(z_dict[anchor], z, k=k, ridge=ridge) for z in others]).mean()
        logs["local_covariance"] = cov.detach()
        loss = loss + lambda_cov * cov
    return loss, logs


_UNIALIGN_DEFAULTS = {
    **_signature_defaults(unialign_loss, skip=("z_dict",)),
    "uniformity_kernel": "euclidean",
    "alignment_metric": "euclidean",
    "task": "generation",
}
_UNIALIGN_DEFAULTS["lambda_vol"] = TASK_PRESETS["generation"]["lambda_vol"]
_INFONCE_DEFAULTS = {"pair_weights": None, **_signature_defaults(infonce_loss, skip=("z_dict", "weights"))}
_GRAM_DEFAULTS = {"query": "text", **_signature_defaults(gram_loss, skip=("text", "others")), "learnable_tau": True}

_REGISTRY: dict[str, tuple[ObjectiveFn, dict[str, Any], str]] = {
    "unialign": (_unialign, _UNIALIGN_DEFAULTS, "UniAlign (Eq. 13), Euclidean uniformity and alignment (Eq. 9-10)"),
    "unialign-geodesic": (
        _unialign,
        {**_UNIALIGN_DEFAULTS, "uniformity_kernel": "geodesic", "alignment_metric": "geodesic"},
        "UniAlign with geodesic uniformity and alignment on the sphere (Eq. 13-14, Table 4)",
    ),
    "infonce": (_infonce, _INFONCE_DEFAULTS, "multi-modal InfoNCE over ordered pairs (Eq. 1)"),
    "gram": (_gram, _GRAM_DEFAULTS, "GRAM volume-contrastive loss as published (label smoothing, learnable tau)"),
    "geo-ot": (
        _geo_ot,
        {
            "anchor": "image",
            "tau": 0.07,
            "lambda_ot": 1.0,
            "eps": 0.05,
            "iters": 100,
            "tol": 0.0,  # a fixed number of Sinkhorn iterations per step, as usual in training
            "lambda_cov": 0.1,
            "k": 10,
            "ridge": 1e-3,
        },
        "InfoNCE + Sinkhorn OT to the anchor + local-covariance divergence (Geometric Alignment)",
    ),
}


@dataclass(frozen=True)
class Objective:
    """A configured objective: call it on a ``{modality: (B, d)}`` batch to get ``(loss, logs)``;
    ``logs`` holds detached scalar tensors (no device sync until the trainer logs them). ``state`` holds the
    objective's own learnable parameters (GRAM's temperature), or None: a trainer optimises and checkpoints
    it with the heads."""

    name: str
    fn: ObjectiveFn
    hparams: dict[str, Any] = field(default_factory=dict)
    state: nn.Module | None = None

    def __call__(self, z_dict: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        if self.state is not None:
            return self.fn(z_dict, state=self.state, **self.hparams)
        return self.fn(z_dict, **self.hparams)

    def record(self) -> dict[str, Any]:
        """The settings to store beside what was trained with it: name, convention version, hyperparameters
        (and the learned temperature)."""
        out: dict[str, Any] = {"name": self.name, "version": OBJECTIVES_VERSION, **self.hparams}
        if self.state is not None:
            out["learned_tau"] = float(self.state().detach())
        return out


def list_objectives() -> dict[str, dict[str, Any]]:
    """Registered names with their default hyperparameters and a one-line description."""
    table = {name: {"description": doc, "defaults": dict(defaults)} for name, (_, defaults, doc) in _REGISTRY.items()}
    for name, (fn, _, _) in _REGISTRY.items():
        if fn is _unialign:
            table[name]["task_presets"] = {task: dict(values) for task, values in TASK_PRESETS.items()}
    return table


def _resolve_unialign(defaults: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """The task preset sets λ_vol unless it is given; ``geometry`` replaces the preset's two design choices."""
    task = hparams.get("task", defaults["task"])
    choice(task, "task", tuple(TASK_PRESETS))
    resolved = {**defaults, **TASK_PRESETS[task], **hparams}
    if hparams.get("geometry") is not None:
        for name in ("uniformity_kernel", "alignment_metric"):
            resolved[name] = hparams.get(name)
    options = {k: v for k, v in resolved.items() if k not in ("anchor", "weights", "task")}
    check_unialign_options(**options)  # a bad τ, λ or design choice is refused here, not at the first step
    if resolved["weights"] is not None:
        check_weight_table(resolved["weights"], "centroid weights w_m")
    return resolved


def _resolve_infonce(defaults: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    resolved = _resolve_tau(defaults, hparams)
    if resolved["pair_weights"] is not None:
        check_weight_table(resolved["pair_weights"], "InfoNCE pair weights w_mn")
        for key in resolved["pair_weights"]:
            parse_pair(key)
    return resolved


def _resolve_gram(defaults: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    resolved = _resolve_tau(defaults, hparams)
    check_label_smoothing(resolved["label_smoothing"])
    return resolved


def _resolve_tau(defaults: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    resolved = {**defaults, **hparams}
    check_tau(resolved["tau"])
    return resolved


_RESOLVERS = {_unialign: _resolve_unialign, _infonce: _resolve_infonce, _gram: _resolve_gram, _geo_ot: _resolve_tau}
"""Per objective family: the defaults merged with the overrides, each value checked before any training step."""


def get_objective(name: str, **hparams: Any) -> Objective:
    """A configured training objective by registry name.

    Args:
        name: "unialign", "unialign-geodesic", "infonce", "gram" or "geo-ot" (:func:`list_objectives`).
        hparams: overrides of the defaults, validated by name and value. UniAlign takes ``task="generation" |
            "retrieval"`` (λ_vol 0.1 or 1 unless ``lambda_vol`` is given); GRAM's ``learnable_tau`` gives the
            objective a trainable temperature (``Objective.state``) initialised at ``tau``.

    Returns:
        an :class:`Objective`: ``objective(z_dict) -> (loss, logs)``.

    Raises:
        ConfigError: an unknown name or hyperparameter, or a bad value.

    Example:
        >>> import torch
        >>> from gen_align.objectives import get_objective
        >>> objective = get_objective("unialign", task="retrieval")
        >>> objective.hparams["lambda_vol"], objective.hparams["tau"]
        (1.0, 0.07)
        >>> z = {m: torch.randn(8, 16) for m in ("image", "text", "audio")}
        >>> loss, logs = objective(z)
        >>> sorted(k for k in logs if "/" not in k)
        ['alignment', 'centroid_uniformity', 'uniformity', 'volume']
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown objective {name!r}; choose one of {sorted(_REGISTRY)}.")
    fn, defaults, _ = _REGISTRY[name]
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise ConfigError(f"objective {name!r} has no hyperparameter(s) {unknown}; valid: {sorted(defaults)}.")
    resolved = _RESOLVERS[fn](defaults, hparams)
    state = LearnableTemperature(resolved["tau"]) if fn is _gram and resolved["learnable_tau"] else None
    return Objective(name=name, fn=fn, hparams=resolved, state=state)
