"""Diagnostics of an embedding space: Hölder divergence, conflict metrics ζ/χ, modality gap, Δ_deg, MMD.

Every quantity is computed on L2-normalised rows (:func:`~gen_align.tensors.unit`); inputs are torch
tensors or NumPy arrays of shape ``(N, d)``. Kernel quantities whose value is amplified by ``1/τ``
(Hölder divergence, MMD) are evaluated in float64 so cosine rounding (or TF32 matmuls) cannot dominate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from gen_align.checks import integer, positive
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.tensors import as_embeddings, check_embedding_dict, unit

Array = torch.Tensor | np.ndarray


def _same_dim(named: Mapping[str, torch.Tensor]) -> None:
    dims = {k: int(v.shape[1]) for k, v in named.items()}
    if len(set(dims.values())) > 1:
        raise EmbeddingError(
            f"all inputs must share the embedding dimension d (one space), got {dims}. "
            "Project every modality to the anchor dimension with its head first."
        )


def _unit_modalities(z_dict: Mapping[str, Array], min_batch: int) -> dict[str, torch.Tensor]:
    """Validate ``{modality: (N_m, d)}`` (N_m may differ, d may not, ≥ 2 modalities); L2-normalise rows."""
    if not isinstance(z_dict, Mapping):
        raise EmbeddingError(
            f"expected a dict {{modality: (N, d) tensor}}, got {type(z_dict).__name__}; "
            "e.g. {'image': z_img, 'audio': z_aud}."
        )
    if len(z_dict) < 2:
        raise EmbeddingError(
            f"this diagnostic compares modalities and needs at least 2, got {sorted(z_dict)}; "
            "pass a dict with two or more modalities."
        )
    z = {str(k): as_embeddings(v, name=f"z[{k!r}]", min_batch=min_batch) for k, v in z_dict.items()}
    _same_dim(z)
    return {k: unit(v, name=f"z[{k!r}]") for k, v in z.items()}


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖x_i − y_j‖² = 2 − 2⟨x_i, y_j⟩ for unit rows, clamped at 0."""
    return (2.0 - 2.0 * (x @ y.mT)).clamp_min(0.0)


def _log_kde(x: torch.Tensor, y: torch.Tensor, tau: float, leave_one_out: bool) -> torch.Tensor:
    """log p̂_y(x_i) = logsumexp_j(−‖x_i − y_j‖²/τ) − log N_y; with leave_one_out (x is y) skip j = i."""
    logk = -_sq_dist(x, y) / tau
    n = y.shape[0]
    if leave_one_out:
        logk = logk.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), float("-inf"))
        n -= 1
    return torch.logsumexp(logk, dim=1) - math.log(n)


def holder_divergence(
    z_dict: Mapping[str, Array],
    tau: float = 0.07,
    loo: bool = True,
    anchor_average: bool = True,
    anchor: str | None = None,
) -> torch.Tensor:
    """Global Hölder divergence of M ≥ 2 modalities from Gaussian KDEs on the sphere (Eqs. 22–24):

        D_H = −log ∫ Π_m p_m + (1/M) Σ_m log ∫ p_m^M ≥ 0   (Eq. 22; 0 iff all p_m are equal),
        Ĉ_a = (1/N_a) Σ_i Π_{m≠a} p̂_m(z_i^a),   Ŝ_m = (1/N_m) Σ_i p̂_m^{(−i)}(z_i^m)^{M−1}   (Eq. 23),
        D̂ = −log Ĉ + (1/M) Σ_m log Ŝ_m,   Ĉ = (1/M) Σ_a Ĉ_a  or  Ĉ_anchor   (Eq. 24),

    with p̂_m(x) = (1/N_m) Σ_j exp(−‖x − z_j^m‖²/τ) (the normalising constant cancels). ``loo`` drops j = i
    (and divides by N_m − 1) when p̂_m is evaluated at its own sample. Everything is a log-sum-exp in float64,
    so it neither under- nor overflows for large d and small τ. Sample counts N_m may differ. Differentiable;
    returns a 0-dim tensor in the inputs' dtype (at least float32). ``anchor`` (default: the first key)
    is only used with ``anchor_average=False``.
    """
    positive(tau, "tau", "(e.g. 0.07)")
    z = _unit_modalities(z_dict, min_batch=2 if loo else 1)
    keys = list(z)
    if anchor is not None and anchor_average:
        raise ConfigError(
            f"anchor={anchor!r} is ignored when anchor_average=True (Ĉ averages all M anchors); "
            "pass anchor_average=False to estimate ∫ Π_m p_m from that anchor alone, or drop anchor."
        )
    if anchor is not None and anchor not in z:
        raise ConfigError(f"anchor modality {anchor!r} is not in the batch {keys}; pass one of these.")
    out_dtype = next(iter(z.values())).dtype
    z = {k: v.double() for k, v in z.items()}
    M = len(keys)
    log_s = []
    for m in keys:  # Ŝ_m: KDE of m at its own samples, raised to the power M − 1
        log_self = _log_kde(z[m], z[m], tau, leave_one_out=loo)
        log_s.append(torch.logsumexp((M - 1) * log_self, dim=0) - math.log(z[m].shape[0]))
    anchors = keys if anchor_average else [anchor if anchor is not None else keys[0]]
    log_c = []
    for a in anchors:  # Ĉ_a: the product of the other modalities' KDEs at the samples of a
        log_prod = sum(_log_kde(z[a], z[m], tau, leave_one_out=False) for m in keys if m != a)
        log_c.append(torch.logsumexp(log_prod, dim=0) - math.log(z[a].shape[0]))
    log_c_mean = torch.logsumexp(torch.stack(log_c), dim=0) - math.log(len(log_c))
    return (-log_c_mean + torch.stack(log_s).mean()).to(out_dtype)


