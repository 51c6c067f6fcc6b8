"""Diagnostics of an embedding space: Hölder divergence, conflict metrics ζ/χ, modality gap, Δ_deg, MMD.

Every quantity is computed on L2-normalised rows (:func:`~gen_align.tensors.unit`); inputs are torch
tensors or NumPy arrays of shape ``(N, d)``. Kernel quantities whose value is amplified by ``1/τ``
(Hölder divergence, MMD) are evaluated in float64 so cosine rounding (or TF32 matmuls) cannot dominate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
    """log p̂_y(x_i) = log (1/N_y) Σ_j κ(x_i, y_j), κ = exp(−‖x_i − y_j‖²/(2τ²)) (Eq. 21 without its constant);
    with leave_one_out (x is y) j = i is skipped and the mean is over N_y − 1."""
    logk = -_sq_dist(x, y) / (2.0 * tau * tau)
    n = y.shape[0]
    if leave_one_out:
        logk = logk.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), float("-inf"))
        n -= 1
    return torch.logsumexp(logk, dim=1) - math.log(n)


def holder_divergence(
    z_dict: Mapping[str, Array],
    tau: float = 0.07,
    loo: bool = False,
    anchor_average: bool = False,
    anchor: str | None = None,
) -> torch.Tensor:
    """Global Hölder divergence of M ≥ 2 modalities (Eq. 16/20), estimated with Gaussian KDEs (Eq. 21–24):

        D̂ = 1/M Σ_m log( 1/N_m Σ_i (s_i^m)^{M−1} ) − log( 1/N_a Σ_i c_i )      (Eq. 24),
        s_i^m = 1/N_m Σ_k κ(z_i^m, z_k^m),   c_i = Π_{m≠a} 1/N_m Σ_k κ(z_i^a, z_k^m),   κ = exp(−‖·‖²/(2τ²)),

    with bandwidth τ on L2-normalised rows. The KDE's normalising constant (2πτ²)^{−d/2} cancels exactly
    between the two terms (both scale by its (M−1)-th power). The joint term is anchored at ``anchor``
    (default: the first modality of the dict), as the paper's main estimator. Options of Appendix C:
    ``loo`` (i) leaves z_i out of its own s_i^m (mean over N_m − 1); ``anchor_average`` (ii) averages the joint
    estimate over all M anchors. Everything is a log-sum-exp in float64 (no under- or overflow for large d
    and small τ); sample counts may differ. Differentiable; returns a 0-dim tensor in the inputs' dtype.
    """
    positive(tau, "tau", "(the paper's τ, e.g. 0.07)")
    z = _unit_modalities(z_dict, min_batch=2 if loo else 1)
    keys = list(z)
    if anchor is not None and anchor_average:
        raise ConfigError(
            f"anchor={anchor!r} is ignored when anchor_average=True (the joint term averages all M anchors); "
            "pass anchor_average=False to estimate ∫ Π_m p_m from that anchor alone, or drop anchor."
        )
    if anchor is not None and anchor not in z:
        raise ConfigError(f"anchor modality {anchor!r} is not in the batch {keys}; pass one of these.")
    out_dtype = next(iter(z.values())).dtype
    z = {k: v.double() for k, v in z.items()}
    M = len(keys)
    log_s = []
    for m in keys:  # 1/N_m Σ_i (s_i^m)^{M−1}: the KDE of m at its own samples, to the power M − 1
        log_self = _log_kde(z[m], z[m], tau, leave_one_out=loo)
        log_s.append(torch.logsumexp((M - 1) * log_self, dim=0) - math.log(z[m].shape[0]))
    anchors = keys if anchor_average else [anchor if anchor is not None else keys[0]]
    log_c = []
    for a in anchors:  # 1/N_a Σ_i c_i: the product of the other modalities' KDEs at the samples of a
        log_prod = sum(_log_kde(z[a], z[m], tau, leave_one_out=False) for m in keys if m != a)
        log_c.append(torch.logsumexp(log_prod, dim=0) - math.log(z[a].shape[0]))
    log_c_mean = torch.logsumexp(torch.stack(log_c), dim=0) - math.log(len(log_c))
    return (torch.stack(log_s).mean() - log_c_mean).to(out_dtype)


def _anchor_pair_weights(others: list[str], pair_weights: Mapping[str, float] | None) -> dict[str, float]:
    if pair_weights is None:
        return {n: 1.0 for n in others}
    unknown = sorted(set(pair_weights) - set(others))
    if unknown:
        raise ConfigError(f"pair_weights: unknown modalities {unknown}; expected the non-anchor ones {others}.")
    weights = {n: float(pair_weights.get(n, 0.0)) for n in others}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or not any(weights.values()):
        raise ConfigError(f"pair_weights must be finite, non-negative and not all 0, got {weights}.")
    return weights


@torch.no_grad()
def conflict_metrics(
    z_dict: Mapping[str, Array],
    anchor: str = "image",
    tau: float = 0.07,
    pair_weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The InfoNCE conflicts of Eq. 4 at anchor a, from one paired batch (M ≥ 2 modalities):

        V_i = Σ_{n≠a} (w_an/τ) z_i^n,   Φ_i = Σ_{n≠a} (w_an/τ) Σ_k p_ik^{an} z_k^n,
        p_ik^{an} = softmax_k(⟨z_i^a, z_k^n⟩/τ),
        ζ_a = mean_i cos(V_i, Φ_i) ∈ [−1, 1],   χ_a = mean_i ( 1 − ‖V_i‖ / Σ_{n≠a} (w_an/τ) ) ∈ [0, 1],

    the alignment pull V and the uniformity push Φ of Eq. 3. ``pair_weights`` are w_an ({modality: w}, default
    1). Also ``mu_bar`` μ̄, the mean cosine ⟨z_i^m, z_i^n⟩ over the pairs m ≠ n of non-anchor positives (NaN
    for M = 2: there is no pair), and ``chi_bound`` = 1 − sqrt((1 + (M−2) μ̄)/(M−1)), Corollary 2's lower
    bound on E[χ_a] (Eq. 7/19; 0 for M = 2), which assumes uniform w_an (it is not a bound on χ otherwise).
    Rows with V_i = 0 or Φ_i = 0 have no direction and are left out of ζ.
    """
    positive(tau, "tau", "(e.g. 0.07)")
    checked = check_embedding_dict(z_dict, min_modalities=2, anchor=anchor)
    z = {k: unit(v, name=f"z[{k!r}]").double() for k, v in checked.items()}
    others = [k for k in z if k != anchor]
    w = _anchor_pair_weights(others, pair_weights)
    a = z[anchor]
    pull = sum((w[n] / tau) * z[n] for n in others)
    push = sum((w[n] / tau) * (torch.softmax(a @ z[n].mT / tau, dim=1) @ z[n]) for n in others)
    pull_norm = torch.linalg.vector_norm(pull, dim=1)
    push_norm = torch.linalg.vector_norm(push, dim=1)
    has_direction = (pull_norm > 0) & (push_norm > 0)
    cos = (pull * push).sum(dim=1)[has_direction] / (pull_norm * push_norm)[has_direction]
    chi = 1.0 - pull_norm / sum(w[n] / tau for n in others)
    M = len(z)
    if M > 2:
        pairs = [(m, n) for m in others for n in others if m != n]
        mu_bar = float(torch.stack([(z[m] * z[n]).sum(dim=1) for m, n in pairs]).mean())
        chi_bound = 1.0 - math.sqrt(max(0.0, (1.0 + (M - 2) * mu_bar) / (M - 1)))
    else:
        mu_bar, chi_bound = float("nan"), 0.0
    return {
        "zeta": float(cos.mean()) if cos.numel() else float("nan"),
        "chi": float(chi.mean()),
        "chi_bound": chi_bound,
        "mu_bar": mu_bar,
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


@torch.no_grad()
def similarity_measures(
    x: Array, reference: Array | None = None, ks: Sequence[int] = (1, 10), block_size: int = 4096
) -> dict[str, float]:
    """The similarity measures of InvGC's Tables 1–2, in one blocked pass over x (memory ``block_size × N_ref``):

        MeanSim   = mean of cos(x_i, r_j) over all pairs (i, j) but the excluded ones
        MeanSim@k = (1/N) Σ_i (1/k) Σ_{j ∈ top-k_i} cos(x_i, r_j)          (MeanSim@1 = Δ_deg, Eq. 2)

    r = x itself (Table 1: within the gallery; a row is not its own neighbour), or ``reference`` (Table 2: the
    gallery against the query set; when both have N rows, row i is i's pair and is excluded, as in the paper).
    Each k is capped at the neighbours a row has; returns {"MeanSim": …, "MeanSim@k": …}."""
    integer(block_size, "block_size")
    xs = unit(as_embeddings(x, name="x", min_batch=1), name="x")
    ref = xs if reference is None else unit(as_embeddings(reference, name="reference", min_batch=1), name="reference")
    _same_dim({"x": xs, "reference": ref})
    ref = ref.to(xs.dtype)
    exclude = reference is None or ref.shape[0] == xs.shape[0]
    available = ref.shape[0] - (1 if exclude else 0)
    if available < 1:
        raise ConfigError("similarity measures need at least one pair that is not excluded; give more rows.")
    caps = sorted({min(integer(k, "k"), available) for k in ks})
    total, tops = 0.0, dict.fromkeys(caps, 0.0)
    for start in range(0, xs.shape[0], block_size):
        sims = (xs[start : start + block_size] @ ref.mT).double()
        if exclude:
            rows = torch.arange(sims.shape[0], device=sims.device)
            total += float(sims.sum() - sims[rows, rows + start].sum())
            sims[rows, rows + start] = float("-inf")
        else:
            total += float(sims.sum())
        top = sims.topk(caps[-1], dim=1).values
        for k in caps:
            tops[k] += float(top[:, :k].sum())
    out = {"MeanSim": total / (xs.shape[0] * available)}
    out.update({f"MeanSim@{k}": value / (xs.shape[0] * k) for k, value in tops.items()})
    return out


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
