"""Transport objectives between two embedding batches (seed "Geometric Alignment", §B).

- :func:`sinkhorn_ot_loss` — entropic optimal-transport cost ⟨P*, C⟩ between the empirical measures of two
  batches (log-domain Sinkhorn, envelope-theorem gradient).
- :func:`sinkhorn_plan` — the (detached) transport plan P* itself, for diagnostics.
- :func:`local_covariance_loss` — Jeffreys divergence between kNN local covariances of paired batches
  (low-rank Woodbury algebra, never a d×d matrix).

All work is done in at least float32 with autocast disabled, so bf16/fp16 inputs and autocast regions are safe.
"""

from __future__ import annotations

import math
import warnings

import torch

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import EmbeddingError
from gen_align.tensors import as_embeddings, unit

__all__ = ["local_covariance_loss", "sinkhorn_ot_loss", "sinkhorn_plan"]

_CHECK_EVERY = 10  # Sinkhorn iterations between marginal-error checks (each check is one device sync)


def _pair(x: torch.Tensor, y: torch.Tensor, normalize: bool, paired: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two batches, upcast to ≥ float32 (one common dtype), L2-normalise if asked."""
    x, y = as_embeddings(x, "x"), as_embeddings(y, "y")
    if paired and x.shape != y.shape:
        raise EmbeddingError(
            f"x and y must be paired batches of the same shape (B, d), got {tuple(x.shape)} and {tuple(y.shape)}; "
            "row i of y must describe the same item as row i of x."
        )
    if x.shape[1] != y.shape[1]:
        raise EmbeddingError(
            f"x and y must live in the same space, got dimensions {x.shape[1]} and {y.shape[1]}; "
            "project both modalities to the anchor dimension first."
        )
    out = []
    for z, name in ((x, "x"), (y, "y")):
        if normalize:
            z = unit(z, name)
        else:
            z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
            if not bool(torch.isfinite(z).all()):
                raise EmbeddingError(f"{name}: contains NaN or inf values; check the encoder output (fp16 overflow?).")
        out.append(z)
    dtype = torch.promote_types(out[0].dtype, out[1].dtype)
    return out[0].to(dtype), out[1].to(dtype)


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = ‖x_i − y_j‖² via the expansion (no (B_x, B_y, d) tensor), clipped at 0 against rounding."""
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2.0 * x @ y.mT).clamp_min(0.0)


def _sinkhorn(C: torch.Tensor, eps: float, iters: int, tol: float) -> tuple[torch.Tensor, float, bool]:
    """Log-domain Sinkhorn for uniform marginals; returns (plan, row-marginal L1 error, converged)."""
    with torch.no_grad():
        n, m = C.shape
        log_a, log_b = -math.log(n), -math.log(m)
        K = -C.detach() / eps  # log-kernel
        u = torch.zeros(n, dtype=C.dtype, device=C.device)  # u = f / eps, v = g / eps
        v = torch.zeros(m, dtype=C.dtype, device=C.device)
        err, converged = float("nan"), False
        for it in range(1, iters + 1):
            u = -torch.logsumexp(K + (v + log_b)[None, :], dim=1)
            v = -torch.logsumexp(K + (u + log_a)[:, None], dim=0)  # columns now exact; check the rows
            if tol > 0 and (it % _CHECK_EVERY == 0 or it == iters):
                rows = torch.exp(u + log_a + torch.logsumexp(K + (v + log_b)[None, :], dim=1))
                err = float((rows - 1.0 / n).abs().sum())
                if err < tol:
                    converged = True
                    break
        plan = torch.exp(K + (u + log_a)[:, None] + (v + log_b)[None, :])
    return plan, err, converged


