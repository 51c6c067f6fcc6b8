"""GARE (gare.txt: "Rebalancing Contrastive Alignment with Bottlenecked Semantic Increments"): a pair-specific
increment Δ_ij, computed by a small cross-attention module ψ from the pair's gap and the gallery item's frames,
moves one side of the pair before it is scored; used as a re-ranker of a cosine (ANN) top-K.

Query t_i (d), gallery item j given as an embedding v_j (d) or as frames F_j (f_j, d), both unnormalised:

    frames:     C_j = F_j + Enc(F_j + P)   the temporal transformer (CLIP4Clip's seqTransf: learned frame
                                           positions P, ``temporal_layers`` pre-LN self-attention layers, the
                                           frames' residual);   v_j = mean of C_j over the item's real frames
    embedding:  C_j = [v_j]                one token: the attention weight is 1 and W_q has no effect (the
                                           attention output W_o W_v LN(v_j) is computed once per item); Δ still
                                           depends on the pair through the FFN, which reads g_ij + attention
    g_ij = o − r                           the gap, from the side r that receives Δ to the other side o
                                           (``delta_side="query"``: r = t_i, o = v_j, the paper's query v_j − t_i)
    ψ, one pre-LN cross-attention transformer layer whose FFN keeps the width d (no 4× expansion):
      x_ij = g_ij + W_o MHA(q = LN_q(g_ij), k = v = LN_c(C_j))
      y_ij = x_ij + W_2 GELU(W_1 LN_f(x_ij))
    Δ_ij = y_ij − g_ij                     the increment is what the layer adds to its query
    s_ij = cos(t_i + Δ_ij, v_j)            (``delta_side="gallery"``: cos(t_i, v_j + Δ_ij))

Why Δ = y − g and not y: the layer's output itself would be ≈ v_j − t_i, making t_i + Δ ≈ v_j and every score ≈ 1;
the rebuttal reports ‖Δ‖ ≈ 3.3 against ‖t‖ ≈ 11 and a deviation |cos(t + Δ, v) − cos(t, v)| ≲ ‖Δ‖/‖t‖ ≈ 0.3, a
small increment, which is the layer's update to its query.

Training on a batch of B pairs (diagonal = positives), Δ deterministic:

    L_Info = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)]
    L_IB   = 1/(B d) Σ_j KL(N(μ_j, σ_j²) ‖ N(0, I)),  μ_j, σ_j² = mean, variance over the batch's queries of Δ_ij
             (the rebuttal's video-conditioned bottleneck p(Δ_ij | v_j), the texts its Monte Carlo draws; per
             dimension, see :func:`~gen_align.retrieval.gare_losses.video_conditioned_kl` for why)
    L_ε    = 1/B² Σ_ij max(0, ‖Δ_ij‖/‖r‖ − ρ)²       trust region: Δ stays within ρ times its anchor's length
    L_dir  = mean over anchors r of the mean cos(Δ_r·j, Δ_r·k), j ≠ k    directional diversity
    L      = L_Info + β L_IB + λ_ε L_ε + λ_dir L_dir;   β = 0.07, λ_ε = λ_dir = 0.01 (MSR-VTT), ρ = 0.3, τ = 0.07

Derived forms (the paper's main text, not in ../shared/papers, names them without formulas): L_ε — the rebuttal
derives Δ under a trust-region constraint ‖Δ‖ ≤ ε; with unnormalised embeddings the radius is taken relative to
the anchor (ρ = 0.3 ≈ the rebuttal's 3.31 / 11.0), so λ_ε means the same on every dataset. L_dir — "directional
diversity": an anchor whose increments to all partners point one way is shifted globally (the modality gap,
which GARE does not aim to close); the mean pairwise cosine of its increments, 1/(n(n−1)) Σ_{j≠k} cos, is low when
they spread. It is computed in O(B²d) as (‖Σ_j Δ̂_ij‖² − n)/(n(n−1)).

Variants behind options (the module's earlier behaviour): ``ffn=False`` (attention only); ``bottleneck="pair"`` (a
per-pair Gaussian z_ij = μ_ij + σ_ij ε from ψ's increment, Δ = W_dec z, KL to N(0, I) per latent dimension,
sampled in training, μ at inference, W_dec zero-initialised); ``direction="gap"`` (L_dir = ‖Δ‖(1 − cos(Δ, g)) on
the positives); ``normalize=True`` (t and v L2-normalised first). Memory of a block: O(a · b · (d + H·L)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gen_align.checks import choice, flag, integer, non_negative, positive
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.retrieval.gare_losses import (
    directional_diversity,
    gap_alignment_penalty,
    gaussian_kl,
    trust_region_penalty,
    video_conditioned_kl,
)
from gen_align.retrieval.head_training import RetrievalHead, check_candidates
from gen_align.tensors import as_embeddings, unit

__all__ = ["GAREConfig", "GAREHead", "GAREOutput", "GalleryContext", "DELTA_SIDES", "BOTTLENECKS", "DIRECTIONS"]

DELTA_SIDES = ("query", "gallery")
BOTTLENECKS = ("video", "pair")
DIRECTIONS = ("diversity", "gap")
INITIAL_LOGVAR = -4.0  # the "pair" bottleneck's σ starts at ≈ 0.14


@dataclass(frozen=True)
class GAREConfig:
    """``dim``: the embedding (and frame) size; ``attn_dim``: cross-attention width (default ``dim``) split over
    ``num_heads``; ``temporal_layers``/``temporal_heads``/``max_frames``: the temporal transformer over frames
    (used only when frames are given); ``delta_side``: which side Δ is added to; ``trust_radius``: ρ of L_ε;
    ``temperature``: τ of L_Info; ``ffn``, ``bottleneck``, ``latent_dim`` (the "pair" bottleneck's size k),
    ``direction``, ``normalize``: the variants of the module docstring."""

    dim: int
    attn_dim: int | None = None
    num_heads: int = 4
    temporal_layers: int = 4
    temporal_heads: int | None = None
    max_frames: int = 12
    delta_side: str = "query"
    ffn: bool = True
    bottleneck: str = "video"
    latent_dim: int | None = None
    direction: str = "diversity"
    normalize: bool = False
    beta: float = 0.07
    lambda_eps: float = 0.01
    lambda_dir: float = 0.01
    trust_radius: float = 0.3
    temperature: float = 0.07
    query_modality: str = "text"
    gallery_modality: str = "video"

    def __post_init__(self) -> None:
        integer(self.dim, "GARE dim")
        for name in ("attn_dim", "latent_dim", "temporal_heads"):
            if getattr(self, name) is not None:
                integer(getattr(self, name), f"GARE {name}")
        integer(self.num_heads, "GARE num_heads")
        integer(self.temporal_layers, "GARE temporal_layers", low=0)
        integer(self.max_frames, "GARE max_frames")
        for width, heads, what in ((self.width, self.num_heads, "attn_dim"), (self.dim, self.frame_heads, "dim")):
            if width % heads:
                raise ConfigError(
                    f"GARE {what} ({width}) must be divisible by its number of heads ({heads}); change one of them "
                    "(num_heads for the cross-attention, temporal_heads for the temporal transformer)."
                )
        choice(self.delta_side, "GARE delta_side", DELTA_SIDES)
        choice(self.bottleneck, "GARE bottleneck", BOTTLENECKS)
        choice(self.direction, "GARE direction", DIRECTIONS)
        flag(self.ffn, "GARE ffn")
        flag(self.normalize, "GARE normalize")
        for name in ("beta", "lambda_eps", "lambda_dir"):
            non_negative(getattr(self, name), f"GARE {name}")
        positive(self.trust_radius, "GARE trust_radius", "(ρ: ‖Δ‖ beyond ρ·‖anchor‖ is penalised, e.g. 0.3)")
        positive(self.temperature, "GARE temperature", "(CLIP-style: 0.07)")
        if not all(isinstance(m, str) and m for m in (self.query_modality, self.gallery_modality)):
            raise ConfigError(
                "GARE query_modality and gallery_modality must be non-empty strings, e.g. 'text', 'video'."
            )

    @property
    def width(self) -> int:
        return self.attn_dim or self.dim

    @property
    def frame_heads(self) -> int:
        return self.temporal_heads or self.num_heads

    @property
    def latent(self) -> int:
        return self.latent_dim or self.dim


class GAREOutput(NamedTuple):
    """Per-pair quantities, each (a, b, ·): scores s, increment Δ, gap g; μ and log σ² of the "pair" bottleneck
    (None for the paper's video-conditioned one, whose statistics are taken over the batch in the loss)."""

    scores: torch.Tensor
    delta: torch.Tensor
    gap: torch.Tensor
    mu: torch.Tensor | None
    logvar: torch.Tensor | None


class GalleryContext(NamedTuple):
    """The gallery side of ψ: embeddings v (b, d), context tokens C (b, L, d) and their mask (b, L)."""

    embeddings: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def take(self, index: torch.Tensor) -> GalleryContext:
        """The rows ``index`` (any integer shape) of every field."""
        return GalleryContext(self.embeddings[index], self.tokens[index], self.mask[index])


class TemporalTransformer(nn.Module):
    """C = F + Enc(F + P) over an item's frames (CLIP4Clip's seqTransf), padding masked out."""

    def __init__(self, config: GAREConfig) -> None:
        super().__init__()
        d = config.dim
        self.positions = nn.Parameter(torch.zeros(config.max_frames, d))
        nn.init.normal_(self.positions, std=0.01)
        layer = nn.TransformerEncoderLayer(
            d, config.frame_heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = frames + self.positions[: frames.shape[1]]
        return frames + self.encoder(x, src_key_padding_mask=~mask)


class GAREHead(RetrievalHead):
    """The temporal transformer, ψ and (for ``bottleneck="pair"``) the per-pair Gaussian of the module docstring.

    Train it with :func:`~gen_align.retrieval.head_training.train_head` (``head="gare"``), save it with
    :meth:`save_pretrained`, load it with :func:`~gen_align.retrieval.head_training.load_head`; score all pairs
    with :meth:`score`, or re-rank a cosine top-K with :meth:`rerank`. The gallery is an (N, d) embedding matrix or
    (N, f, d) frames (with an optional (N, f) ``frame_mask``, True = a real frame); with frames the static
    embeddings a first-stage index should hold are :meth:`gallery_embeddings`.

    Args:
        config: the sizes, variants and loss weights (:class:`GAREConfig`).

    Example:
        >>> import torch
        >>> from gen_align.retrieval.gare import GAREConfig, GAREHead
        >>> head = GAREHead(GAREConfig(dim=8, num_heads=2, temporal_layers=1))
        >>> queries, videos = torch.randn(3, 8), torch.randn(6, 5, 8)  # 6 videos of 5 frames
        >>> head.score(queries, videos).shape
        torch.Size([3, 6])
        >>> static = head.gallery_embeddings(videos)  # what the first stage indexes
        >>> cosine = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(static, dim=1).T
        >>> top = cosine.topk(4, dim=1).indices  # re-rank each query's 4 best candidates
        >>> head.rerank(queries, videos, top).shape
        torch.Size([3, 4])
    """

    kind = "gare"
    config_class = GAREConfig
    accepts_frames = True

    def __init__(self, config: GAREConfig) -> None:
        super().__init__()
        self.config = config
        self.step_size_diagnostics = False  # set True to log |η − α| per step (:meth:`after_step`)
        self._last_batch: tuple | None = None
        d, width = config.dim, config.width
        self.temporal = TemporalTransformer(config) if config.temporal_layers else None
        self.query_norm = nn.LayerNorm(d)
        self.context_norm = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, width)
        self.k_proj = nn.Linear(d, width)
        self.v_proj = nn.Linear(d, width)
        self.out_proj = nn.Linear(width, d)
        if config.ffn:
            self.ffn_norm = nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        if config.bottleneck == "pair":
            k = config.latent
            self.mu_proj = nn.Linear(d, k)
            self.logvar_proj = nn.Linear(d, k)
            self.decoder = nn.Linear(k, d, bias=False)
            nn.init.constant_(self.logvar_proj.bias, INITIAL_LOGVAR)
            nn.init.zeros_(self.decoder.weight)

    # --------------------------------------------------------------------------------- validation
    def _param(self) -> torch.Tensor:
        return self.q_proj.weight

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        p = self._param()
        return x.to(device=p.device, dtype=p.dtype)

    def _queries(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = as_embeddings(x, "queries")
        self._check_dim(x.shape[-1], "queries")
        return self._cast(unit(x, "queries") if self.config.normalize else self._finite(x, "queries"))

    def _check_dim(self, dim: int, name: str) -> None:
        if dim != self.config.dim:
            raise EmbeddingError(
                f"{name}: this GARE head works on {self.config.dim}-d embeddings, got {dim}-d; "
                "pass embeddings from the space the head was trained on."
            )

    @staticmethod
    def _finite(x: torch.Tensor, name: str) -> torch.Tensor:
        if not bool(torch.isfinite(x).all()):
            raise EmbeddingError(f"{name}: holds NaN/inf values; fix or drop those rows.")
        norms = torch.linalg.vector_norm(x.detach(), dim=-1)
        if bool((norms == 0).any()):
            raise EmbeddingError(
                f"{name}: {int((norms == 0).sum())} all-zero row(s); such an embedding has no direction."
            )
        return x

    def _frames(
        self, frames: torch.Tensor | np.ndarray, frame_mask: torch.Tensor | np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.as_tensor(frames)
        n, f = frames.shape[:2]
        if not frames.is_floating_point() or f == 0 or n == 0:
            raise EmbeddingError(
                f"gallery frames: expected floating-point (N, f, {self.config.dim}) features with f ≥ 1, got "
                f"{frames.dtype} of shape {tuple(frames.shape)}."
            )
        self._check_dim(frames.shape[2], "gallery frames")
        if self.temporal is not None and f > self.config.max_frames:
            raise EmbeddingError(
                f"gallery frames: {f} frames per item, but the temporal transformer has positions for "
                f"{self.config.max_frames}; sample at most {self.config.max_frames} frames (or build the head "
                f"with max_frames={f})."
            )
        if not bool(torch.isfinite(frames).all()):
            raise EmbeddingError("gallery frames: hold NaN/inf values; fix or drop those items.")
        frames = self._cast(frames)
        if frame_mask is None:
            return frames, torch.ones(n, f, dtype=torch.bool, device=frames.device)
        mask = torch.as_tensor(frame_mask).to(frames.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != (n, f):
            raise EmbeddingError(
                f"frame_mask: expected a boolean ({n}, {f}) tensor (True = a real frame), got {mask.dtype} of shape "
                f"{tuple(mask.shape)}."
            )
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()[:5].tolist()
            raise EmbeddingError(
                f"frame_mask: {int(empty.sum())} gallery item(s) have no real frame (first: {rows}); every item "
                "needs at least one (pass its clip embedding as a one-frame item if it has no frames)."
            )
        return frames, mask

    def gallery_context(
        self, gallery: torch.Tensor | np.ndarray, frame_mask: torch.Tensor | np.ndarray | None = None
    ) -> GalleryContext:
        """v, C and the mask of the module docstring for an (N, d) embedding matrix or (N, f, d) frames."""
        if torch.as_tensor(gallery).ndim != 3:
            if frame_mask is not None:
                raise ConfigError("frame_mask given with (N, d) gallery embeddings; it applies to (N, f, d) frames.")
            v = as_embeddings(gallery, "gallery")
            self._check_dim(v.shape[-1], "gallery")
            v = self._cast(unit(v, "gallery") if self.config.normalize else self._finite(v, "gallery"))
            return GalleryContext(v, v.unsqueeze(1), torch.ones(v.shape[0], 1, dtype=torch.bool, device=v.device))
        frames, mask = self._frames(gallery, frame_mask)
        tokens = frames if self.temporal is None else self.temporal(frames, mask)
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        v = (tokens * weights).sum(dim=1) / weights.sum(dim=1)
        v = unit(v, "gallery") if self.config.normalize else self._finite(v, "gallery embeddings (frame means)")
        return GalleryContext(v, tokens, mask)

    @torch.no_grad()
    def gallery_embeddings(
        self, gallery: torch.Tensor | np.ndarray, frame_mask: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """The static gallery embeddings v (N, d) — the frame means after the temporal transformer — that a
        first-stage (ANN) index holds; their norms are kept (GARE's scores depend on them)."""
        return self.gallery_context(gallery, frame_mask).embeddings

    # -------------------------------------------------------------------------------------- core
    def _pairs(
        self, t: torch.Tensor, context: GalleryContext, sample: bool, generator: torch.Generator | None
    ) -> GAREOutput:
        """All pairs at once: t (a, d); context fields (b, ·) shared by every query or (a, b, ·) per query."""
        c = self.config
        heads, e = c.num_heads, c.width // c.num_heads
        v, tokens, mask = context
        query_side = c.delta_side == "query"
        t_pairs = t[:, None, :]
        gap = v - t_pairs if query_side else t_pairs - v  # (a, b, d)
        a, b = gap.shape[:2]
        ctx = self.context_norm(tokens)
        if tokens.shape[-2] == 1:  # one key: every attention weight is exactly 1, the output is its value
            delta = self.out_proj(self.v_proj(ctx.squeeze(-2))).expand_as(gap)
        else:
            q = self.q_proj(self.query_norm(gap)).view(a, b, heads, e)
            shape = (*ctx.shape[:-1], heads, e)
            keys, values = self.k_proj(ctx).view(shape), self.v_proj(ctx).view(shape)
            shared = keys.ndim == 4
            logits = torch.einsum("abhe,blhe->abhl" if shared else "abhe,ablhe->abhl", q, keys) / math.sqrt(e)
            valid = mask[None, :, None, :] if shared else mask[:, :, None, :]
            attn = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
            attended = torch.einsum("abhl,blhe->abhe" if shared else "abhl,ablhe->abhe", attn, values)
            delta = self.out_proj(attended.reshape(a, b, heads * e))
        if c.ffn:
            delta = delta + self.ffn(self.ffn_norm(gap + delta))
        mu = logvar = None
        if c.bottleneck == "pair":
            mu, logvar = self.mu_proj(delta), self.logvar_proj(delta)
            z = mu
            if sample:
                noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                z = mu + torch.exp(0.5 * logvar) * noise
            delta = self.decoder(z)
        v_pairs = v.expand_as(gap)
        if query_side:
            scores = F.cosine_similarity(t_pairs + delta, v_pairs, dim=-1)
        else:
            scores = F.cosine_similarity(t_pairs.expand_as(gap), v_pairs + delta, dim=-1)
        return GAREOutput(scores, delta, gap, mu, logvar)

    def pairwise(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        frame_mask: torch.Tensor | np.ndarray | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> GAREOutput:
        """Every (query, gallery item) pair: :class:`GAREOutput` of (Nq, Ng, ·) tensors, with gradients.

        ``sample`` draws the "pair" bottleneck's z = μ + σ ε with ``generator`` (the paper's Δ is deterministic)."""
        return self._pairs(self._queries(queries), self.gallery_context(gallery, frame_mask), sample, generator)

    def training_loss(
        self,
        queries: torch.Tensor,
        gallery: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = L_Info + β L_IB + λ_ε L_ε + λ_dir L_dir on one batch of B paired rows (module docstring)."""
        c = self.config
        t, context = self._queries(queries), self.gallery_context(gallery, frame_mask)
        out = self._pairs(t, context, True, generator)
        b = out.scores.shape[0]
        if out.scores.shape[1] != b or b < 2:
            raise EmbeddingError(
                f"training needs B ≥ 2 paired rows (row i of queries matches row i of gallery), got "
                f"{b} queries and {out.scores.shape[1]} gallery items."
            )
        logits = out.scores / c.temperature
        target = torch.arange(b, device=logits.device)
        info = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.mT, target))
        if c.bottleneck == "video":
            kl = video_conditioned_kl(out.delta)
        else:
            kl = gaussian_kl(out.mu, out.logvar).mean() / c.latent
        query_side = c.delta_side == "query"
        if query_side:
            anchor_norm = torch.linalg.vector_norm(t, dim=-1)[:, None]
        else:
            anchor_norm = torch.linalg.vector_norm(context.embeddings, dim=-1)[None, :]
        norm = trust_region_penalty(out.delta, anchor_norm, c.trust_radius).mean()
        if c.direction == "diversity":
            direction = directional_diversity(out.delta, anchor_dim=0 if query_side else 1)
        else:
            direction = gap_alignment_penalty(out.delta[target, target], out.gap[target, target]).mean()
        loss = info + c.beta * kl + c.lambda_eps * norm + c.lambda_dir * direction
        logs = {"info": info.detach(), "kl": kl.detach(), "norm": norm.detach(), "dir": direction.detach()}
        if self.step_size_diagnostics:
            if c.bottleneck != "video":
                raise ConfigError("step-size diagnostics need the deterministic Δ of bottleneck='video'.")
            out.delta.retain_grad()
            self._last_batch = (queries, gallery, frame_mask, out.delta)
        return loss, logs

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """The rebuttal's step-size error |η − α| (its "Q1: Error Analysis") of the step just taken, mean over the
        positive pairs and over the negatives of the last batch (with ``step_size_diagnostics`` on):

            ĝ = ∇_Δ L / ‖∇_Δ L‖ (the gradient of the whole loss at Δ⁽ᵗ⁾),  ε = ‖Δ⁽ᵗ⁺¹⁾‖ (Δ recomputed after the step)
            α = Δ⁽ᵗ⁾ᵀĝ + √((Δ⁽ᵗ⁾ᵀĝ)² − ‖Δ⁽ᵗ⁾‖² + ε²)   the trust-region step that lands on ‖Δ‖ = ε
            η = ‖Δ⁽ᵗ⁺¹⁾ − Δ⁽ᵗ⁾‖                      the step the optimiser took through ψ

        Pairs with a zero gradient or no real root (the sphere ‖Δ‖ = ε misses the line Δ − αĝ) are left out."""
        if self._last_batch is None:
            return {}
        queries, gallery, frame_mask, delta = self._last_batch
        self._last_batch = None
        if delta.grad is None:
            return {}
        before, grad = delta.detach(), delta.grad
        after = self._pairs(self._queries(queries), self.gallery_context(gallery, frame_mask), False, None).delta
        grad_norm = torch.linalg.vector_norm(grad, dim=-1)
        along = (before * grad).sum(-1) / grad_norm.clamp_min(torch.finfo(grad.dtype).tiny)
        radius = torch.linalg.vector_norm(after, dim=-1)
        disc = along.square() - before.square().sum(-1) + radius.square()
        alpha = along + disc.clamp_min(0).sqrt()
        eta = torch.linalg.vector_norm(after - before, dim=-1)
        valid = (grad_norm > 0) & (disc >= 0)
        positive = torch.eye(valid.shape[0], valid.shape[1], dtype=torch.bool, device=valid.device)
        error = (eta - alpha).abs()
        out = {}
        for name, mask in (("step_err_pos", valid & positive), ("step_err_neg", valid & ~positive)):
            if bool(mask.any()):
                out[name] = float(error[mask].mean())
        return out

    # --------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def score(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        frame_mask: torch.Tensor | np.ndarray | None = None,
        *,
        chunk_size: int = 64,
    ) -> torch.Tensor:
        """Scores s_ij of every query against every gallery item (the "pair" bottleneck at its mean).

        Args:
            queries: query embeddings t (Nq, dim). gallery: embeddings (Ng, dim) or frames (Ng, f, dim).
            frame_mask: (Ng, f) booleans, True where a frame is present (default: all present).
            chunk_size: queries scored at once (memory ≈ chunk_size · Ng · (d + H·L) floats; for large
                galleries re-rank a top-K with :meth:`rerank`).

        Returns:
            the (Nq, Ng) scores.

        Raises:
            EmbeddingError: embeddings or frames of the wrong shape or dimension, or non-finite values.
        """
        integer(chunk_size, "chunk_size", hint="It is the number of queries scored against the gallery at once.")
        t = self._queries(queries)
        context = self.gallery_context(gallery, frame_mask)
        return torch.cat(
            [self._pairs(t[s : s + chunk_size], context, False, None).scores for s in _starts(t, chunk_size)]
        )

    @torch.no_grad()
    def rerank(
        self,
        queries: torch.Tensor | np.ndarray,
        gallery: torch.Tensor | np.ndarray,
        candidates: torch.Tensor | np.ndarray,
        frame_mask: torch.Tensor | np.ndarray | None = None,
        *,
        chunk_size: int = 256,
    ) -> torch.Tensor:
        """Scores of each query's K candidate gallery items (the second stage of a two-stage search: a cosine
        or ANN top-K over :meth:`gallery_embeddings` first, then GARE on those K).

        Args:
            queries: query embeddings (Nq, dim). gallery: embeddings (Ng, dim) or frames (Ng, f, dim).
            candidates: (Nq, K) integer gallery indices, one row per query.
            frame_mask: as in :meth:`score`. chunk_size: queries re-ranked at once.

        Returns:
            the (Nq, K) scores, column k for ``candidates[:, k]``; sort each row descending for the new order.

        Raises:
            InputDataError: candidates that are not a (Nq, K) integer array of indices inside the gallery.
            EmbeddingError: as in :meth:`score`.
        """
        integer(chunk_size, "chunk_size", hint="It is the number of queries re-ranked at once.")
        t = self._queries(queries)
        context = self.gallery_context(gallery, frame_mask)
        candidates = check_candidates(candidates, t.shape[0], context.embeddings.shape[0]).to(t.device)
        blocks = [
            self._pairs(t[s : s + chunk_size], context.take(candidates[s : s + chunk_size]), False, None).scores
            for s in _starts(t, chunk_size)
        ]
        return torch.cat(blocks)


def _starts(t: torch.Tensor, chunk_size: int) -> range:
    return range(0, t.shape[0], chunk_size)
