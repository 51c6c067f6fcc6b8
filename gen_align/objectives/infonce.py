"""Multi-modal InfoNCE over all ordered modality pairs (Eq. 1)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from gen_align.objectives.uniformity import check_tau
from gen_align.tensors import at_least_float32, check_embedding_dict, normalized_weights, unit_dict

Pair = tuple[str, str]


def pair_weights(modalities: list[str], weights: Mapping[Pair, float] | None) -> dict[Pair, float]:
    """Weights over ordered pairs (query, key), default uniform; normalised to sum 1."""
    pairs = list(itertools.permutations(modalities, 2))
    return normalized_weights(weights, pairs, what="InfoNCE pair weights")


def infonce_loss(
    z_dict: Mapping[str, torch.Tensor],
    weights: Mapping[Pair, float] | None = None,
    tau: float = 0.07,
) -> torch.Tensor:
    """Multi-modal InfoNCE (Eq. 1) over all ordered pairs (m, n), m ≠ n, on L2-normalised rows:

        L = Σ_{m≠n} w_mn · 1/B Σ_i −log [ exp(⟨z_i^m, z_i^n⟩/τ) / Σ_j exp(⟨z_i^m, z_j^n⟩/τ) ],

    weights ``{(m, n): w}`` over ordered pairs (missing pairs get 0), uniform by default, normalised to
    sum 1. For two modalities this is the symmetric CLIP loss. One B×B similarity matrix per unordered
    pair serves both directions (rows: m→n, columns: n→m).
    """
    check_tau(tau)
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
    return torch.stack(terms).sum()