def _transport(
    x: torch.Tensor, y: torch.Tensor, eps: float, iters: int, tol: float, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    eps = positive(eps, "eps", "It is the entropic regularisation (try 0.05 on unit vectors).")
    iters = integer(iters, "iters", 1, "It is the maximum number of Sinkhorn iterations (try 200).")
    non_negative(tol, "tol", "(0 runs exactly `iters` iterations).")
    x, y = _pair(x, y, normalize, paired=False)
    C = _sq_dist(x, y)
    plan, err, converged = _sinkhorn(C, eps, iters, float(tol))
    if tol > 0 and not converged:
        warnings.warn(
            f"Sinkhorn did not converge in {iters} iterations (marginal error {err:.2e} > tol={tol:g}); the OT "
            "value is approximate. Increase iters, or increase eps (small eps converges slowly).",
            RuntimeWarning,
            stacklevel=3,
        )
    return plan, C


def sinkhorn_ot_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.05,
    iters: int = 200,
    tol: float = 1e-6,
    normalize: bool = True,
) -> torch.Tensor:
    """Entropic OT cost between two batches ``x`` (B_x, d) and ``y`` (B_y, d) with uniform marginals.

    ``C_ij = ‖x_i − y_j‖²`` (rows L2-normalised first when ``normalize``), ``a = 1/B_x``, ``b = 1/B_y``;
    ``P* = argmin_{P ∈ Π(a, b)} ⟨P, C⟩ + eps·KL(P ‖ a bᵀ)`` by log-domain Sinkhorn on the potentials
    (``f_i = −eps·log Σ_j b_j exp((g_j − C_ij)/eps)``, then g likewise), stopping when the L1 error of the
    row marginals is below ``tol`` (``tol=0``: exactly ``iters`` iterations, no warning) or after ``iters``
    (then a ``RuntimeWarning``). Returns ``⟨P*, C⟩`` — the value of POT's ``ot.sinkhorn2(a, b, C, reg=eps)``.

    Gradient (envelope theorem, as in GeomLoss): the iterations run without autograd and the result is
    ``(P*.detach() * C).sum()``, so ∂/∂C = P*. That is the exact gradient of the regularised value
    ``OT_eps = min_P ⟨P, C⟩ + eps·KL(P ‖ a bᵀ)`` (P* is its minimiser), not of ⟨P*, C⟩ through P*; it needs
    no backprop through the loop (O(B_x·B_y) memory). Not zero for ``x == y``: entropy spreads the plan.
    """
    with torch.autocast(device_type=torch.device(getattr(x, "device", "cpu")).type, enabled=False):
        plan, C = _transport(x, y, eps, iters, tol, normalize)
        return (plan * C).sum()


def sinkhorn_plan(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.05,
    iters: int = 200,
    tol: float = 1e-6,
    normalize: bool = True,
) -> torch.Tensor:
    """The detached entropic transport plan P* (B_x, B_y) of :func:`sinkhorn_ot_loss` (rows sum to 1/B_x)."""
    with torch.autocast(device_type=torch.device(getattr(x, "device", "cpu")).type, enabled=False):
        return _transport(x, y, eps, iters, tol, normalize)[0]


