"""Retrieval metrics R@k, median / mean rank and mAP over a (queries × gallery) score matrix.

The matrix is consumed in blocks of ``chunk_size`` query rows, so memory is ``chunk_size × N_gallery``
whatever the number of queries; the score matrix can also be a callable that returns one block of rows at
a time, so a 50k × 50k evaluation never materialises the matrix nor a full sort.

Tie rule (pessimistic): within a group of equal scores the negatives come before the positives. The rank
of query i is the position of its best positive,

    rank_i = 1 + #{negatives j : s_ij ≥ s_i*},   s_i* = max over the positives p of s_ip,

and the m-th best positive p_m (positives ordered by score) sits at position m + #{negatives j : s_ij ≥ s_ip_m}.
Average precision is AP_i = (1/P_i) Σ_m m / position(p_m), mAP its mean over queries. Constant scores
therefore give rank N_gallery − P_i + 1, never a flattering rank 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gen_align.checks import integer
from gen_align.errors import InputDataError

__all__ = ["query_ranks", "retrieval_metrics", "metrics_table"]

ScoreRows = Callable[[slice], torch.Tensor]
GroundTruth = torch.Tensor | np.ndarray | Sequence[Sequence[int]] | None

# Above this many positives per query, the per-positive counting passes cost more than one sort per row.
_MAX_COUNTING_PASSES = 16


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputDataError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}.")
    return x


class _Positives:
    """Ground truth as a provider of (rows, N_gallery) boolean masks, validated once."""

    def __init__(self, gt: GroundTruth, num_queries: int, num_gallery: int) -> None:
        self.num_gallery = num_gallery
        self.dense: torch.Tensor | None = None
        self.padded: torch.Tensor | None = None
        if gt is None:
            if num_queries != num_gallery:
                raise InputDataError(
                    f"gt=None means query i matches gallery item i, which needs a square score matrix; got "
                    f"{num_queries} queries × {num_gallery} gallery items. Pass gt as a boolean (Q, G) matrix, "
                    "a (Q,) array of gallery indices, or one list of gallery indices per query."
                )
            self.padded = torch.arange(num_queries).unsqueeze(1)
        elif isinstance(gt, torch.Tensor | np.ndarray):
            gt = _as_tensor(gt, "gt")
            if gt.dtype == torch.bool:
                if tuple(gt.shape) != (num_queries, num_gallery):
                    raise InputDataError(
                        f"gt: a boolean ground-truth matrix must have the score matrix's shape "
                        f"({num_queries}, {num_gallery}), got {tuple(gt.shape)}."
                    )
                self.dense = gt
            elif gt.ndim == 1 and not gt.is_floating_point() and not gt.is_complex():
                if gt.shape[0] != num_queries:
                    raise InputDataError(
                        f"gt: an index array needs one gallery index per query ({num_queries}), got {gt.shape[0]}."
                    )
                if bool((gt < 0).any()):
                    raise InputDataError("gt: gallery indices must be non-negative.")
                self.padded = gt.long().unsqueeze(1)
            else:
                raise InputDataError(
                    f"gt: expected a boolean (Q, G) matrix or an integer (Q,) index array, got dtype {gt.dtype} "
                    f"and shape {tuple(gt.shape)}."
                )
        elif isinstance(gt, Sequence) and not isinstance(gt, str):
            if len(gt) != num_queries:
                raise InputDataError(
                    f"gt: expected one list of gallery indices per query ({num_queries}), got {len(gt)}."
                )
            lists = [[int(j) for j in row] if isinstance(row, Sequence | np.ndarray) else [int(row)] for row in gt]
            if any(j < 0 for row in lists for j in row):
                raise InputDataError("gt: gallery indices must be non-negative.")
            width = max((len(row) for row in lists), default=0)
            padded = torch.full((num_queries, max(width, 1)), -1, dtype=torch.long)
            for i, row in enumerate(lists):
                if row:
                    padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            self.padded = padded
        else:
            raise InputDataError(
                "gt: expected None, a boolean matrix, an index array or a list of index lists, "
                f"got {type(gt).__name__}."
            )
        if self.padded is not None:
            valid = self.padded >= 0
            if bool((self.padded[valid] >= num_gallery).any()):
                bad = int(self.padded[valid].max())
                raise InputDataError(f"gt: gallery index {bad} is out of range for a gallery of {num_gallery} items.")
            empty = ~valid.any(dim=1)
        else:
            empty = ~self.dense.any(dim=1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()[:5].tolist()
            raise InputDataError(
                f"gt: {int(empty.sum())} queries have no correct gallery item (first: {rows}); every query needs "
                "at least one positive (drop those queries before evaluating)."
            )

    def single(self, rows: slice, device: torch.device) -> torch.Tensor | None:
        """The (rows,) positive indices when every query has exactly one positive, else None."""
        if self.padded is None or self.padded.shape[1] != 1:
            return None
        return self.padded[rows].to(device)

    def mask(self, rows: slice, device: torch.device) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[rows].to(device)
        idx = self.padded[rows].to(device)
        out = torch.zeros(idx.shape[0], self.num_gallery + 1, dtype=torch.bool, device=device)
        out.scatter_(1, torch.where(idx >= 0, idx, self.num_gallery), True)  # -1 padding goes to a spare column
        return out[:, : self.num_gallery]


def _block_ranks(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-positive rank and average precision of each row of one block (pessimistic ties)."""
    counts = positive.sum(dim=1)
    width = int(counts.max())
    negatives = scores.masked_fill(positive, float("-inf"))  # scores are finite, so -inf never counts as ≥
    pos_sorted = scores.masked_fill(~positive, float("-inf")).topk(width, dim=1).values  # (c, P) descending
    if width <= _MAX_COUNTING_PASSES:
        ahead = torch.stack([(negatives >= pos_sorted[:, m : m + 1]).sum(dim=1) for m in range(width)], dim=1)
    else:
        ordered = negatives.sort(dim=1).values
        ahead = scores.shape[1] - torch.searchsorted(ordered, pos_sorted.contiguous(), side="left")
    m = torch.arange(1, width + 1, device=scores.device, dtype=torch.float64)
    valid = m.unsqueeze(0) <= counts.unsqueeze(1)
    precision = torch.where(valid, m / (m + ahead.double()), torch.zeros((), dtype=torch.float64))
    return ahead[:, 0] + 1, precision.sum(dim=1) / counts.double()


