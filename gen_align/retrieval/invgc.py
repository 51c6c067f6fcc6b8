"""InvGC post-processing of a retrieval gallery (Jian & Wang, "InvGC: Robust Cross-Modal Retrieval by Inverse
Graph Convolution", Findings of EMNLP 2023), with the details of the published implementation.

All vectors are L2-normalised first: test gallery x_i, train gallery g_j (N_g rows), train queries q_j (N_q
rows). For a bank b ∈ {g, q} with N_b rows the message of x_i is m_i^b = Σ_j w_ij^b b_j, with edge weights

    full     (InvGC)      w_ij = (x_i·b_j − w̄) / N_b,   w̄ = (1 / (N N_b)) Σ_{i', j'} x_i'·b_j'  (mean edge weight)
    local    (LocalAdj)   w_ij = x_i·b_j / k   if b_j is among the k most similar rows of the bank to x_i, else 0
    avgpool  (baseline)   w_ij = 1 / k         on the same top-k, else 0   (binary adjacency: mean of the top-k)

k = max(1, ⌊k_percent · N_b / 100⌋). The inverse convolution (Eq. 9) is applied against each bank separately,
each result row-normalised, then averaged and normalised again:

    x_i' = normalise( ½ [ normalise(x_i − r_g m_i^g) + normalise(x_i − r_q m_i^q) ] ).

w̄ is a mean over the whole test gallery, so full InvGC is transductive: x_i' depends on the other gallery
rows through w̄ (as in the published code). Backends (same result up to rounding):

- ``"auto"`` (default): ``"faiss"`` for local/avgpool in float32 on the CPU with k ≤ 1024 (FAISS fuses the
  neighbour selection into its blocked products: 1.22× the time of the two similarity products alone at
  N = N_b = 50 000, d = 512, against 1.64× for ``"blocked"``, ``benchmarks/retrieval.py``), else ``"blocked"``
  (float64 stays exact in float64; a large k is selected faster by ``topk``). In float32 the two can pick a
  different neighbour where two scores tie at the k-th place (1 row of 10 000 in that benchmark).
- ``"blocked"``: full adjacency in closed form, Σ_j (x_i·b_j − w̄) b_j = x_i (BᵀB) − w̄ Σ_j b_j
  (never an N × N_b matrix); local/avgpool by blocks of ``block_size`` rows (block_size × N_b scores,
  ``topk`` and a weighted ``embedding_bag`` sum), memory O(block_size · N_b + N · d).
- ``"faiss"``: local/avgpool neighbours from an exact FAISS ``IndexFlatIP`` kNN search (float32), by blocks;
  full adjacency as in ``"blocked"``.
- ``"dense"``: the published implementation's layout (the whole N × N_b weight matrix), as a reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gen_align.checks import choice, integer, non_negative, positive
from gen_align.diagnostics import degeneration_score, mean_sim_at_k
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.retrieval.metrics import GroundTruth, retrieval_metrics
from gen_align.tensors import as_embeddings, unit

__all__ = [
    "ADJACENCIES",
    "BACKENDS",
    "DEFAULT_R_GRID",
    "neighbour_count",
    "invgc",
    "tune_invgc",
    "degeneration_change",
]

ADJACENCIES = ("full", "local", "avgpool")
BACKENDS = ("auto", "blocked", "faiss", "dense")
FAISS_MAX_K = 1024  # "auto" uses FAISS up to this many neighbours per row
# Propagation rates tried by tune_invgc for r_g and r_q alike: 0 and half-decades 0.01 … 100 (10 × 10 pairs;
# (0, 0) is plain cosine). Full adjacency divides by N_b and removes the mean edge, so its message is small
# (≈ x times the centred second moment of the bank) and its useful rates run far above LocalAdj's (≈ 0.1–1).
DEFAULT_R_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def neighbour_count(num_bank: int, k_percent: float) -> int:
    """k = max(1, ⌊k_percent · N_b / 100⌋): the number of bank neighbours LocalAdj / AvgPool keep per row."""
    k_percent = positive(k_percent, "k_percent", "It is the share of the train bank kept per row, in percent.")
    if k_percent > 100:
        raise ConfigError(f"k_percent must be in (0, 100], got {k_percent}.")
    return max(1, math.floor(k_percent * num_bank / 100 + 1e-9))


def check_rate(r: float, name: str) -> float:
    return non_negative(r, name, "It is the InvGC propagation rate; 0 leaves the gallery unchanged, try 0.01–1.")


def _prepare(
    gallery: torch.Tensor, banks: dict[str, torch.Tensor | np.ndarray]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = unit(as_embeddings(gallery, "gallery"), "gallery")
    units = {name: unit(as_embeddings(b, name), name) for name, b in banks.items()}
    for name, b in units.items():
        if b.shape[1] != x.shape[1]:
            raise EmbeddingError(
                f"{name} has dimension {b.shape[1]} but the gallery has {x.shape[1]}; the train banks must be "
                "embedded in the same space as the test gallery."
            )
    dtype = x.dtype
    for b in units.values():
        dtype = torch.promote_types(dtype, b.dtype)
    return x.detach().to(dtype), {name: b.detach().to(dtype) for name, b in units.items()}


def _full_closed_form(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Σ_j (x_i·b_j − w̄) b_j / N_b = (x (BᵀB) − w̄ Σ_j b_j) / N_b, w̄ = (Σ_i x_i)·(Σ_j b_j) / (N N_b)."""
    total = bank.sum(dim=0, dtype=torch.float64)
    mean_edge = float(x.sum(dim=0, dtype=torch.float64) @ total) / (x.shape[0] * bank.shape[0])
    return (x @ (bank.mT @ bank) - mean_edge * total.to(x.dtype)) / bank.shape[0]


