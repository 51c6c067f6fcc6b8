"""GraviAlign heads (seed "Gravitation-Driven Alignment"): one Gaussian head per modality maps an embedding to
a diagonal Gaussian N(μ, diag σ²); pairs are scored with :func:`~gen_align.objectives.gravi.gravi_score`.

Per modality m (features x ∈ R^{d_m}, Gaussian dimension D):

    [a, r] = f_m(x)                 f_m: a gen_align.heads.ProjectionHead (LayerNorm → Linear, or the MLP) to 2D
    μ      = x + a   (residual, when d_m = D; its last layer starts at zero, so μ = x at start)   or   μ = a
    σ²     = softplus(r) + min_variance

Training on a batch of B pairs: S = gravi_score(μ_q, σ²_q, μ_g, σ²_g, τ) (A + B + C, (B, B)), and
L = ½ [CE(S, diag) + CE(Sᵀ, diag)] — InfoNCE in both directions (τ already scales the cosine term A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gen_align.checks import choice, integer, positive
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.heads import HEAD_KINDS, HeadConfig, ProjectionHead
from gen_align.objectives.gravi import gravi_score
from gen_align.retrieval.head_training import RetrievalHead, check_candidates
from gen_align.tensors import as_embeddings

__all__ = ["GraviAlignConfig", "GaussianHead", "GraviAlignHead"]


@dataclass(frozen=True)
class GraviAlignConfig:
    """``query_dim`` / ``gallery_dim``: input feature sizes; ``dim``: Gaussian dimension D (default
    ``gallery_dim``); ``kind``/``hidden_dim``: the ProjectionHead of each modality; ``residual``: μ = x + a
    (default: whenever the input size equals D); ``temperature``: τ of the cosine term A."""

    query_dim: int
    gallery_dim: int
    dim: int | None = None
    kind: str = "mlp"
    hidden_dim: int | None = None
    residual: bool | None = None
    temperature: float = 0.07
    min_variance: float = 1e-4
    query_modality: str = "text"
    gallery_modality: str = "image"

    def __post_init__(self) -> None:
        integer(self.query_dim, "GraviAlign query_dim")
        integer(self.gallery_dim, "GraviAlign gallery_dim")
        if self.dim is not None:
            integer(self.dim, "GraviAlign dim")
        if self.hidden_dim is not None:
            integer(self.hidden_dim, "GraviAlign hidden_dim")
        choice(self.kind, "GraviAlign head kind", HEAD_KINDS)
        positive(self.temperature, "GraviAlign temperature", "(CLIP-style: 0.07)")
        positive(self.min_variance, "GraviAlign min_variance", "(a floor on σ², e.g. 1e-4)")
        if self.residual and not self.query_dim == self.gallery_dim == self.output_dim:
            raise ConfigError(
                f"residual=True needs query_dim = gallery_dim = dim, got {self.query_dim}, {self.gallery_dim} and "
                f"{self.output_dim}; set residual=None to use the skip connection only where the sizes match."
            )
        if not all(isinstance(m, str) and m for m in (self.query_modality, self.gallery_modality)):
            raise ConfigError("GraviAlign query_modality and gallery_modality must be non-empty strings.")

    @property
    def output_dim(self) -> int:
        return self.dim or self.gallery_dim

    def uses_residual(self, in_dim: int) -> bool:
        return in_dim == self.output_dim if self.residual is None else bool(self.residual)


class GaussianHead(nn.Module):
    """(B, in_dim) features → (μ, σ²), each (B, dim), as in the module docstring."""

    def __init__(
        self, in_dim: int, dim: int, kind: str, hidden_dim: int | None, residual: bool, min_variance: float
    ) -> None:
        super().__init__()
        self.dim, self.residual, self.min_variance = dim, residual, min_variance
        self.net = ProjectionHead(HeadConfig(in_dim, 2 * dim, kind=kind, hidden_dim=hidden_dim))
        last = self.net.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        mu, raw = out[:, : self.dim], out[:, self.dim :]
        if self.residual:
            mu = x + mu
        return mu, F.softplus(raw) + self.min_variance


class GraviAlignHead(RetrievalHead):
    """A query and a gallery :class:`GaussianHead`, scored with :func:`gravi_score` (module docstring).

    Train it with :func:`~gen_align.retrieval.head_training.train_head` (``head="gravi-align"``), save it with
    :meth:`save_pretrained`, load it with :func:`~gen_align.retrieval.head_training.load_head`.

    Args:
        config: the dimensions, head kind, temperature and variance floor (:class:`GraviAlignConfig`).

    Example:
        Each side maps its features to a diagonal Gaussian; :meth:`score` compares every pair:

        >>> import torch
        >>> from gen_align.retrieval.gravi_head import GraviAlignConfig, GraviAlignHead
        >>> head = GraviAlignHead(GraviAlignConfig(query_dim=8, gallery_dim=8, dim=8))
        >>> mu, variance = head.encode(torch.randn(3, 8), "query")
        >>> mu.shape, bool((variance > 0).all())
        (torch.Size([3, 8]), True)
        >>> head.score(torch.randn(3, 8), torch.randn(5, 8)).shape
        torch.Size([3, 5])
    """

    kind = "gravi-align"
    config_class = GraviAlignConfig

    def __init__(self, config: GraviAlignConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.query_head = GaussianHead(
            c.query_dim, c.output_dim, c.kind, c.hidden_dim, c.uses_residual(c.query_dim), c.min_variance
        )
        self.gallery_head = GaussianHead(
            c.gallery_dim, c.output_dim, c.kind, c.hidden_dim, c.uses_residual(c.gallery_dim), c.min_variance
        )

    def encode(self, x: torch.Tensor | np.ndarray, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of ``side`` = "query" or "gallery" features (B, d_side)."""
        choice(side, "side", ("query", "gallery"))
        expected = self.config.query_dim if side == "query" else self.config.gallery_dim
        x = as_embeddings(x, side)
        if x.shape[1] != expected:
            raise EmbeddingError(
                f"{side}: this GraviAlign head takes {expected}-d {side} features, got {x.shape[1]}-d; pass the "
                f"{self.config.query_modality if side == 'query' else self.config.gallery_modality} features it was "
                "trained on."
            )
        if not bool(torch.isfinite(x).all()):
            raise EmbeddingError(f"{side}: features hold NaN/inf values; fix or drop those rows first.")
        p = self.query_head.net.net[-1].weight
        x = x.to(device=p.device, dtype=p.dtype)
        return (self.query_head if side == "query" else self.gallery_head)(x)

    def forward(self, queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(Nq, Ng) GraviAlign scores A + B + C (with gradients)."""
        mu_q, var_q = self.encode(queries, "query")
        mu_g, var_g = self.encode(gallery, "gallery")
        return gravi_score(mu_q, var_q, mu_g, var_g, temperature=self.config.temperature)

    @torch.no_grad()
    def score(self, queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray) -> torch.Tensor:
        """GraviAlign scores A + B + C of every query against every gallery item, without gradients.

        Args:
            queries: query features (Nq, query_dim). gallery: gallery features (Ng, gallery_dim).

        Returns:
            the (Nq, Ng) scores (higher is closer).

        Raises:
            EmbeddingError: features of the wrong dimension, or NaN/inf values.
        """
        return self(queries, gallery)

    @torch.no_grad()
    def rerank(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        candidates: torch.Tensor | np.ndarray,
    ) -> torch.Tensor:
        """Scores (Nq, K) of each query's K candidate gallery items (``candidates``: (Nq, K) gallery indices), the
        gallery's Gaussians computed once; column k scores ``candidates[:, k]``."""
        mu_q, var_q = self.encode(queries, "query")
        mu_g, var_g = self.encode(gallery, "gallery")
        candidates = check_candidates(candidates, mu_q.shape[0], mu_g.shape[0]).to(mu_g.device)
        rows = [
            gravi_score(mu_q[i : i + 1], var_q[i : i + 1], mu_g[c], var_g[c], temperature=self.config.temperature)
            for i, c in enumerate(candidates)
        ]
        return torch.cat(rows)

    def training_loss(
        self,
        queries: torch.Tensor,
        gallery: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """½ [CE(S, diag) + CE(Sᵀ, diag)] over S = gravi_score on one batch of B paired rows."""
        if frame_mask is not None:
            raise ConfigError("GraviAlign heads score clip-level embeddings only; drop frame_mask= (GARE uses frames).")
        scores = self(queries, gallery)
        b = scores.shape[0]
        if scores.shape[1] != b or b < 2:
            raise EmbeddingError(
                f"training needs B ≥ 2 paired rows (row i of queries matches row i of gallery), got {b} queries "
                f"and {scores.shape[1]} gallery items."
            )
        target = torch.arange(b, device=scores.device)
        q2g, g2q = F.cross_entropy(scores, target), F.cross_entropy(scores.mT, target)
        loss = 0.5 * (q2g + g2q)
        return loss, {"q2g": q2g.detach(), "g2q": g2q.detach()}