def query_ranks(
    sim: torch.Tensor | np.ndarray | ScoreRows,
    gt: GroundTruth = None,
    *,
    num_queries: int | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query rank of the best positive (1-based, pessimistic ties) and average precision.

    ``sim``: a (Q, G) score matrix (higher = better), or a callable ``sim(rows: slice) -> (rows, G)`` that
    scores one block of query rows (then ``num_queries`` = Q is required). ``gt``: None (query i ↔ gallery
    item i), a boolean (Q, G) matrix, an integer (Q,) array of gallery indices, or a list of index lists
    (several correct items per query). Memory: ``chunk_size × G`` scores at a time.
    """
    integer(chunk_size, "chunk_size", hint="It is the number of query rows scored per block.")
    if callable(sim) and not isinstance(sim, torch.Tensor | np.ndarray):
        if num_queries is None:
            raise InputDataError("a callable score function needs num_queries=<number of query rows>.")
        count = integer(num_queries, "num_queries")
        block_fn = sim
    else:
        matrix = _as_tensor(sim, "sim")
        if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise InputDataError(
                f"sim: expected a non-empty (queries, gallery) matrix, got shape {tuple(matrix.shape)}."
            )
        if num_queries is not None and num_queries != matrix.shape[0]:
            raise InputDataError(f"num_queries={num_queries} but the score matrix has {matrix.shape[0]} rows.")
        count = matrix.shape[0]

        def block_fn(rows: slice) -> torch.Tensor:
            return matrix[rows]

    positives: _Positives | None = None
    ranks, aps = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.float64)
    for start in range(0, count, chunk_size):
        rows = slice(start, min(start + chunk_size, count))
        block = _as_tensor(block_fn(rows), "sim(rows)")
        expected = rows.stop - rows.start
        if block.ndim != 2 or block.shape[0] != expected or block.shape[1] == 0:
            raise InputDataError(
                f"the score function returned shape {tuple(block.shape)} for rows {rows.start}:{rows.stop}; "
                f"expected ({expected}, N_gallery)."
            )
        if positives is None:
            positives = _Positives(gt, count, block.shape[1])
        elif block.shape[1] != positives.num_gallery:
            raise InputDataError(
                f"the score function returned {block.shape[1]} gallery columns for rows {rows.start}:{rows.stop}, "
                f"earlier blocks had {positives.num_gallery}."
            )
        if block.dtype == torch.bool or block.is_complex():
            raise InputDataError(f"sim: expected real scores, got dtype {block.dtype}.")
        if not block.is_floating_point():
            block = block.double()  # integer scores: exact comparisons in float64
        block = block.float() if block.dtype in (torch.float16, torch.bfloat16) else block
        if not bool(torch.isfinite(block).all()):
            raise InputDataError(
                f"sim: NaN/inf scores in query rows {rows.start}:{rows.stop}; check the embeddings for NaN "
                "(a diverged head, fp16 overflow) before evaluating."
            )
        single = positives.single(rows, block.device)
        if single is not None:  # one positive: everything scoring ≥ it (itself included) ranks at or above it
            rank = (block >= block.gather(1, single)).sum(dim=1)
            ap = 1.0 / rank.double()
        else:
            rank, ap = _block_ranks(block, positives.mask(rows, block.device))
        ranks[rows] = rank.cpu().numpy()
        aps[rows] = ap.cpu().numpy()
    return ranks, aps


def retrieval_metrics(
    sim: torch.Tensor | np.ndarray | ScoreRows,
    gt: GroundTruth = None,
    *,
    num_queries: int | None = None,
    chunk_size: int = 1024,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@k (percent), MdR, MnR and mAP (percent) of a retrieval.

    R@k = 100 · mean_i [rank_i ≤ k]; MdR = median_i rank_i (mean of the two middle ranks for even Q);
    MnR = mean_i rank_i; mAP = 100 · mean_i AP_i. Ranks follow the pessimistic tie rule of the module.

    Args:
        sim: (Q, G) scores, higher is better (or a row scorer, as in :func:`query_ranks`).
        gt: the positives of each query (default: query i ↔ gallery item i).
        num_queries, chunk_size: with a row scorer, how many queries and how many rows per block.
        ks: the k of R@k.

    Returns:
        ``{"R@1", "R@5", "R@10", "MdR", "MnR", "mAP", "queries"}``.

    Raises:
        ConfigError: bad ks or ground truth. EmbeddingError: NaN scores or a wrong shape.

    Example:
        >>> import torch
        >>> from gen_align.retrieval import retrieval_metrics
        >>> retrieval_metrics(torch.eye(4) + 0.1, ks=(1,))["R@1"]
        100.0
    """
    ks = [integer(k, "k in ks") for k in ks]
    ranks, aps = query_ranks(sim, gt, num_queries=num_queries, chunk_size=chunk_size)
    out: dict[str, float] = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    out["mAP"] = float(100.0 * np.mean(aps))
    out["queries"] = int(ranks.shape[0])
    return out


def metrics_table(
    rows: dict[str, dict[str, Any]], columns: Sequence[str] = ("R@1", "R@5", "R@10", "MdR", "MnR")
) -> str:
    """Markdown table: one row per method, R@k with one decimal (percent), ranks with one decimal."""
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{values[c]:.1f}" if c in values else "—" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