def _topk_message(values: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor, adjacency: str) -> torch.Tensor:
    k = indices.shape[1]
    weights = values / k if adjacency == "local" else torch.full_like(values, 1.0 / k)
    return F.embedding_bag(indices, bank, per_sample_weights=weights.to(bank.dtype), mode="sum")


def _message(
    x: torch.Tensor, bank: torch.Tensor, adjacency: str, k: int, backend: str, block_size: int
) -> torch.Tensor:
    """m_i = Σ_j w_ij b_j for every gallery row (see the module docstring for w)."""
    if backend == "auto":
        fused = x.dtype == torch.float32 and x.device.type == "cpu" and k <= FAISS_MAX_K
        backend = "faiss" if fused and adjacency != "full" else "blocked"
    if backend == "dense":
        W = x @ bank.mT
        if adjacency == "full":
            return (W - W.mean()) @ bank / bank.shape[0]
        values, indices = W.topk(k, dim=1)
        A = torch.zeros_like(W).scatter_(1, indices, values if adjacency == "local" else torch.ones_like(values))
        return A @ bank / k
    if adjacency == "full":
        return _full_closed_form(x, bank)
    out = torch.empty_like(x)
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(np.ascontiguousarray(bank.cpu().numpy(), dtype=np.float32))
        for start in range(0, x.shape[0], block_size):
            block = np.ascontiguousarray(x[start : start + block_size].cpu().numpy(), dtype=np.float32)
            values, indices = index.search(block, k)
            values_t = torch.from_numpy(values).to(device=x.device, dtype=x.dtype)
            out[start : start + block_size] = _topk_message(
                values_t, torch.from_numpy(indices).to(x.device), bank, adjacency
            )
        return out
    for start in range(0, x.shape[0], block_size):
        values, indices = (x[start : start + block_size] @ bank.mT).topk(k, dim=1, sorted=False)
        out[start : start + block_size] = _topk_message(values, indices, bank, adjacency)
    return out


def _combine(x: torch.Tensor, m_g: torch.Tensor, r_g: float, m_q: torch.Tensor, r_q: float) -> torch.Tensor:
    """x' = normalise(½[normalise(x − r_g m^g) + normalise(x − r_q m^q)]) (Eq. 9 applied per bank)."""
    try:
        return unit(0.5 * (unit(x - r_g * m_g, "x - r_g m_g") + unit(x - r_q * m_q, "x - r_q m_q")), "InvGC output")
    except EmbeddingError as err:
        raise ConfigError(
            f"InvGC with r_g={r_g}, r_q={r_q} cancels some gallery rows entirely ({err}); use smaller rates."
        ) from err


def _settings(adjacency: str, backend: str, block_size: int) -> None:
    choice(adjacency, "adjacency", ADJACENCIES)
    choice(backend, "InvGC backend", BACKENDS)
    integer(block_size, "block_size", hint="It is the number of gallery rows per block of scores.")


