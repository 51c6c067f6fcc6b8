"""GraviAlign dual-factor score between diagonal-Gaussian embeddings (seed "Gravitation-Driven Alignment").

Each item is a Gaussian N(μ, diag σ²). For a query q and a gallery item g, with Σ_joint = Σ_q + Σ_g:

    score(q, g) = A + B + C
    A = cos(μ_q, μ_g) / temperature                          semantic attraction between the centroids
    B = −½ Δμᵀ Σ_joint⁻¹ Δμ = −½ Σ_d (μ_q,d − μ_g,d)² / s_d   mass-aware distance, s = σ²_q + σ²_g
    C = −½ log|Σ_joint|     = −½ Σ_d log s_d                 penalty for diffuse (uncertain) pairs

B + C is log N(μ_q; μ_g, Σ_joint) + (D/2)·log 2π: the likelihood that the two centroids coincide.
Because s depends on the pair, B does not expand into matrix products; the (N_q, N_g, D) broadcast is
computed in blocks of ``chunk_size`` query rows, recomputed in backward (checkpointing) so memory stays
O(chunk_size · N_g · D) with or without gradients.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from gen_align.checks import integer, positive
from gen_align.errors import EmbeddingError
from gen_align.tensors import as_embeddings, unit

__all__ = ["gravi_score", "gravi_terms"]


def _variances(var: torch.Tensor, mu: torch.Tensor, name: str) -> torch.Tensor:
    """Validate (N, D) — or isotropic (N, 1) — variances: finite and > 0; return (N, D) in ≥ float32."""
    var = as_embeddings(var, name)
    n, dim = mu.shape
    if var.shape[0] != n or var.shape[1] not in (1, dim):
        raise EmbeddingError(
            f"{name}: expected variances of shape ({n}, {dim}) (or ({n}, 1) for isotropic), got {tuple(var.shape)}; "
            "give one variance per item and dimension, matching the means."
        )
    var = var.float() if var.dtype in (torch.float16, torch.bfloat16) else var
    bad = ~(torch.isfinite(var) & (var > 0))
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise EmbeddingError(
            f"{name}: variances must be finite and > 0, found {int(bad.sum())} bad entries (first in row {row}). "
            "If the head predicts log-variances pass var = logvar.exp(), or use softplus(raw) + 1e-6."
        )
    return var.expand(n, dim)


def _distance_terms(
    mu_q: torch.Tensor, var_q: torch.Tensor, mu_g: torch.Tensor, var_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C for one block of queries: (c, N_g) each, through a (c, N_g, D) broadcast."""
    s = var_q[:, None, :] + var_g[None, :, :]
    diff = mu_q[:, None, :] - mu_g[None, :, :]
    if not torch.is_grad_enabled():  # inference: in place, two (c, N_g, D) buffers instead of five (2x faster)
        return diff.square_().div_(s).sum(dim=-1).mul_(-0.5), s.log_().sum(dim=-1).mul_(-0.5)
    return -0.5 * (diff.square() / s).sum(dim=-1), -0.5 * torch.log(s).sum(dim=-1)


def gravi_terms(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    mu_g: torch.Tensor,
    var_g: torch.Tensor,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three (N_q, N_g) terms (A, B, C) of :func:`gravi_score`, in at least float32.

    ``mu_q`` (N_q, D), ``var_q`` (N_q, D) or (N_q, 1); ``mu_g`` (N_g, D), ``var_g`` (N_g, D) or (N_g, 1).
    A = cos(μ_q, μ_g)/temperature; B = −½ Σ_d Δμ_d² / s_d; C = −½ Σ_d log s_d with s = σ²_q + σ²_g.
    """
    positive(temperature, "temperature", "(CLIP-style: 0.07).")
    integer(
        chunk_size,
        "chunk_size",
        hint="It is the number of query rows per block of the (N_q, N_g, D) broadcast (lower it if memory runs out).",
    )
    device_type = torch.device(getattr(mu_q, "device", "cpu")).type
    with torch.autocast(device_type=device_type, enabled=False):
        mu_q, mu_g = as_embeddings(mu_q, "mu_q"), as_embeddings(mu_g, "mu_g")
        if mu_q.shape[1] != mu_g.shape[1]:
            raise EmbeddingError(
                f"mu_q and mu_g must share the embedding dimension, got {mu_q.shape[1]} and {mu_g.shape[1]}; "
                "project queries and gallery into the same space first."
            )
        dir_q, dir_g = unit(mu_q, "mu_q"), unit(mu_g, "mu_g")  # also rejects NaN/inf and zero means
        var_q, var_g = _variances(var_q, mu_q, "var_q"), _variances(var_g, mu_g, "var_g")
        dtype = torch.promote_types(dir_q.dtype, dir_g.dtype)
        dtype = torch.promote_types(dtype, torch.promote_types(var_q.dtype, var_g.dtype))
        mu_q, mu_g, var_q, var_g = (t.to(dtype) for t in (mu_q, mu_g, var_q, var_g))
        A = (dir_q.to(dtype) @ dir_g.to(dtype).mT) / temperature
        recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (mu_q, mu_g, var_q, var_g))
        blocks_b, blocks_c = [], []
        for start in range(0, mu_q.shape[0], int(chunk_size)):
            part = (mu_q[start : start + chunk_size], var_q[start : start + chunk_size], mu_g, var_g)
            b, c = checkpoint(_distance_terms, *part, use_reentrant=False) if recompute else _distance_terms(*part)
            blocks_b.append(b)
            blocks_c.append(c)
        return A, torch.cat(blocks_b), torch.cat(blocks_c)


def gravi_score(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    mu_g: torch.Tensor,
    var_g: torch.Tensor,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """GraviAlign score matrix (N_q, N_g) = A + B + C (higher = better match); see :func:`gravi_terms`.

    A = cos(μ_q, μ_g)/τ, B = −½ Δμᵀ Σ_joint⁻¹ Δμ, C = −½ log|Σ_joint|, Σ_joint = diag(σ²_q + σ²_g).
    """
    A, B, C = gravi_terms(mu_q, var_q, mu_g, var_g, temperature=temperature, chunk_size=chunk_size)
    return A + B + C