def _knn_neighbourhoods(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k+1) indices: each row itself, then its k nearest other rows (Euclidean), without gradient."""
    with torch.no_grad():
        dist = _sq_dist(x, x)
        dist.fill_diagonal_(float("inf"))
        nearest = dist.topk(k, dim=1, largest=False).indices
        own = torch.arange(x.shape[0], device=x.device)[:, None]
        return torch.cat([own, nearest], dim=1)


def _woodbury_quad(H: torch.Tensor, H_c: torch.Tensor, G_c: torch.Tensor, ridge: float) -> torch.Tensor:
    """W (ridge·I + UᵀU)⁻¹ Wᵀ from H = WWᵀ, H_c = WUᵀ, G_c = UUᵀ: (H − H_c (ridge·I + G_c)⁻¹ H_cᵀ) / ridge."""
    eye = torch.eye(G_c.shape[-1], dtype=G_c.dtype, device=G_c.device)
    L = torch.linalg.cholesky(G_c + ridge * eye)
    T = torch.linalg.solve_triangular(L, H_c.mT, upper=False)
    return (H - T.mT @ T) / ridge


def local_covariance_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 10,
    ridge: float = 1e-3,
    normalize: bool = True,
) -> torch.Tensor:
    """Mean Jeffreys divergence between the kNN local covariances of paired batches ``x``, ``y`` (B, d).

    ``N(i) = {i} ∪ kNN_x(i)`` (k nearest other rows of x, indices without gradient; the same indices select
    the y rows, since rows are paired). ``Σ_X(i) = ridge·I + cov{x_j : j ∈ N(i)}`` (centred on the
    neighbourhood mean, divided by k+1), ``Σ_Y(i)`` likewise. Loss = ``mean_i J(Σ_X(i), Σ_Y(i))`` with

        J(A, B) = ½[Tr(A B⁻¹) + Tr(B A⁻¹)] − d = KL(N(0,A) ‖ N(0,B)) + KL(N(0,B) ‖ N(0,A)).

    Why not the seed's ``Tr(Σ_V log Σ_T)``: it is only the cross term of the von Neumann divergence
    ``Tr(A log A − A log B − A + B)``; alone it is not zero at A = B, has no fixed sign and is unbounded
    below, so minimising it does not make the covariances match. J is a Bregman-family (symmetrised
    log-det) matrix divergence: ≥ 0, = 0 iff A = B, affine-invariant, and it needs no matrix logarithm.

    Computation: with Δ = A − B, J = ½ Tr(Δ B⁻¹ Δ A⁻¹) (no cancellation at A ≈ B). Each Σ is ridge·I +
    UᵀU with U the (k+1, d) centred neighbourhood / sqrt(k+1); with W = [U; V] and Δ = Wᵀ diag(I, −I) W,
    only the (2k+2)² Gram WWᵀ is needed, and Woodbury (ridge·I + UᵀU)⁻¹ = (I − Uᵀ(ridge·I + UUᵀ)⁻¹U)/ridge
    gives W A⁻¹ Wᵀ by a batched Cholesky. Cost O(B k² d); the small algebra runs in float64.
    """
    k = integer(k, "k", 1, "It is the number of neighbours per local covariance (try 10).")
    ridge = positive(ridge, "ridge", "It keeps the local covariances invertible (try 1e-3).")
    device_type = torch.device(getattr(x, "device", "cpu")).type
    with torch.autocast(device_type=device_type, enabled=False):
        x, y = _pair(x, y, normalize, paired=True)
        n, r = x.shape[0], k + 1
        if n < r:
            raise EmbeddingError(
                f"local_covariance_loss with k={k} needs a batch of at least k + 1 = {r} items, got {n}. "
                "Lower k or use a larger batch."
            )
        idx = _knn_neighbourhoods(x, k)
        xs, ys = x[idx], y[idx]  # (B, r, d)
        U = (xs - xs.mean(dim=1, keepdim=True)) / math.sqrt(r)
        V = (ys - ys.mean(dim=1, keepdim=True)) / math.sqrt(r)
        W = torch.cat([U, V], dim=1)
        small = torch.float32 if device_type == "mps" else torch.float64  # MPS has no float64
        H = (W @ W.mT).to(small)  # (B, 2r, 2r)
        P_A = _woodbury_quad(H, H[..., :r], H[..., :r, :r], ridge)  # W Σ_X⁻¹ Wᵀ
        P_B = _woodbury_quad(H, H[..., r:], H[..., r:, r:], ridge)  # W Σ_Y⁻¹ Wᵀ
        s = torch.cat([H.new_ones(r), -H.new_ones(r)])
        J = 0.5 * (P_A * P_B * (s[:, None] * s[None, :])).sum(dim=(-2, -1))
        return J.mean().to(x.dtype)