@torch.no_grad()
def invgc(
    gallery: torch.Tensor | np.ndarray,
    train_gallery: torch.Tensor | np.ndarray,
    train_query: torch.Tensor | np.ndarray,
    r_g: float,
    r_q: float,
    adjacency: str = "full",
    k_percent: float = 1.0,
    *,
    backend: str = "auto",
    block_size: int = 4096,
) -> torch.Tensor:
    """The InvGC-processed test gallery (N, d), unit rows (Eq. 9, published-code details):

        x_i' = normalise( ½ [ normalise(x_i − r_g Σ_j w_ij^g g_j) + normalise(x_i − r_q Σ_j w_ij^q q_j) ] )

    with w from ``adjacency`` and k = max(1, ⌊k_percent · N_b / 100⌋) neighbours per row for local/avgpool (see
    the module docstring). Score queries against the result with plain cosine. Computed in the inputs' dtype
    (≥ float32; ``backend="faiss"``, which ``"auto"`` picks for float32, finds neighbours in float32).

    Args:
        gallery: the test gallery (N, d) to post-process (normalised here).
        train_gallery: the gallery bank g (N_g, d), e.g. the training split's gallery embeddings.
        train_query: the query bank q (N_q, d), e.g. the training split's query embeddings.
        r_g: propagation rate against the gallery bank (≥ 0; :func:`tune_invgc` picks it on validation).
        r_q: propagation rate against the query bank (≥ 0).
        adjacency: ``"full"`` (InvGC), ``"local"`` (InvGC w/ LocalAdj) or ``"avgpool"`` (the AvgPool baseline).
        k_percent: the neighbours of local / avgpool, in percent of each bank.
        backend: ``"auto"`` (default: FAISS for float32 local/avgpool with k ≤ 1024, else blocked), ``"blocked"``,
            ``"faiss"`` or ``"dense"`` (the published layout, a reference).
        block_size: gallery rows per block of scores (memory ≈ block_size · N_b).

    Returns:
        the processed gallery (N, d), unit rows, in the inputs' dtype.

    Raises:
        ConfigError: a negative rate, an unknown adjacency or backend, a bad block size.
        EmbeddingError: inputs that are not (N, d) finite embeddings of one dimension.

    Example:
        With both rates 0 InvGC leaves the (normalised) gallery as it is:

        >>> import torch
        >>> from gen_align.retrieval.invgc import invgc
        >>> gallery, bank = torch.randn(5, 8), torch.randn(20, 8)
        >>> same = invgc(gallery, bank, bank, r_g=0.0, r_q=0.0)
        >>> torch.allclose(same, gallery / gallery.norm(dim=1, keepdim=True), atol=1e-6)
        True
        >>> invgc(gallery, bank, bank, r_g=0.5, r_q=0.5, adjacency="local", k_percent=10).shape
        torch.Size([5, 8])
    """
    r_g, r_q = check_rate(r_g, "r_g"), check_rate(r_q, "r_q")
    _settings(adjacency, backend, block_size)
    x, banks = _prepare(gallery, {"train_gallery": train_gallery, "train_query": train_query})
    m_g, m_q = (
        _message(x, b, adjacency, neighbour_count(b.shape[0], k_percent), backend, block_size) for b in banks.values()
    )
    return _combine(x, m_g, r_g, m_q, r_q)


