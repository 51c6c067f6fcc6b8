"""Query × gallery score functions (higher = better match), as full matrices or as row-block callables.

- ``"cosine"``: query (Q, d), gallery (G, d); cos(q, g).
- ``"volume"``: query (Q, d), gallery [(G, d), ...] or {modality: (G, d)}; −Vol(q, g¹, …, gᵏ), the GRAM
  volume of Eq. 12 (``gram_similarity``).
- ``"centroid"``: query (Q, d), gallery {modality: (G, d)} (+ ``weights``); cos(q, c_g) with the UniAlign
  centroid c_g = normalise(Σ_m w_m ĝ^m) (Eq. 11).
- ``"gravi"``: query (μ_q, σ²_q), gallery (μ_g, σ²_g); A + B + C of ``gravi_score``.

:func:`row_scorer` returns ``f(rows: slice) -> (rows, G)`` for :func:`~gen_align.retrieval.metrics.query_ranks`,
so a large evaluation never holds the full matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gen_align.checks import choice
from gen_align.errors import EmbeddingError
from gen_align.objectives.gram import gram_similarity
from gen_align.objectives.gravi import gravi_score
from gen_align.objectives.uniformity import weighted_centroids
from gen_align.tensors import as_embeddings, check_embedding_dict, normalized_weights, unit, unit_dict

__all__ = ["SCORES", "score", "row_scorer", "cosine_scores", "volume_scores", "centroid_scores", "gravi_scores"]

SCORES = ("cosine", "volume", "centroid", "gravi")


def _same_dim(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise EmbeddingError(
            f"{what}: query dimension {a.shape[1]} differs from gallery dimension {b.shape[1]}; "
            "project both into the same space first."
        )


@torch.no_grad()
def cosine_scores(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(Q, G) cosine similarities of L2-normalised rows, in at least float32."""
    q, g = unit(as_embeddings(query, "query"), "query"), unit(as_embeddings(gallery, "gallery"), "gallery")
    _same_dim(q, g, "cosine")
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype) @ g.to(dtype).mT


def _tuple_modalities(gallery: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(gallery, Mapping):
        return list(gallery.values())
    if isinstance(gallery, torch.Tensor) or not isinstance(gallery, Sequence) or not gallery:
        raise EmbeddingError("volume: gallery must be a non-empty list (or dict) of (G, d) tensors, one per modality.")
    return list(gallery)


@torch.no_grad()
def volume_scores(
    query: torch.Tensor, gallery: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], chunk_size: int | None = None
) -> torch.Tensor:
    """(Q, G) GRAM scores −Vol(q_i, g_j^1, …, g_j^k) (Eq. 12): smaller spanned volume = better match."""
    return gram_similarity(query, _tuple_modalities(gallery), chunk_size=chunk_size)


@torch.no_grad()
def centroid_scores(
    query: torch.Tensor, gallery: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """(Q, G) UniAlign centroid score cos(q_i, c_j), c_j = normalise(Σ_m w_m ĝ_j^m) (Eq. 11), weights
    normalised to sum 1 (uniform by default)."""
    if not isinstance(gallery, Mapping):
        raise EmbeddingError("centroid: gallery must be a dict {modality: (G, d)} of paired gallery embeddings.")
    z = check_embedding_dict(gallery, min_modalities=1)
    centroids = weighted_centroids(unit_dict(z), normalized_weights(weights, list(z), what="centroid weights"))
    return cosine_scores(query, centroids)


@torch.no_grad()
def gravi_scores(
    query: tuple[torch.Tensor, torch.Tensor],
    gallery: tuple[torch.Tensor, torch.Tensor],
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(Q, G) GraviAlign score A + B + C between diagonal Gaussians ``(mean, variance)`` (``gravi_score``)."""
    for name, pair in (("query", query), ("gallery", gallery)):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise EmbeddingError(f"gravi: {name} must be a (mean, variance) pair of (N, d) tensors.")
    return gravi_score(query[0], query[1], gallery[0], gallery[1], temperature=temperature, chunk_size=chunk_size)


_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "cosine": cosine_scores,
    "volume": volume_scores,
    "centroid": centroid_scores,
    "gravi": gravi_scores,
}


def score(method: str, query: Any, gallery: Any, **kwargs: Any) -> torch.Tensor:
    """The (Q, G) score matrix of ``method`` ∈ :data:`SCORES`; inputs as in the module docstring."""
    return _FUNCTIONS[choice(method, "score method", SCORES)](query, gallery, **kwargs)


def _query_rows(method: str, query: Any) -> tuple[int, Callable[[slice], Any]]:
    if method == "gravi":
        if not (isinstance(query, tuple | list) and len(query) == 2):
            raise EmbeddingError("gravi: query must be a (mean, variance) pair of (N, d) tensors.")
        mean, var = as_embeddings(query[0], "mu_q"), as_embeddings(query[1], "var_q")
        return mean.shape[0], lambda rows: (mean[rows], var[rows])
    q = as_embeddings(query, "query")
    return q.shape[0], lambda rows: q[rows]


def row_scorer(method: str, query: Any, gallery: Any, **kwargs: Any) -> tuple[Callable[[slice], torch.Tensor], int]:
    """``(f, Q)`` with ``f(rows) = score(method, query[rows], gallery)``: one block of score rows at a time,
    for ``query_ranks(f, gt, num_queries=Q)``. Gallery-side work (normalisation, centroids) is done once."""
    choice(method, "score method", SCORES)
    count, take = _query_rows(method, query)
    if method == "cosine":
        gallery = unit(as_embeddings(gallery, "gallery"), "gallery")
    elif method == "centroid":
        if not isinstance(gallery, Mapping):
            raise EmbeddingError("centroid: gallery must be a dict {modality: (G, d)} of paired gallery embeddings.")
        z = check_embedding_dict(gallery, min_modalities=1)
        gallery = weighted_centroids(unit_dict(z), normalized_weights(kwargs.pop("weights", None), list(z)))
        method = "cosine"
    fn = _FUNCTIONS[method]

    def rows_fn(rows: slice) -> torch.Tensor:
        return fn(take(rows), gallery, **kwargs)

    return rows_fn, count