@torch.no_grad()
def conflict_metrics(z_dict: Mapping[str, Array], anchor: str = "image", tau: float = 0.07) -> dict[str, float]:
    """Conflict metrics of Eq. 4 from one paired batch, anchor a, non-anchor modalities m, n (M ≥ 2):

        ζ_a = (1/B) Σ_i (1/(M−1)) Σ_{m≠a} ⟨ Σ_{n≠a} Σ_j p^n_ij n_j , m_i ⟩,  p^n_ij = softmax_j(⟨a_i, n_j⟩/τ),
        χ_a = (1/B) Σ_i (1 − ‖(1/(M−1)) Σ_{m≠a} m_i‖).

    Also returns ``alignment`` = mean_i mean_m cos(a_i, m_i) and its Corollary 2 bound (Eq. 7)
    ``alignment_bound`` = mean_i (1 − χ_i) = mean_i sqrt((1 + (M−2) ρ̄_i)/(M−1)) ≥ ``alignment``.
    """
    positive(tau, "tau", "(e.g. 0.07)")
    checked = check_embedding_dict(z_dict, min_modalities=2, anchor=anchor)
    z = {k: unit(v, name=f"z[{k!r}]").double() for k, v in checked.items()}
    a = z[anchor]
    others = [v for k, v in z.items() if k != anchor]
    push = sum(torch.softmax(a @ n.mT / tau, dim=1) @ n for n in others)
    mean_pos = torch.stack(others).mean(dim=0)
    norm_mean = torch.linalg.vector_norm(mean_pos, dim=1)
    return {
        "zeta": float((push * mean_pos).sum(dim=1).mean()),
        "chi": float((1.0 - norm_mean).mean()),
        "alignment": float((a * mean_pos).sum(dim=1).mean()),
        "alignment_bound": float(norm_mean.mean()),
    }


@torch.no_grad()
def modality_gap(z_dict: Mapping[str, Array]) -> dict[str, float]:
    """Modality gap (Liang et al. 2022) for each unordered pair "m-n" (insertion order):

    gap(m, n) = ‖(1/N_m) Σ_i unit(z_i^m) − (1/N_n) Σ_j unit(z_j^n)‖₂.
    """
    z = _unit_modalities(z_dict, min_batch=1)
    centroids = {k: v.double().mean(dim=0) for k, v in z.items()}
    keys = list(centroids)
    return {
        f"{m}-{n}": float(torch.linalg.vector_norm(centroids[m] - centroids[n]))
        for i, m in enumerate(keys)
        for n in keys[i + 1 :]
    }


