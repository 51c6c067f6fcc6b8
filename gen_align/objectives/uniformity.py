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


def check_kernel(kernel: str) -> None:
    choice(kernel, "kernel/geometry", KERNELS)


def check_tau(tau: float, name: str = "tau") -> float:
    return positive(tau, name, "(e.g. 0.07)")


def squared_distance_from_cosine(cos: torch.Tensor, kernel: str) -> torch.Tensor:
    """δ² between unit vectors from their cosine: ‖x − y‖² = 2 − 2 cos (Eq. 9), arccos(cos)² (Eq. 14)."""
    if kernel == "geodesic":
        return squared_arccos(cos)
    return (2.0 - 2.0 * cos).clamp_min(0.0)


class _EuclideanUniformity(torch.autograd.Function):
    """Eq. 9 on unit rows as one fused op. Logits (2/τ)⟨z_i, z_j⟩ equal −‖z_i − z_j‖²/τ + 2/τ on the sphere;
    the backward is the closed form after Eq. 9 up to a radial term that the normalisation removes:
    ∂U/∂z = (4/τ) W z with W the pair weights — one B×B product forward, one backward, no other B×B pass
    but the exponentials."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float) -> torch.Tensor:  # noqa: ANN001
        b = z.shape[0]
        gram = torch.addmm(z.new_zeros(()), z, z.mT, beta=0.0, alpha=2.0 / tau)  # the scale rides in the GEMM
        logits = at_least_float32(gram).fill_diagonal_(float("-inf"))
        shift = logits.max()
        weights = logits.sub_(shift).exp_()  # unnormalised W; the diagonal is exp(−inf) = 0
        total = weights.sum()
        ctx.save_for_backward(z, weights, total)
        ctx.scale = 4.0 / tau
        return shift + total.log() - (2.0 / tau + math.log(b * (b - 1)))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        z, weights, total = ctx.saved_tensors
        coefficient = (grad * ctx.scale / total).to(z.dtype)
        if z.shape[0] <= z.shape[1]:  # scale the smaller of the B×B weights and the B×d result
            return (weights.to(z.dtype) * coefficient) @ z, None
        return (weights.to(z.dtype) @ z).mul_(coefficient), None


def uniformity_of_unit(z: torch.Tensor, tau: float, kernel: str) -> torch.Tensor:
    """U(Z) for already L2-normalised rows (B ≥ 2): one B×B product and one masked log-sum-exp."""
    if kernel == "euclidean":
        return _EuclideanUniformity.apply(z, tau)
    b = z.shape[0]
    logits = (-squared_arccos(at_least_float32(self_gram(z))) / tau).fill_diagonal_(float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(b * (b - 1))


def uniformity(z: torch.Tensor, tau: float = 0.07, kernel: str = "euclidean") -> torch.Tensor:
    """Intra-modality uniformity (Eq. 9; geodesic kernel Eq. 14) on L2-normalised rows z_i:

        U(Z) = log [ 1/(B(B−1)) Σ_{i≠j} exp(−δ(z_i, z_j)² / τ) ],  δ = ‖z_i − z_j‖  or  arccos⟨z_i, z_j⟩.

    Lower is more uniform. Gradient (Euclidean, w.r.t. the normalised rows, the closed form after Eq. 9):
    ∂U/∂z_k = −(4/τ) Σ_{j≠k} w_kj (z_k − z_j), w_kj = exp(−‖z_k − z_j‖²/τ) / Σ_{i≠j} exp(−‖z_i − z_j‖²/τ).
    Needs B ≥ 2 (a single item has no pair).
    """
    check_kernel(kernel)
    check_tau(tau)
    z = as_embeddings(z, name="z", min_batch=2)
    return uniformity_of_unit(unit(z), tau, kernel)


def weighted_centroids(units: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """c_i = normalise(Σ_m w_m z_i^m) over unit vectors (Eq. 11)."""
    total = sum(weights[m] * z for m, z in units.items() if weights[m] > 0)
    return unit(total, name="centroid")


def centroid_uniformity(
    z_dict: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    tau: float = 0.07,
    kernel: str = "euclidean",
) -> torch.Tensor:
    """Tuple-level uniformity U(C) (Eq. 11): Eq. 9 applied to the normalised weighted centroids
    c_i = (Σ_m w_m z_i^m) / ‖Σ_m w_m z_i^m‖ of each sample's modalities (weights normalised to sum 1,
    uniform by default)."""
    check_kernel(kernel)
    check_tau(tau)
    z_dict = check_embedding_dict(z_dict, min_modalities=1, min_batch=2)
    w = normalized_weights(weights, list(z_dict), what="centroid weights")
    return uniformity_of_unit(weighted_centroids(unit_dict(z_dict), w), tau, kernel)
