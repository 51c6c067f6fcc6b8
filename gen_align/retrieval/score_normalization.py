"""Hubness corrections of a query × gallery score matrix that InvGC is compared against (higher = better match).

- :func:`inverted_softmax` (IS, QB-Norm's building block): ``exp(β s(q, g)) / Σ_{b ∈ B} exp(β s(b, g))`` with a bank
  ``B`` of training queries scored against the same gallery; a gallery item that every query finds close (a hub) is
  divided by a large sum.
- :func:`querybank_norm` (QB-Norm with the dynamic inverted softmax, Bogolin et al., CVPR 2022): IS only for the test
  queries whose top-1 gallery item is in the activation set (the items some bank query retrieves in its top ``k``);
  the other rows keep their scores. Defaults β = 20, k = 1, as the reference ``dynamic_inverted_softmax.py``.
- :func:`db_norm` (DBNorm, Wang et al., EMNLP 2023, "Balance Act"): the product of IS (or the dynamic IS) against a
  query bank (β₁ = 1/1.99) and against a gallery bank (β₂ = 3), the defaults of the authors' ``dbnorm.py``. That file
  passes the gallery bank's own scores where the test scores belong in its first call, so its result never depends
  on the test queries; here both factors normalise the test scores, as the method describes.
- :func:`dual_softmax` (the inference form of the dual softmax of Cheng et al., 2021): ``s(q, g) · softmax_q(s/T)``,
  a prior over the queries of each gallery item (× the number of queries, which does not change a ranking).

Every value is computed as ``exp(β s − logsumexp(β s_B))`` in float64: the reference's quotients, without overflow.
Inputs are ``(Q, G)`` score matrices (cosine similarities for the defaults); banks share the gallery columns.
"""

from __future__ import annotations

import numpy as np
import torch

from gen_align.checks import integer, positive
from gen_align.errors import EmbeddingError

Scores = torch.Tensor | np.ndarray


def _matrix(scores: Scores, name: str) -> torch.Tensor:
    s = torch.as_tensor(scores).double()
    if s.dim() != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise EmbeddingError(f"{name} must be a non-empty (queries, gallery) score matrix, got shape {tuple(s.shape)}.")
    if not bool(torch.isfinite(s).all()):
        raise EmbeddingError(f"{name} has NaN/inf scores; check the embeddings that produced it.")
    return s


def _banked(scores: Scores, bank: Scores, bank_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s, b = _matrix(scores, "scores"), _matrix(bank, bank_name)
    if b.shape[1] != s.shape[1]:
        raise EmbeddingError(
            f"{bank_name} scores {b.shape[1]} gallery items but the test scores {s.shape[1]}; score the bank against "
            "the same gallery (its columns must be the test gallery's)."
        )
    return s, b


def inverted_softmax(scores: Scores, bank: Scores, beta: float = 20.0) -> torch.Tensor:
    """IS: ``exp(β s[q, g]) / Σ_b exp(β bank[b, g])`` for every test query (see the module docstring)."""
    s, b = _banked(scores, bank, "bank")
    beta = positive(beta, "beta")
    return torch.exp(beta * s - torch.logsumexp(beta * b, dim=0, keepdim=True))


def activation_set(bank: Scores, k: int = 1) -> torch.Tensor:
    """(G,) bool: the gallery items some bank query ranks in its top ``k``."""
    b = _matrix(bank, "bank")
    k = integer(k, "k", 1, f"It is at most the gallery size {b.shape[1]}.")
    active = torch.zeros(b.shape[1], dtype=torch.bool)
    active[b.topk(min(k, b.shape[1]), dim=1).indices.reshape(-1)] = True
    return active


def querybank_norm(scores: Scores, bank: Scores, beta: float = 20.0, k: int = 1) -> torch.Tensor:
    """QB-Norm's dynamic inverted softmax: IS for the rows whose top-1 item is in :func:`activation_set`, the raw
    scores for the others (each row stays one scale, so rankings are well defined)."""
    s, b = _banked(scores, bank, "bank")
    normalise = activation_set(b, k)[s.argmax(dim=1)]
    return torch.where(normalise[:, None], inverted_softmax(s, b, beta), s)


def db_norm(
    scores: Scores,
    query_bank: Scores,
    gallery_bank: Scores,
    *,
    beta_query: float = 1 / 1.99,
    beta_gallery: float = 3.0,
    dynamic: bool = False,
    k: int = 1,
) -> torch.Tensor:
    """DBNorm: IS against the query bank (training queries × test gallery) times IS against the gallery bank
    (training gallery items × test gallery); ``dynamic`` uses QB-Norm's dynamic form for each factor."""
    s, qb = _banked(scores, query_bank, "query_bank")
    _, gb = _banked(s, gallery_bank, "gallery_bank")
    if dynamic:
        return querybank_norm(s, qb, beta_query, k) * querybank_norm(s, gb, beta_gallery, k)
    return inverted_softmax(s, qb, beta_query) * inverted_softmax(s, gb, beta_gallery)


def dual_softmax(scores: Scores, temperature: float = 0.01) -> torch.Tensor:
    """``s · softmax over the queries of s / T · Q``: each gallery item's scores weighted by how much more this query
    than the others claims it. ``T`` = 0.01 (CLIP's logit scale 100) by default; the reference learns it."""
    s = _matrix(scores, "scores")
    temperature = positive(temperature, "temperature")
    return s * torch.softmax(s / temperature, dim=0) * s.shape[0]
