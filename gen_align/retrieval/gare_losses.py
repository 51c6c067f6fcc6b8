"""GARE's regularisers of the increments Δ (gare.txt, rebuttal: "Q3: Role of IB loss", "Q1: Error Analysis").

Shapes: Δ is (a, b, d) — a queries × b gallery items × d; the anchor r is the side Δ is added to.

    L_IB  = 1/(b d) Σ_j KL(N(μ_j, diag σ_j²) ‖ N(0, I)),  μ_j = mean_i Δ_ij,  σ_j = std_i Δ_ij  (video-conditioned VIB,
                                                                                          per dimension)
    L_ε   = 1/(ab) Σ_ij max(0, ‖Δ_ij‖ / ‖r‖ − ρ)²                                            (trust region)
    L_dir = mean over anchors of the mean cosine between the anchor's increments to different partners
                                                                                         (directional diversity)

The paper's main text (not in ``../shared/papers``) names L_ε and L_dir without their formulas; the forms here
are derived from what the rebuttal says of them — see :mod:`gen_align.retrieval.gare` for the reasoning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_kl",
    "video_conditioned_kl",
    "trust_region_penalty",
    "directional_diversity",
    "gap_alignment_penalty",
    "VARIANCE_FLOOR",
]

VARIANCE_FLOOR = 1e-6  # σ² below this counts as this in log σ² (an increment constant over the batch's queries)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_k (μ_k² + σ_k² − 1 − log σ_k²), summed over the last dimension."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def video_conditioned_kl(delta: torch.Tensor) -> torch.Tensor:
    """L_IB of the rebuttal's approximation p(Δ_ij | t_i, v_j) ≈ p(Δ_ij | v_j) ≈ N(μ_j, σ_j²): the batch's
    queries i are the Monte Carlo draws of each gallery item j's increment distribution.

    ``delta`` (a, b, d) with a ≥ 2; μ_j and σ_j² are the mean and the unbiased variance over i; σ² is floored at
    :data:`VARIANCE_FLOOR` inside the log. Returns the KL to N(0, I) per dimension (its sum over d, / d), averaged
    over j: a scalar.

    Per dimension, not summed: the rebuttal's MSR-VTT increments (‖Δ‖ ≈ 3.31 in 512-d, RMS ≈ 0.15 per dimension)
    cost ≈ 1.4 nats per dimension; summed over 512 dimensions at β = 0.07 that is ≈ 51, an order of magnitude above
    the InfoNCE it regularises, which would not let Δ stay that small; per dimension it is ≈ 0.1 — the paper's
    "relaxed compression"."""
    mu = delta.mean(dim=0)
    var = delta.var(dim=0, correction=1)
    logvar = var.clamp_min(VARIANCE_FLOOR).log()
    return (0.5 * (mu.square() + var - 1.0 - logvar)).mean()


def trust_region_penalty(delta: torch.Tensor, anchor_norm: torch.Tensor, radius: float) -> torch.Tensor:
    """L_ε per increment: max(0, ‖Δ‖ / ‖r‖ − ρ)², the squared excess of the increment's length, relative to its
    anchor's, over the trust radius ρ. ``anchor_norm`` broadcasts against ``delta``'s leading dimensions."""
    return F.relu(torch.linalg.vector_norm(delta, dim=-1) / anchor_norm - radius).square()


def directional_diversity(delta: torch.Tensor, anchor_dim: int) -> torch.Tensor:
    """L_dir: for each anchor (index ``anchor_dim`` of the (a, b, d) ``delta``: 0 = the queries, 1 = the gallery
    items), the mean cosine between its increments towards two different partners,
    1/(n(n−1)) Σ_{j≠k} cos(Δ_ij, Δ_ik) = (‖Σ_j Δ̂_ij‖² − n) / (n(n−1)) with Δ̂ = Δ/‖Δ‖ (0 for Δ = 0), n partners;
    averaged over anchors. Low when an anchor's increments point in different directions; 1 when they are one
    shared shift (a global translation, which only moves the modality gap)."""
    units = F.normalize(delta, dim=-1)
    partner_dim = 1 - anchor_dim
    n = delta.shape[partner_dim]
    resultant = units.sum(dim=partner_dim).square().sum(dim=-1)
    nonzero = (torch.linalg.vector_norm(delta, dim=-1) > 0).sum(dim=partner_dim)
    return ((resultant - nonzero) / (n * (n - 1))).mean()


def gap_alignment_penalty(delta: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """The earlier variant of L_dir (``direction="gap"``), per increment: ‖Δ‖ − ⟨Δ, g/‖g‖⟩ = ‖Δ‖ (1 − cos(Δ, g));
    0 iff Δ = 0 or Δ points along the gap g (a zero gap has no direction and counts as ĝ = 0)."""
    gap_norm = torch.linalg.vector_norm(gap, dim=-1, keepdim=True)
    direction = torch.where(gap_norm > 0, gap / gap_norm.clamp_min(torch.finfo(gap.dtype).tiny), 0.0)
    return torch.linalg.vector_norm(delta, dim=-1) - (delta * direction).sum(dim=-1)
