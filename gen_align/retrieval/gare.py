"""GARE (seed "GARE", gap-aware retrieval): a pair-specific increment Δ_ij that moves the query toward the
gallery item before scoring, used as a re-ranker of the top-K candidates.

For a query embedding t_i and gallery item j with embedding v_j and token features X_j ∈ R^{L_j × d_tok}
(the embedding itself as a single token when only clip-level features exist); t and v are L2-normalised:

    g_ij     = v_j − t_i                                               the pair gap
    h_ij     = LN(g_ij + W_o MHA(q = W_q g_ij, k = W_k LN(X_j), v = W_v LN(X_j)))   ψ: one cross-attention layer
    μ_ij     = W_μ h_ij + b_μ,   log σ²_ij = W_σ h_ij + b_σ              variational bottleneck (latent size k),
                                                                        conditioned on the gallery item via X_j;
                                                                        b_σ starts at −4 (σ ≈ 0.14)
    z_ij     = μ_ij + σ_ij ⊙ ε, ε ~ N(0, I) in training;  z_ij = μ_ij at inference (deterministic)
    Δ_ij     = W_dec z_ij                                              (bias-free; zero-initialised, so Δ = 0 and
                                                                        s_ij = cos(t_i, v_j) before training)
    s_ij     = cos(t_i + Δ_ij, v_j)

Training on a batch of B pairs (the diagonal i = j are the positives), Δ sampled:

    L_Info = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)]                       InfoNCE over s_ij, both directions
    L_IB   = 1/(B² k) Σ_ij ½ Σ_k (μ²_ijk + σ²_ijk − 1 − log σ²_ijk)  KL(N(μ, σ²) ‖ N(0, I)) / k, mean over pairs
    L_ε    = 1/B² Σ_ij max(0, ‖Δ_ij‖ − ε)²                             trust region: the increment stays within ε
    L_dir  = 1/B  Σ_i (‖Δ_ii‖ − ⟨Δ_ii, ĝ_ii⟩),  ĝ = g/‖g‖ (0 if g = 0)  = ‖Δ‖(1 − cos(Δ, g)) on the positives
    L      = L_Info + β L_IB + λ_ε L_ε + λ_dir L_dir;   defaults β = 0.07, λ_ε = λ_dir = 0.01, ε = 1, τ = 0.07

L_dir is taken on the positive pairs only: pulling every t_i + Δ_ij toward its v_j would push all scores to 1.
It is weighted by ‖Δ‖ so that its gradient stays bounded near Δ = 0 (1 − cos has a 1/‖Δ‖ gradient there).
L_IB is the KL per latent dimension (the mean over all elements, as common VIB code computes it): with the
KL summed over k, β = 0.07 prices information so high that Δ carries almost none. The LayerNorm on h and the
small initial σ put the bottleneck's signal above its noise from the first steps.

All pairs of a batch are computed at once as (a, b, ·) tensors (a queries × b gallery items); re-ranking
gathers each query's K candidates into (a, K, ·) tensors. Memory is O(a · b · (d + H·L)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import ConfigError, EmbeddingError, InputDataError
from gen_align.retrieval.head_training import RetrievalHead
from gen_align.tensors import as_embeddings, unit

__all__ = ["GAREConfig", "GAREHead", "GAREOutput", "gaussian_kl", "norm_penalty", "direction_penalty"]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_k (μ_k² + σ_k² − 1 − log σ_k²), summed over the last dimension."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


INITIAL_LOGVAR = -4.0


def norm_penalty(delta: torch.Tensor, margin: float) -> torch.Tensor:
    """L_ε per increment: max(0, ‖Δ‖ − ε)² over the last dimension."""
    return F.relu(torch.linalg.vector_norm(delta, dim=-1) - margin).square()


def direction_penalty(delta: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """L_dir per increment: ‖Δ‖ − ⟨Δ, g/‖g‖⟩ = ‖Δ‖ (1 − cos(Δ, g)); 0 iff Δ = 0 or Δ points along g
    (a zero gap has no direction and counts as ĝ = 0)."""
    gap_norm = torch.linalg.vector_norm(gap, dim=-1, keepdim=True)
    direction = torch.where(gap_norm > 0, gap / gap_norm.clamp_min(torch.finfo(gap.dtype).tiny), 0.0)
    return torch.linalg.vector_norm(delta, dim=-1) - (delta * direction).sum(dim=-1)


@dataclass(frozen=True)
class GAREConfig:
    """``dim``: the shared embedding size of queries and gallery items; ``token_dim``: gallery token features
    (default ``dim``); ``attn_dim``: cross-attention width (default ``dim``), split over ``num_heads``;
    ``latent_dim``: size k of the bottleneck (default ``dim``); ``margin``: ε of L_ε; ``temperature``: τ of L_Info."""

    dim: int
    token_dim: int | None = None
    attn_dim: int | None = None
    num_heads: int = 4
    latent_dim: int | None = None
    beta: float = 0.07
    lambda_eps: float = 0.01
    lambda_dir: float = 0.01
    margin: float = 1.0
    temperature: float = 0.07
    query_modality: str = "text"
    gallery_modality: str = "video"

    def __post_init__(self) -> None:
        integer(self.dim, "GARE dim")
        for name in ("token_dim", "attn_dim", "latent_dim"):
            if getattr(self, name) is not None:
                integer(getattr(self, name), f"GARE {name}")
        integer(self.num_heads, "GARE num_heads")
        if self.width % self.num_heads:
            raise ConfigError(
                f"GARE attn_dim ({self.width}) must be divisible by num_heads ({self.num_heads}); "
                "change one of them (e.g. num_heads=1)."
            )
        for name in ("beta", "lambda_eps", "lambda_dir"):
            non_negative(getattr(self, name), f"GARE {name}")
        positive(self.margin, "GARE margin", "(the norm ε beyond which ‖Δ‖ is penalised, e.g. 1.0)")
        positive(self.temperature, "GARE temperature", "(CLIP-style: 0.07)")
        if not all(isinstance(m, str) and m for m in (self.query_modality, self.gallery_modality)):
            raise ConfigError(
                "GARE query_modality and gallery_modality must be non-empty strings, e.g. 'text', 'video'."
            )

    @property
    def tokens(self) -> int:
        return self.token_dim or self.dim

    @property
    def width(self) -> int:
        return self.attn_dim or self.dim

    @property
    def latent(self) -> int:
        return self.latent_dim or self.dim


class GAREOutput(NamedTuple):
    """Per-pair quantities, each (a, b, ·): scores s, increment Δ, bottleneck μ and log σ², gap g."""

    scores: torch.Tensor
    delta: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    gap: torch.Tensor


class GAREHead(RetrievalHead):
    """ψ, the variational bottleneck and the decoder of the module docstring.

    Train it with :func:`~gen_align.retrieval.head_training.train_head` (``head="gare"``), save it with
    :meth:`save_pretrained`, load it with :func:`~gen_align.retrieval.head_training.load_head`; score all pairs
    with :meth:`score`, or re-rank a cosine top-K with :meth:`rerank`.

    Args:
        config: the sizes and loss weights (:class:`GAREConfig`).

    Example:
        The decoder starts at zero, so before training Δ = 0 and GARE scores are plain cosine similarities:

        >>> import torch
        >>> from gen_align.retrieval.gare import GAREConfig, GAREHead
        >>> head = GAREHead(GAREConfig(dim=8, num_heads=2))
        >>> queries, gallery = torch.randn(3, 8), torch.randn(6, 8)
        >>> cosine = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
        >>> torch.allclose(head.score(queries, gallery), cosine, atol=1e-6)
        True
        >>> top = cosine.topk(4, dim=1).indices  # re-rank each query's 4 best candidates
        >>> head.rerank(queries, gallery, top).shape
        torch.Size([3, 4])
    """

    kind = "gare"
    config_class = GAREConfig

    def __init__(self, config: GAREConfig) -> None:
        super().__init__()
        self.config = config
        d, width, k = config.dim, config.width, config.latent
        self.token_norm = nn.LayerNorm(config.tokens)
        self.q_proj = nn.Linear(d, width)
        self.k_proj = nn.Linear(config.tokens, width)
        self.v_proj = nn.Linear(config.tokens, width)
        self.out_proj = nn.Linear(width, d)
        self.h_norm = nn.LayerNorm(d)
        self.mu_proj = nn.Linear(d, k)
        self.logvar_proj = nn.Linear(d, k)
        self.decoder = nn.Linear(k, d, bias=False)
        nn.init.constant_(self.logvar_proj.bias, INITIAL_LOGVAR)
        nn.init.zeros_(self.decoder.weight)

    # --------------------------------------------------------------------------------- validation
    def _param(self) -> torch.Tensor:
        return self.q_proj.weight

    def _embeddings(self, x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
        x = as_embeddings(x, name)
        if x.shape[1] != self.config.dim:
            raise EmbeddingError(
                f"{name}: this GARE head works on {self.config.dim}-d embeddings, got {x.shape[1]}-d; "
                "pass embeddings from the space the head was trained on."
            )
        p = self._param()
        return unit(x, name).to(device=p.device, dtype=p.dtype)

    def _tokens(
        self, gallery: torch.Tensor, tokens: torch.Tensor | np.ndarray | None, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, L, d_tok) tokens and (b, L) boolean mask (True = real token) of the gallery items."""
        b = gallery.shape[0]
        if tokens is None:
            if token_mask is not None:
                raise ConfigError("token_mask given without tokens; pass tokens=(N, L, d_tok) too, or drop token_mask.")
            if self.config.tokens != self.config.dim:
                raise ConfigError(
                    f"this GARE head expects {self.config.tokens}-d gallery token features (token_dim) but none "
                    f"were given; pass tokens=(N, L, {self.config.tokens}), or build the head without token_dim to "
                    "use each gallery embedding as its single token."
                )
            return gallery.unsqueeze(1), torch.ones(b, 1, dtype=torch.bool, device=gallery.device)
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[2] != self.config.tokens or tokens.shape[1] == 0:
            raise EmbeddingError(
                f"tokens: expected shape ({b}, L, {self.config.tokens}) — L ≥ 1 token features of "
                f"{self.config.tokens} dims per gallery item — got {tuple(tokens.shape)}."
            )
        if not tokens.is_floating_point() or not bool(torch.isfinite(tokens).all()):
            raise EmbeddingError("tokens: expected finite floating-point features (no NaN/inf, not integer ids).")
        p = self._param()
        tokens = tokens.to(device=p.device, dtype=p.dtype)
        if token_mask is None:
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=p.device)
        token_mask = torch.as_tensor(token_mask).to(p.device)
        if token_mask.dtype != torch.bool or tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise EmbeddingError(
                f"token_mask: expected a boolean ({b}, {tokens.shape[1]}) tensor (True = real token), got "
                f"{token_mask.dtype} of shape {tuple(token_mask.shape)}."
            )
        empty = ~token_mask.any(dim=1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()[:5].tolist()
            raise EmbeddingError(
                f"token_mask: {int(empty.sum())} gallery item(s) have no real token (first: {rows}); every item "
                "needs at least one (use its clip embedding as a token if it has no frames)."
            )
        return tokens, token_mask

    # -------------------------------------------------------------------------------------- core
    def _keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(…, L, H, d_head) keys and values of the (layer-normalised) tokens."""
        x = self.token_norm(tokens)
        shape = (*x.shape[:-1], self.config.num_heads, self.config.width // self.config.num_heads)
        return self.k_proj(x).view(shape), self.v_proj(x).view(shape)

    def _pairs(
        self,
        t: torch.Tensor,
        v: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        sample: bool,
        generator: torch.Generator | None,
    ) -> GAREOutput:
        """All pairs at once. t (a, d); v (b, d) shared by every query, or (a, b, d) per query; keys/values
        (b, L, H, e) or (a, b, L, H, e); mask (b, L) or (a, b, L)."""
        heads, e = self.config.num_heads, self.config.width // self.config.num_heads
        gap = v - t[:, None, :]  # (a, b, d)
        a, b = gap.shape[:2]
        q = self.q_proj(gap).view(a, b, heads, e)
        shared = keys.ndim == 4
        logits = torch.einsum("abhe,blhe->abhl" if shared else "abhe,ablhe->abhl", q, keys) / math.sqrt(e)
        valid = mask[None, :, None, :] if shared else mask[:, :, None, :]
        attn = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        context = torch.einsum("abhl,blhe->abhe" if shared else "abhl,ablhe->abhe", attn, values)
        h = self.h_norm(gap + self.out_proj(context.reshape(a, b, heads * e)))
        mu, logvar = self.mu_proj(h), self.logvar_proj(h)
        z = mu
        if sample:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * noise
        delta = self.decoder(z)
        scores = F.cosine_similarity(t[:, None, :] + delta, v.expand_as(gap), dim=-1)
        return GAREOutput(scores, delta, mu, logvar, gap)

    def pairwise(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        tokens: torch.Tensor | np.ndarray | None = None,
        token_mask: torch.Tensor | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> GAREOutput:
        """Every (query, gallery item) pair: :class:`GAREOutput` of (Nq, Ng, ·) tensors, with gradients.

        ``sample=False`` uses Δ = W_dec μ (inference); ``sample=True`` draws z = μ + σ ε with ``generator``."""
        t = self._embeddings(queries, "queries")
        v = self._embeddings(gallery, "gallery")
        tokens, token_mask = self._tokens(v, tokens, token_mask)
        keys, values = self._keys_values(tokens)
        return self._pairs(t, v, keys, values, token_mask, sample, generator)

    def training_loss(
        self,
        queries: torch.Tensor,
        gallery: torch.Tensor,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = L_Info + β L_IB + λ_ε L_ε + λ_dir L_dir on one batch of B paired rows (module docstring)."""
        out = self.pairwise(queries, gallery, tokens, token_mask, sample=True, generator=generator)
        c = self.config
        b = out.scores.shape[0]
        if out.scores.shape[1] != b or b < 2:
            raise EmbeddingError(
                f"training needs B ≥ 2 paired rows (row i of queries matches row i of gallery), got "
                f"{b} queries and {out.scores.shape[1]} gallery items."
            )
        logits = out.scores / c.temperature
        target = torch.arange(b, device=logits.device)
        info = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.mT, target))
        kl = gaussian_kl(out.mu, out.logvar).mean() / c.latent
        norm = norm_penalty(out.delta, c.margin).mean()
        positives = torch.arange(b, device=logits.device)
        direction = direction_penalty(out.delta[positives, positives], out.gap[positives, positives]).mean()
        loss = info + c.beta * kl + c.lambda_eps * norm + c.lambda_dir * direction
        logs = {"info": info.detach(), "kl": kl.detach(), "norm": norm.detach(), "dir": direction.detach()}
        return loss, logs

    # --------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def score(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        tokens: torch.Tensor | np.ndarray | None = None,
        token_mask: torch.Tensor | None = None,
        *,
        chunk_size: int = 64,
    ) -> torch.Tensor:
        """Deterministic scores s_ij = cos(t_i + W_dec μ_ij, v_j) of every query against every gallery item.

        Args:
            queries: query embeddings t (Nq, dim). gallery: gallery embeddings v (Ng, dim).
            tokens: gallery token features (Ng, L, token_dim) (default: each item's embedding as its one token).
            token_mask: (Ng, L) booleans, True where a token is present (default: all present).
            chunk_size: queries scored at once (memory ≈ chunk_size · Ng · (d + H·L) floats; for large
                galleries re-rank a top-K with :meth:`rerank`).

        Returns:
            the (Nq, Ng) scores.

        Raises:
            EmbeddingError: embeddings or tokens of the wrong shape or dimension, or non-finite values.
        """
        integer(chunk_size, "chunk_size", hint="It is the number of queries scored against the gallery at once.")
        t = self._embeddings(queries, "queries")
        v = self._embeddings(gallery, "gallery")
        tokens, token_mask = self._tokens(v, tokens, token_mask)
        keys, values = self._keys_values(tokens)
        blocks = [
            self._pairs(t[s : s + chunk_size], v, keys, values, token_mask, False, None).scores
            for s in range(0, t.shape[0], chunk_size)
        ]
        return torch.cat(blocks)

    @torch.no_grad()
    def rerank(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        candidates: torch.Tensor | np.ndarray,
        tokens: torch.Tensor | np.ndarray | None = None,
        token_mask: torch.Tensor | None = None,
        *,
        chunk_size: int = 256,
    ) -> torch.Tensor:
        """Deterministic scores of each query's K candidate gallery items (a two-stage search: e.g. a cosine or
        ANN top-K first, then GARE on those K).

        Args:
            queries: query embeddings (Nq, dim). gallery: gallery embeddings (Ng, dim).
            candidates: (Nq, K) integer gallery indices, one row per query.
            tokens, token_mask: as in :meth:`score`. chunk_size: queries re-ranked at once.

        Returns:
            the (Nq, K) scores, column k for ``candidates[:, k]``; sort each row descending for the new order.

        Raises:
            InputDataError: candidates that are not a (Nq, K) integer array of indices inside the gallery.
            EmbeddingError: as in :meth:`score`.
        """
        integer(chunk_size, "chunk_size", hint="It is the number of queries re-ranked at once.")
        t = self._embeddings(queries, "queries")
        v = self._embeddings(gallery, "gallery")
        candidates = torch.as_tensor(candidates)
        if candidates.ndim != 2 or candidates.shape[0] != t.shape[0] or candidates.shape[1] == 0:
            raise InputDataError(
                f"candidates: expected a ({t.shape[0]}, K) array of gallery indices (one row per query, K ≥ 1), "
                f"got shape {tuple(candidates.shape)}; e.g. cosine_scores(q, g).topk(K).indices."
            )
        if candidates.is_floating_point() or candidates.dtype == torch.bool or candidates.is_complex():
            raise InputDataError(f"candidates: expected integer gallery indices, got dtype {candidates.dtype}.")
        if bool((candidates < 0).any()) or bool((candidates >= v.shape[0]).any()):
            raise InputDataError(
                f"candidates: indices must lie in [0, {v.shape[0]}) (the gallery has {v.shape[0]} items), got "
                f"min {int(candidates.min())}, max {int(candidates.max())}."
            )
        candidates = candidates.long().to(v.device)
        tokens, token_mask = self._tokens(v, tokens, token_mask)
        keys, values = self._keys_values(tokens)
        blocks = []
        for s in range(0, t.shape[0], chunk_size):
            idx = candidates[s : s + chunk_size]
            out = self._pairs(t[s : s + chunk_size], v[idx], keys[idx], values[idx], token_mask[idx], False, None)
            blocks.append(out.scores)
        return torch.cat(blocks)
