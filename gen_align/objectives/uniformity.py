"""Intra-modality uniformity U(Z) (Eq. 9, Euclidean; Eq. 14, geodesic) and centroid uniformity U(C) (Eq. 11)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from gen_align.checks import choice, positive
from gen_align.objectives.geometry import self_gram, squared_arccos
from gen_align.tensors import (
    as_embeddings,
    at_least_float32,
    check_embedding_dict,
    normalized_weights,
    unit,
    unit_dict,
)

KERNELS = ("euclidean", "geodesic")
REDUCTIONS = ("sample", "global")


def check_kernel(kernel: str, name: str = "kernel") -> None:
    choice(kernel, name, KERNELS)


def check_reduction(reduction: str) -> None:
    choice(reduction, "reduction", REDUCTIONS)


def check_tau(tau: float, name: str = "tau") -> float:
    return positive(tau, name, "(the paper's τ, e.g. 0.07)")


def squared_distance_from_cosine(cos: torch.Tensor, kernel: str) -> torch.Tensor:
    """δ² between unit vectors from their cosine: ‖x − y‖² = 2 − 2 cos (Eq. 9, 10), arccos(cos)² (Eq. 14)."""
    if kernel == "geodesic":
        return squared_arccos(cos)
    return (2.0 - 2.0 * cos).clamp_min(0.0)


class _EuclideanUniformity(torch.autograd.Function):
    """Eq. 9 on unit rows as one fused op. On the sphere −‖z_i − z_j‖²/(2τ²) = (⟨z_i, z_j⟩ − 1)/τ², so the
    kernel logits are one GEMM with the scale 1/τ² inside. ``per_sample`` (the paper): a log-sum-exp per row;
    backward ∂U/∂z = (1/(Bτ²)) (P + Pᵀ) z with P the row softmax (the p_ij after Eq. 9). ``global``: one
    log-sum-exp over all pairs; backward (2/τ²) W z / ΣW. One B×B GEMM each way."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float, per_sample: bool) -> torch.Tensor:  # noqa: ANN001
        b = z.shape[0]
        scale = 1.0 / (tau * tau)
        gram = torch.addmm(z.new_zeros(()), z, z.mT, beta=0.0, alpha=scale)  # the scale rides in the GEMM
        logits = at_least_float32(gram).fill_diagonal_(float("-inf"))
        ctx.scale, ctx.per_sample = scale, per_sample
        if per_sample:
            shift = logits.amax(dim=1, keepdim=True)
            weights = logits.sub_(shift).exp_()  # the diagonal is exp(−inf) = 0
            totals = weights.sum(dim=1, keepdim=True)
            ctx.save_for_backward(z, weights, totals)
            return (shift + totals.log()).mean() - scale - math.log(b - 1)
        shift = logits.max()
        weights = logits.sub_(shift).exp_()
        total = weights.sum()
        ctx.save_for_backward(z, weights, total)
        return shift + total.log() - scale - math.log(b * (b - 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        z, weights, totals = ctx.saved_tensors
        if ctx.per_sample:
            softmax = weights / totals  # P, row-stochastic
            pairs = softmax + softmax.mT
            coefficient = grad * ctx.scale / z.shape[0]
        else:
            pairs = weights  # symmetric
            coefficient = grad * 2.0 * ctx.scale / totals
        coefficient = coefficient.to(z.dtype)
        if z.shape[0] <= z.shape[1]:  # scale the smaller of the B×B weights and the B×d result
            return (pairs.to(z.dtype) * coefficient) @ z, None, None
        return (pairs.to(z.dtype) @ z).mul_(coefficient), None, None


def uniformity_of_unit(z: torch.Tensor, tau: float, kernel: str, reduction: str = "sample") -> torch.Tensor:
    """U(Z) for already L2-normalised rows (B ≥ 2): one B×B product and a masked log-sum-exp."""
    if kernel == "euclidean":
        return _EuclideanUniformity.apply(z, tau, reduction == "sample")
    b = z.shape[0]
    logits = (-squared_arccos(at_least_float32(self_gram(z))) / (2.0 * tau * tau)).fill_diagonal_(float("-inf"))
    if reduction == "sample":
        return torch.logsumexp(logits, dim=1).mean() - math.log(b - 1)
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(b * (b - 1))


def uniformity(
    z: torch.Tensor, tau: float = 0.07, kernel: str = "euclidean", reduction: str = "sample"
) -> torch.Tensor:
    """Intra-modality uniformity (Eq. 9; geodesic kernel Eq. 14) of the L2-normalised rows z_i:

        U(Z) = 1/B Σ_i log( 1/(B−1) Σ_{j≠i} κ(z_i, z_j) ),  κ = exp(−δ(z_i, z_j)² / (2τ²)),
        δ = ‖z_i − z_j‖ (Euclidean, Eq. 9) or arccos⟨z_i, z_j⟩ (geodesic, Eq. 14).

    Lower is more uniform. ``reduction="global"`` is an extension beyond the paper: the log of the mean kernel
    over all pairs, log( 1/(B(B−1)) Σ_{i≠j} κ ) (Wang & Isola's form), whose gradient at small τ reaches only
    the closest pairs. Needs B ≥ 2 (a single item has no pair).
    """
    check_kernel(kernel)
    check_reduction(reduction)
    check_tau(tau)
    z = as_embeddings(z, name="z", min_batch=2)
    return uniformity_of_unit(unit(z), tau, kernel, reduction)


def weighted_centroids(units: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """c_i = Σ_m w_m z_i^m / ‖Σ_m w_m z_i^m‖ over unit vectors (Eq. 11)."""
    total = sum(weights[m] * z for m, z in units.items() if weights[m] > 0)
    return unit(total, name="centroid")


def centroid_uniformity(
    z_dict: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    tau: float = 0.07,
    kernel: str = "euclidean",
    reduction: str = "sample",
) -> torch.Tensor:
    """Tuple-level uniformity U(C) (Eq. 11–12): Eq. 9 (or 14) applied to the centroids
    c_i = Σ_m w_m z_i^m / ‖Σ_m w_m z_i^m‖, w_m ≥ 0, Σ_m w_m = 1 (uniform 1/M by default; weights that do not
    sum to 1 are normalised, which leaves c_i unchanged). ``tau`` is τ_ctr of Table 5."""
    check_kernel(kernel)
    check_reduction(reduction)
    check_tau(tau)
    z_dict = check_embedding_dict(z_dict, min_modalities=1, min_batch=2)
    w = normalized_weights(weights, list(z_dict), what="centroid weights")
    return uniformity_of_unit(weighted_centroids(unit_dict(z_dict), w), tau, kernel, reduction)
