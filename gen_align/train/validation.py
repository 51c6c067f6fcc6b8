"""Per-epoch validation: cross-modal R@1 through the heads and the geometry diagnostics of the space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gen_align.diagnostics import conflict_metrics, holder_divergence, modality_gap

DIAGNOSTIC_ITEMS = 1024  # O(N²) estimates on at most this many validation items


def recall_at_1(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """Fraction of queries whose paired gallery item (same row) has the highest cosine; ties count as
    misses unless the paired item is the first maximum (pessimistic ranking)."""
    sim = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    own = sim.diagonal().unsqueeze(1)
    better = (sim > own).sum(1)
    return float((better == 0).float().mean())


def validation_metrics(z: dict[str, torch.Tensor], anchor: str, tau: float) -> dict[str, float]:
    """R@1 anchor→m and m→anchor for every other modality m, plus ζ/χ, Hölder divergence and modality gap."""
    metrics: dict[str, float] = {}
    for m, zm in z.items():
        if m == anchor:
            continue
        metrics[f"R@1/{anchor}->{m}"] = recall_at_1(z[anchor], zm)
        metrics[f"R@1/{m}->{anchor}"] = recall_at_1(zm, z[anchor])
    subset = {m: v[:DIAGNOSTIC_ITEMS] for m, v in z.items()}
    if next(iter(subset.values())).shape[0] >= 2:
        conflict = conflict_metrics(subset, anchor=anchor, tau=tau)
        metrics.update({f"conflict/{k}": v for k, v in conflict.items() if math.isfinite(v)})  # μ̄ is NaN for M = 2
        metrics["holder_divergence"] = float(holder_divergence(subset, tau=tau, anchor=anchor))
        metrics.update({f"gap/{k}": v for k, v in modality_gap(subset).items()})
    return metrics