def _mean_topk_cosine(x: Array, k: int, reference: Array | None, block_size: int) -> float:
    integer(k, "k")
    integer(block_size, "block_size")
    xs = unit(as_embeddings(x, name="x", min_batch=1), name="x")
    if reference is None:
        ref = xs
    else:
        ref = unit(as_embeddings(reference, name="reference", min_batch=1), name="reference")
        _same_dim({"x": xs, "reference": ref})
    available = ref.shape[0] - (1 if reference is None else 0)
    if k > available:
        raise ConfigError(
            f"k={k} exceeds the {available} neighbours available to each row "
            f"({'the other rows of x' if reference is None else 'rows of reference'}); use k ≤ {available}."
        )
    total = 0.0
    for start in range(0, xs.shape[0], block_size):
        sims = xs[start : start + block_size] @ ref.mT
        if reference is None:  # a row is not its own neighbour
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = float("-inf")
        total += float(sims.topk(k, dim=1).values.double().sum())
    return total / (xs.shape[0] * k)


@torch.no_grad()
def degeneration_score(x: Array, reference: Array | None = None, block_size: int = 4096) -> float:
    """Δ_deg (InvGC, Eq. 2) = (1/N) Σ_i max_{j≠i} cos(x_i, r_j), r = reference or x itself (then j ≠ i).

    Computed over blocks of ``block_size`` rows of x: memory ``block_size × N_ref``, never ``N × N``.
    """
    return _mean_topk_cosine(x, 1, reference, block_size)


@torch.no_grad()
def mean_sim_at_k(x: Array, k: int, reference: Array | None = None, block_size: int = 4096) -> float:
    """MeanSim@k = (1/N) Σ_i (1/k) Σ_{j ∈ top-k_i} cos(x_i, r_j), neighbours as in :func:`degeneration_score`.

    MeanSim@1 = Δ_deg. Raises ConfigError when k exceeds the neighbours available to a row.
    """
    return _mean_topk_cosine(x, k, reference, block_size)


def _median_pairwise_distance(z: torch.Tensor) -> torch.Tensor:
    """Median of ‖z_i − z_j‖ over pairs i < j (mean of the two middle values for an even count)."""
    n = z.shape[0]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=z.device), diagonal=1)
    dist = _sq_dist(z, z)[upper].sqrt()
    count = dist.numel()
    lo = dist.kthvalue((count - 1) // 2 + 1).values
    hi = dist.kthvalue(count // 2 + 1).values
    return (lo + hi) / 2


def mmd(x: Array, y: Array, bandwidth: float | None = None) -> torch.Tensor:
    """Unbiased MMD² (Gretton et al. 2012, Eq. 3) with k(u, v) = exp(−‖u − v‖²/(2σ²)) on unit rows:

        MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j).

    σ = ``bandwidth``, or by the median heuristic: the median of ‖u − v‖ over distinct pairs of the pooled
    rows (not differentiated). Computed in float64; differentiable; returns the inputs' dtype (≥ float32).
    Can be slightly negative when the two distributions are equal (it is unbiased).
    """
    if bandwidth is not None:
        positive(bandwidth, "bandwidth", "(e.g. 0.5)")
    xs = unit(as_embeddings(x, name="x", min_batch=2), name="x")
    ys = unit(as_embeddings(y, name="y", min_batch=2), name="y")
    _same_dim({"x": xs, "y": ys})
    out_dtype = xs.dtype
    xs, ys = xs.double(), ys.double()
    if bandwidth is None:
        sigma = _median_pairwise_distance(torch.cat([xs, ys]).detach())
        if not bool(sigma > 0):
            raise EmbeddingError(
                "the median pairwise distance of the pooled rows is 0 (most rows coincide), so the median "
                "heuristic gives no bandwidth; pass bandwidth=<σ > 0> explicitly."
            )
    else:
        sigma = torch.tensor(float(bandwidth), dtype=torch.float64, device=xs.device)
    gamma = 1.0 / (2.0 * sigma * sigma)
    m, n = xs.shape[0], ys.shape[0]

    def off_diagonal_mean(u: torch.Tensor) -> torch.Tensor:
        k = torch.exp(-gamma * _sq_dist(u, u))
        return (k.sum() - k.diagonal().sum()) / (u.shape[0] * (u.shape[0] - 1))

    cross = torch.exp(-gamma * _sq_dist(xs, ys)).sum() / (m * n)
    return (off_diagonal_mean(xs) + off_diagonal_mean(ys) - 2.0 * cross).to(out_dtype)
