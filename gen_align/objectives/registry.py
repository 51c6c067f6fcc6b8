"""Registry of training objectives: ``get_objective(name, **hparams)(z_dict) -> (loss, logs)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gen_align.errors import ConfigError, EmbeddingError
from gen_align.objectives.gram import gram_loss
from gen_align.objectives.infonce import infonce_loss
from gen_align.objectives.transport import local_covariance_loss, sinkhorn_ot_loss
from gen_align.objectives.unialign import TERM_LAMBDAS, unialign_terms

Logs = dict[str, torch.Tensor]
ObjectiveFn = Callable[..., tuple[torch.Tensor, Logs]]


def _unialign(z_dict: Mapping[str, torch.Tensor], **hp: Any) -> tuple[torch.Tensor, Logs]:
    terms = unialign_terms(z_dict, **hp)
    loss = torch.stack([hp[TERM_LAMBDAS[name]] * value for name, value in terms.items()]).sum()
    return loss, {name: value.detach() for name, value in terms.items()}


def _infonce(z_dict: Mapping[str, torch.Tensor], **hp: Any) -> tuple[torch.Tensor, Logs]:
    loss = infonce_loss(z_dict, **hp)
    return loss, {"infonce": loss.detach()}


def _gram(z_dict: Mapping[str, torch.Tensor], query: str, tau: float) -> tuple[torch.Tensor, Logs]:
    if query not in z_dict or len(z_dict) < 2:
        raise EmbeddingError(
            f"the GRAM objective contrasts the query modality {query!r} with tuples of the others; "
            f"got modalities {sorted(z_dict)}. Pass query=<one of them> and at least one other modality."
        )
    loss = gram_loss(z_dict[query], [z for m, z in z_dict.items() if m != query], tau=tau)
    return loss, {"gram": loss.detach()}


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
    contrastive = infonce_loss(z_dict, tau=tau)
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
    "anchor": "image",
    "lambda_uni": 1.0,
    "lambda_align": 1.0,
    "lambda_vol": 1.0,
    "tau": 0.07,
    "tau_ctr": None,
    "geometry": "euclidean",
}

_REGISTRY: dict[str, tuple[ObjectiveFn, dict[str, Any], str]] = {
    "unialign": (_unialign, _UNIALIGN_DEFAULTS, "UniAlign, Euclidean kernel (Eq. 13)"),
    "unialign-geodesic": (
        _unialign,
        {**_UNIALIGN_DEFAULTS, "geometry": "geodesic"},
        "UniAlign with the geodesic (arccos) kernel (Eq. 13-14)",
    ),
    "infonce": (_infonce, {"tau": 0.07, "weights": None}, "multi-modal InfoNCE over ordered pairs (Eq. 1)"),
    "gram": (_gram, {"query": "text", "tau": 0.07}, "GRAM volume-contrastive loss"),
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
    ``logs`` holds detached scalar tensors (no device sync until the trainer logs them)."""

    name: str
    fn: ObjectiveFn
    hparams: dict[str, Any] = field(default_factory=dict)

    def __call__(self, z_dict: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        return self.fn(z_dict, **self.hparams)


def list_objectives() -> dict[str, dict[str, Any]]:
    """Registered names with their default hyperparameters and a one-line description."""
    return {name: {"description": doc, "defaults": dict(defaults)} for name, (_, defaults, doc) in _REGISTRY.items()}


def get_objective(name: str, **hparams: Any) -> Objective:
    """Configured training objective by registry name ("unialign", "unialign-geodesic", "infonce", "gram",
    "geo-ot"); ``hparams`` override the defaults and are validated by name."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown objective {name!r}; choose one of {sorted(_REGISTRY)}.")
    fn, defaults, _ = _REGISTRY[name]
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise ConfigError(f"objective {name!r} has no hyperparameter(s) {unknown}; valid: {sorted(defaults)}.")
    return Objective(name=name, fn=fn, hparams={**defaults, **hparams})