@torch.no_grad()
def tune_invgc(
    query: torch.Tensor | np.ndarray,
    gallery: torch.Tensor | np.ndarray,
    train_gallery: torch.Tensor | np.ndarray,
    train_query: torch.Tensor | np.ndarray,
    adjacency: str = "full",
    k_percent: float = 1.0,
    *,
    gt: GroundTruth = None,
    grid: Sequence[float] = DEFAULT_R_GRID,
    backend: str = "auto",
    block_size: int = 4096,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Pick (r_g, r_q) from ``grid`` × ``grid`` by R@1 of cosine retrieval ``query`` → InvGC(``gallery``) on a
    validation split.

    The two messages do not depend on r, so they are computed once and each grid point costs one
    normalisation and one scoring pass. Ties in R@1 go to the smaller r_g + r_q, then the smaller r_g;
    with 0 in the grid the choice is never worse than plain cosine on the validation split.

    Args:
        query: validation queries (Nq, d).
        gallery: the validation gallery (N, d) that InvGC processes.
        train_gallery: the gallery bank (N_g, d). train_query: the query bank (N_q, d).
        adjacency: ``"full"``, ``"local"`` or ``"avgpool"``, as in :func:`invgc`. k_percent: as in :func:`invgc`.
        gt: the ground truth, as in :func:`~gen_align.retrieval.metrics.retrieval_metrics` (default: query i ↔
            gallery item i).
        grid: the rates tried for r_g and r_q alike (default :data:`DEFAULT_R_GRID`).
        backend, block_size: as in :func:`invgc`. chunk_size: queries scored at once.

    Returns:
        ``{"r_g", "r_q", "R@1", "baseline_R@1", "at_grid_max", "adjacency", "k_percent", "grid", "results"}``,
        ``results`` holding ``[r_g, r_q, R@1]`` per grid point; ``at_grid_max`` says a chosen rate is the largest
        of a grid with more than one value (extend the grid).

    Raises:
        ConfigError: an empty grid or a negative rate, an unknown adjacency or backend.
        EmbeddingError: queries and gallery of different dimensions, or non-finite embeddings.

    Example:
        >>> import torch
        >>> from gen_align.retrieval.invgc import tune_invgc
        >>> g = torch.randn(30, 8)
        >>> q = g + 0.5 * torch.randn(30, 8)  # query i belongs to gallery item i
        >>> best = tune_invgc(q, g, g, q, adjacency="local", k_percent=10, grid=(0.0, 0.1, 0.5))
        >>> best["R@1"] >= best["baseline_R@1"]  # (0, 0), plain cosine, is in the grid
        True
    """
    _settings(adjacency, backend, block_size)
    rates = [check_rate(r, "grid value") for r in grid]
    if not rates:
        raise ConfigError("grid must hold at least one propagation rate, e.g. (0, 0.1, 0.5).")
    q = unit(as_embeddings(query, "query"), "query")
    x, banks = _prepare(gallery, {"train_gallery": train_gallery, "train_query": train_query})
    if q.shape[1] != x.shape[1]:
        raise EmbeddingError(f"query dimension {q.shape[1]} differs from gallery dimension {x.shape[1]}.")
    q = q.detach().to(x.dtype)
    m_g, m_q = (
        _message(x, b, adjacency, neighbour_count(b.shape[0], k_percent), backend, block_size) for b in banks.values()
    )

    def recall_at_1(processed: torch.Tensor) -> float:
        rows_fn = lambda rows: q[rows] @ processed.mT  # noqa: E731
        return retrieval_metrics(rows_fn, gt, num_queries=q.shape[0], chunk_size=chunk_size, ks=(1,))["R@1"]

    results = [[r_g, r_q, recall_at_1(_combine(x, m_g, r_g, m_q, r_q))] for r_g in rates for r_q in rates]
    best = min(results, key=lambda row: (-row[2], row[0] + row[1], row[0]))
    return {
        "r_g": best[0],
        "r_q": best[1],
        "R@1": best[2],
        "baseline_R@1": recall_at_1(x),
        "at_grid_max": len(set(rates)) > 1 and max(rates) in (best[0], best[1]),
        "adjacency": adjacency,
        "k_percent": k_percent,
        "grid": rates,
        "results": results,
    }


@torch.no_grad()
def degeneration_change(
    before: torch.Tensor | np.ndarray, after: torch.Tensor | np.ndarray, k: int = 10, block_size: int = 4096
) -> dict[str, dict[str, float]]:
    """Δ_deg (InvGC Eq. 2) and MeanSim@k of a gallery within itself, before and after post-processing
    (``gen_align.diagnostics``); k is capped at N − 1."""
    integer(k, "k")
    n = as_embeddings(before, "before", min_batch=2).shape[0]
    k = min(k, n - 1)
    out: dict[str, dict[str, float]] = {"degeneration": {}, f"mean_sim@{k}": {}}
    for name, z in (("before", before), ("after", after)):
        out["degeneration"][name] = degeneration_score(z, block_size=block_size)
        out[f"mean_sim@{k}"][name] = mean_sim_at_k(z, k, block_size=block_size)
    return out
