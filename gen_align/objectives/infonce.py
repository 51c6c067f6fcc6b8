"""Multi-modal InfoNCE over all ordered modality pairs (Eq. 1)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from gen_align.checks import choice
from gen_align.errors import ConfigError
from gen_align.objectives.uniformity import check_tau
from gen_align.tensors import (
    at_least_float32,
    check_embedding_dict,
    check_weight_table,
    normalized_weights,
    unit_dict,
)

Pair = tuple[str, str]
INFONCE_REDUCTIONS = ("sum", "mean")


def parse_pair(key: Pair | str) -> Pair:
    """An ordered pair from ``("text", "image")`` or its config spelling ``"text->image"``."""
    if isinstance(key, str):
        query, sep, target = key.partition("->")
        if not sep or not query.strip() or not target.strip():
            raise ConfigError(f"pair weight key {key!r} must look like 'text->image' (query->key modality).")
        return query.strip(), target.strip()
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return key
    raise ConfigError(f"pair weight key {key!r} must be a (query, key) tuple of modality names or 'query->key'.")


def pair_weights(modalities: list[str], weights: Mapping[Pair | str, float] | None) -> dict[Pair, float]:
    """Weights w_mn over ordered pairs (m, n), default 1 for every pair, normalised to sum 1 (the 1/Σ w_mn of
    Eq. 1); keys are tuples or "m->n" strings, missing pairs weigh 0."""
    pairs = list(itertools.permutations(modalities, 2))
    if weights is not None:
        check_weight_table(weights, "InfoNCE pair weights w_mn")
        parsed: dict[Pair, float] = {}
        for key, value in weights.items():
            pair = parse_pair(key)
            if pair in parsed:
                raise ConfigError(f"pair weight {pair[0]}->{pair[1]} is given twice.")
            parsed[pair] = value
        weights = parsed
    return normalized_weights(weights, pairs, what="InfoNCE pair weights w_mn")


def infonce_loss(
    z_dict: Mapping[str, torch.Tensor],
    weights: Mapping[Pair | str, float] | None = None,
    tau: float = 0.07,
    reduction: str = "sum",
) -> torch.Tensor:
    """Multi-modal InfoNCE (Eq. 1) over all ordered pairs (m, n), m ≠ n, on L2-normalised rows:

        L = −1/(Σ_{m≠n} w_mn) Σ_{i=1}^B Σ_{m≠n} w_mn log [ exp(⟨z_i^m, z_i^n⟩/τ) / Σ_k exp(⟨z_i^m, z_k^n⟩/τ) ].

    Args:
        z_dict: paired ``{modality: (B, d)}`` embeddings, M ≥ 2.
        weights: w_mn ``{(m, n) or "m->n": w}`` over ordered pairs (missing pairs weigh 0), default all 1.
        tau: the softmax temperature (0.07, CLIP's).
        reduction: "sum" — Eq. 1 as printed, a sum over the B samples; "mean" divides by B (CLIP's
            per-sample mean, independent of the batch size; what the Geometric Alignment proposal writes).

    For two modalities and reduction="mean" this is the symmetric CLIP loss. One B×B similarity matrix per
    unordered pair serves both directions (rows: m→n, columns: n→m).
    """
    check_tau(tau)
    choice(reduction, "reduction", INFONCE_REDUCTIONS)
    z_dict = check_embedding_dict(z_dict, min_modalities=2, min_batch=1)
    units = unit_dict(z_dict)
    w = pair_weights(list(units), weights)
    b = next(iter(units.values())).shape[0]
    targets = torch.arange(b, device=next(iter(units.values())).device)
    terms = []
    for m, n in itertools.combinations(units, 2):
        if w[(m, n)] == 0 and w[(n, m)] == 0:
            continue
        logits = at_least_float32(units[m] @ units[n].mT) / tau
        if w[(m, n)] > 0:
            terms.append(w[(m, n)] * F.cross_entropy(logits, targets))
        if w[(n, m)] > 0:
            terms.append(w[(n, m)] * F.cross_entropy(logits.mT, targets))
    mean = torch.stack(terms).sum()
    return mean * b if reduction == "sum" else mean
