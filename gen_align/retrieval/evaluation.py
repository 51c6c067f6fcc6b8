"""Paired retrieval (query i ↔ gallery item i) with every post-processing, score normalisation and head side by
side, in the InvGC paper's table layout (R@1/5/10, MdR, MnR; Tables 1–2 similarity measures).

Rows, with the paired train banks where a method needs them:

- ``cosine``.
- ``+AvgPool (p=…%)`` for p ∈ {10, 25, 50, 100} (InvGC App. C.4: binary adjacency on the top p % of each bank, r_g
  and r_q tuned independently as for InvGC, Sec. 4.1). The message here is the neighbours' mean (weights 1/k):
  C.4's weight 1 at rate r is this at rate r·k, so one rate grid serves every p; ``r_g_paper``/``r_q_paper`` give
  the rates in C.4's scale.
- ``+InvGC``, ``+InvGC w/ LocalAdj`` (:mod:`gen_align.retrieval.invgc`).
- ``+IS``, ``+QB-Norm``, ``+DBNorm`` (banks: the train queries and train gallery scored against the test gallery),
  ``+DSL`` (the test scores alone) — :mod:`gen_align.retrieval.score_normalization`.
- one row per trained head over the whole gallery, and ``… two-stage`` rows: a cosine top-K re-ranked by the head
  (the rebuttal's two-stage search), with the coverage C_K (the share of the head's full-gallery top-10 inside
  the cosine top-K) and, for GARE, the deviation |s_GARE − cos| over all pairs (mean, P95).

Rows that change the gallery's embeddings also report InvGC's Table 1 (``gallery``: the gallery within itself) and
Table 2 (``gallery_query``: the gallery against the test queries, each item's own query excluded): MeanSim,
MeanSim@1 (= Δ_deg) and MeanSim@10 from :func:`gen_align.diagnostics.similarity_measures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gen_align.checks import integer, positive
from gen_align.diagnostics import similarity_measures
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.retrieval.head_training import RetrievalHead
from gen_align.retrieval.invgc import DEFAULT_R_GRID, check_rate, invgc, neighbour_count, tune_invgc
from gen_align.retrieval.metrics import GroundTruth, retrieval_metrics
from gen_align.retrieval.score_normalization import db_norm, dual_softmax, inverted_softmax, querybank_norm
from gen_align.tensors import as_embeddings, unit

__all__ = [
    "AVGPOOL_PERCENTS",
    "POSTPROCESSING",
    "compare_postprocessing",
    "compare_score_normalizations",
    "compare_heads",
    "evaluate_retrieval",
    "validation_split",
    "two_stage_ranking",
]

AVGPOOL_PERCENTS = (10.0, 25.0, 50.0, 100.0)
# The InvGC rows: name → adjacency (None = plain cosine); AvgPool rows are added per p.
POSTPROCESSING = {"cosine": None, "+InvGC": "full", "+InvGC w/ LocalAdj": "local"}
Array = torch.Tensor | np.ndarray


def _pair(query: Array, gallery: Array) -> tuple[torch.Tensor, torch.Tensor]:
    q = unit(as_embeddings(query, "query"), "query").detach()
    g = unit(as_embeddings(gallery, "gallery"), "gallery").detach().to(q.dtype)
    if q.shape[1] != g.shape[1]:
        raise EmbeddingError(f"query dimension {q.shape[1]} differs from gallery dimension {g.shape[1]}.")
    return q, g


def _banks(train_query: Array, train_gallery: Array) -> tuple[torch.Tensor, torch.Tensor]:
    tq = as_embeddings(train_query, "train_query")
    tg = as_embeddings(train_gallery, "train_gallery")
    if tq.shape[0] != tg.shape[0]:
        raise EmbeddingError(
            f"train_query ({tq.shape[0]} rows) and train_gallery ({tg.shape[0]} rows) must be paired row by row."
        )
    return tq, tg


def validation_split(n_train: int, val_size: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(validation rows, bank rows, validation size) of ``n_train`` train pairs: ``val_size`` rows drawn with
    ``seed`` (default min(1000, n_train // 5)) validate, the others act as banks."""
    n_val = min(1000, n_train // 5) if val_size is None else integer(val_size, "val_size")
    if n_val < 1 or n_val >= n_train:
        raise ConfigError(
            f"the validation split needs 1 ≤ val_size < N_train = {n_train} train pairs, got {n_val}; "
            "give more train pairs or explicit rates (r_g, r_q)."
        )
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return order[:n_val], order[n_val:], n_val


def _tables(z: torch.Tensor, q: torch.Tensor, block_size: int) -> dict[str, dict[str, float]]:
    """InvGC's Table 1 (the gallery within itself) and Table 2 (against the queries, the pair excluded)."""
    if z.shape[0] < 2:
        return {}
    return {
        "gallery": similarity_measures(z, block_size=block_size),
        "gallery_query": similarity_measures(z, q, block_size=block_size),
    }


@torch.no_grad()
def compare_postprocessing(
    query: Array,
    gallery: Array,
    train_query: Array | None = None,
    train_gallery: Array | None = None,
    *,
    k_percent: float = 1.0,
    avgpool_percents: Sequence[float] = AVGPOOL_PERCENTS,
    rates: tuple[float, float] | None = None,
    val_size: int | None = None,
    seed: int = 0,
    grid: Sequence[float] = DEFAULT_R_GRID,
    backend: str = "auto",
    block_size: int = 4096,
    chunk_size: int = 1024,
    gt: GroundTruth = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of ``query[i]`` → ``gallery[i]`` (or the positives of ``gt``, as in
    :func:`~gen_align.retrieval.metrics.retrieval_metrics`) by cosine, and by cosine against the gallery
    post-processed by AvgPool (each p of ``avgpool_percents``), InvGC and InvGC w/ LocalAdj (``k_percent``), which
    need the paired train banks.

    (r_g, r_q) = ``rates`` for every method, or tuned per method with :func:`~gen_align.retrieval.invgc.tune_invgc`
    on a validation split (:func:`validation_split`); the final gallery is then processed against all train pairs.
    Every entry reports ``metrics`` and the Tables 1–2 measures (module docstring)."""
    q, g = _pair(query, gallery)

    def evaluate(processed: torch.Tensor) -> dict[str, Any]:
        processed = processed.to(q.dtype)
        rows_fn = lambda rows: q[rows] @ processed.mT  # noqa: E731
        return {
            "metrics": retrieval_metrics(rows_fn, gt, num_queries=q.shape[0], chunk_size=chunk_size),
            **_tables(processed, q, block_size),
        }

    out: dict[str, dict[str, Any]] = {"cosine": {"kind": "embedding", **evaluate(g)}}
    if train_query is None or train_gallery is None:
        return out
    tq, tg = _banks(train_query, train_gallery)
    if rates is not None:
        rates = (check_rate(rates[0], "r_g"), check_rate(rates[1], "r_q"))
    else:
        val, bank, n_val = validation_split(tq.shape[0], val_size, seed)
    methods = [
        (f"+AvgPool (p={p:g}%)", "avgpool", positive(p, "AvgPool p", "(a percent, e.g. 10)")) for p in avgpool_percents
    ]
    methods += [(name, adjacency, k_percent) for name, adjacency in POSTPROCESSING.items() if adjacency]
    for name, adjacency, percent in methods:
        entry: dict[str, Any] = {"kind": "embedding", "adjacency": adjacency}
        if rates is None:
            tuning = tune_invgc(
                tq[val], tg[val], tg[bank], tq[bank], adjacency, percent,
                grid=grid, backend=backend, block_size=block_size, chunk_size=chunk_size,
            )  # fmt: skip
            r_g, r_q = tuning["r_g"], tuning["r_q"]
            keep = ("R@1", "baseline_R@1", "at_grid_max", "grid")
            entry["tuning"] = {key: tuning[key] for key in keep} | {"val_size": n_val}
        else:
            r_g, r_q = rates
        processed = invgc(g, tg, tq, r_g, r_q, adjacency, percent, backend=backend, block_size=block_size)
        entry.update({"r_g": r_g, "r_q": r_q, "k_percent": percent if adjacency != "full" else None})
        if adjacency == "avgpool":  # C.4's unit edge weights: the same gallery at rate r·k
            entry["r_g_paper"] = r_g / neighbour_count(tg.shape[0], percent)
            entry["r_q_paper"] = r_q / neighbour_count(tq.shape[0], percent)
        out[name] = entry | evaluate(processed)
    return out


@torch.no_grad()
def compare_score_normalizations(
    query: Array,
    gallery: Array,
    train_query: Array | None = None,
    train_gallery: Array | None = None,
    *,
    gt: GroundTruth = None,
) -> dict[str, dict[str, Any]]:
    """Metrics (positives: ``gt``) of the cosine scores after IS, QB-Norm and DBNorm (banks: the train queries and
    train gallery scored against the test gallery; skipped without them) and dual softmax (the test scores alone),
    each at the defaults of :mod:`gen_align.retrieval.score_normalization`."""
    q, g = _pair(query, gallery)
    scores = q @ g.mT
    normalized = {"+DSL": dual_softmax(scores)}
    if train_query is not None and train_gallery is not None:
        tq, tg = _banks(train_query, train_gallery)
        query_bank = unit(tq, "train_query").detach().to(q.dtype) @ g.mT
        gallery_bank = unit(tg, "train_gallery").detach().to(q.dtype) @ g.mT
        normalized = {
            "+IS": inverted_softmax(scores, query_bank),
            "+QB-Norm": querybank_norm(scores, query_bank),
            "+DBNorm": db_norm(scores, query_bank, gallery_bank),
            **normalized,
        }
    return {name: {"kind": "scores", "metrics": retrieval_metrics(s, gt)} for name, s in normalized.items()}


def two_stage_ranking(static: torch.Tensor, candidates: torch.Tensor, rescored: torch.Tensor) -> torch.Tensor:
    """A (Q, G) score matrix that ranks each query's candidates first, in the order of ``rescored`` (Q, K), and
    the rest of the gallery after them in the order of ``static`` — the full ranking of a two-stage search."""
    out = static.double().clone()
    rescored = rescored.double()
    lift = out.max(dim=1, keepdim=True).values + 1.0 - rescored.min(dim=1, keepdim=True).values
    return out.scatter_(1, candidates, rescored + lift)


@torch.no_grad()
def compare_heads(
    query: Array,
    gallery: Array,
    heads: Mapping[str, RetrievalHead],
    *,
    candidates: int = 100,
    top: int = 10,
    gt: GroundTruth = None,
) -> dict[str, dict[str, Any]]:
    """For each trained head: metrics (positives: ``gt``) over the whole gallery (``NAME``) and of a two-stage
    search (``NAME two-stage``: cosine top-``candidates``, re-ranked by the head), with the coverage C_K of the
    head's top-``top`` inside the cosine top-K, and for GARE the deviation |s − cos| over all pairs (mean, P95,
    max). ``query`` and ``gallery`` are passed to the heads as given (GARE keeps their norms)."""
    integer(candidates, "candidates")
    integer(top, "top")
    q, g = _pair(query, gallery)
    static = q @ g.mT
    k = min(candidates, g.shape[0])
    shortlist = static.topk(k, dim=1).indices
    out: dict[str, dict[str, Any]] = {}
    for name, head in heads.items():
        full = head.score(query, gallery).to(static.dtype)
        best = full.topk(min(top, g.shape[0]), dim=1).indices
        covered = (best.unsqueeze(2) == shortlist.unsqueeze(1)).any(dim=2).double().mean()
        entry: dict[str, Any] = {"kind": "head", "head": head.kind, "metrics": retrieval_metrics(full, gt)}
        if head.kind == "gare":
            deviation = (full - static).abs().flatten().double().cpu().numpy()
            entry["deviation"] = {
                "mean": float(deviation.mean()),
                "p95": float(np.percentile(deviation, 95)),
                "max": float(deviation.max()),
            }
        out[name] = entry
        ranking = two_stage_ranking(static, shortlist, full.gather(1, shortlist))
        out[f"{name} two-stage"] = {
            "kind": "head",
            "head": head.kind,
            "candidates": k,
            "coverage": {"K": k, "top": min(top, g.shape[0]), "C_K": float(covered)},
            "metrics": retrieval_metrics(ranking, gt),
        }
    return out


def evaluate_retrieval(
    query: Array,
    gallery: Array,
    train_query: Array | None = None,
    train_gallery: Array | None = None,
    *,
    heads: Mapping[str, RetrievalHead] | None = None,
    candidates: int = 100,
    gt: GroundTruth = None,
    **postprocessing: Any,
) -> dict[str, dict[str, Any]]:
    """Every row of the module docstring: :func:`compare_postprocessing` (``postprocessing`` are its keyword
    arguments), :func:`compare_score_normalizations` and :func:`compare_heads`, in that order; ``gt`` the positives
    of every test query (default: gallery item i for query i)."""
    report = compare_postprocessing(query, gallery, train_query, train_gallery, gt=gt, **postprocessing)
    report |= compare_score_normalizations(query, gallery, train_query, train_gallery, gt=gt)
    if heads:
        report |= compare_heads(query, gallery, heads, candidates=candidates, gt=gt)
    return report
