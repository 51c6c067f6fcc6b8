"""Geometric alignment of two modalities' paired embeddings (seed "Geometric Alignment"), and robustness curves.

Row i of ``x`` and row i of ``y`` are the same item seen by two modalities. Neighbourhoods use cosine
similarity (rows L2-normalised, float64); N_x(i) is the set of the k rows of x most similar to x_i, i excluded.

* kNN-graph mismatch (:func:`knn_graph_mismatch`), two definitions, both 0 iff the two kNN graphs coincide:

      jaccard   = 1/N Σ_i (1 − |N_x(i) ∩ N_y(i)| / |N_x(i) ∪ N_y(i)|)                              ∈ [0, 1]
      hausdorff = 1/N Σ_i max( max_{j∈N_y(i)} min_{l∈N_x(i)} δ_x(j, l),  max_{j∈N_x(i)} min_{l∈N_y(i)} δ_y(j, l) )

  with δ_x(j, l) = 1 − cos(x_j, x_l): the symmetric Hausdorff distance between item i's two neighbour sets,
  each direction measured in the geometry of the modality whose graph the other set is compared against
  (∈ [0, 2]). Unlike Jaccard it is soft: swapping a neighbour for a near-duplicate costs little.
  x and y may have different dimensions (graphs compare within each modality).
* :func:`cluster_metrics`: silhouette (cosine) of class labels, and NMI between the labels and KMeans
  (k = number of classes, on the unit rows) — sklearn. :func:`geometric_alignment` reports all of these plus
  MMD (:func:`gen_align.diagnostics.mmd`) and the modality gap, on the shared space x ∪ y.
* Robustness: :func:`masking_curve` replaces a fraction of one modality's embeddings by that modality's mean
  embedding (uninformative); :func:`robustness_curve` corrupts a fraction of the raw inputs
  (:mod:`gen_align.retrieval.corruptions`) and re-embeds them. Subsets are nested (one seeded permutation), so
  a larger fraction corrupts a superset of the items, and each item gets the same corruption at every fraction.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gen_align.checks import choice, integer
from gen_align.diagnostics import mmd, modality_gap
from gen_align.errors import ConfigError, EmbeddingError, InputDataError
from gen_align.tensors import as_embeddings, unit

__all__ = [
    "knn_indices",
    "knn_graph_mismatch",
    "cluster_metrics",
    "geometric_alignment",
    "masking_curve",
    "robustness_curve",
]

Array = torch.Tensor | np.ndarray
MetricsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def _unit64(z: Array, name: str, min_batch: int = 1) -> torch.Tensor:
    return unit(as_embeddings(z, name, min_batch=min_batch).detach(), name).double().cpu()


def _check_k(k: int, n: int) -> int:
    k = integer(k, "k")
    if k > n - 1:
        raise ConfigError(f"k={k} neighbours need at least k + 1 = {k + 1} items, got {n}; use k ≤ {n - 1}.")
    return k


def knn_indices(z: Array, k: int, block_size: int = 1024) -> torch.Tensor:
    """(N, k) indices of each row's k most cosine-similar other rows, most similar first (self excluded)."""
    integer(block_size, "block_size")
    zs = _unit64(z, "z", min_batch=2)
    k = _check_k(k, zs.shape[0])
    blocks = []
    for start in range(0, zs.shape[0], block_size):
        sims = zs[start : start + block_size] @ zs.mT
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = float("-inf")
        blocks.append(sims.topk(k, dim=1).indices)
    return torch.cat(blocks)


def _paired(x: Array, y: Array) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _unit64(x, "x", min_batch=2), _unit64(y, "y", min_batch=2)
    if xs.shape[0] != ys.shape[0]:
        raise EmbeddingError(
            f"x has {xs.shape[0]} rows and y {ys.shape[0]}; row i of each must be the same item in two "
            "modalities, so both need the same number of rows."
        )
    return xs, ys


def _directed_hausdorff(z: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: max over j ∈ sources[row] of min over l ∈ targets[row] of 1 − cos(z_j, z_l)."""
    dist = 1.0 - torch.bmm(z[sources], z[targets].mT)  # (c, k, k)
    return dist.clamp_min(0.0).min(dim=2).values.max(dim=1).values


@torch.no_grad()
def knn_graph_mismatch(
    x: Array, y: Array, k: int = 10, *, block_size: int = 1024, per_item: bool = False
) -> dict[str, Any]:
    """Mean Jaccard distance and mean symmetric Hausdorff distance between the kNN graphs of x and y (module
    docstring). With ``per_item`` the (N,) arrays ``jaccard_per_item`` / ``hausdorff_per_item`` are added."""
    xs, ys = _paired(x, y)
    k = _check_k(k, xs.shape[0])
    nx, ny = knn_indices(xs, k, block_size), knn_indices(ys, k, block_size)
    jaccard, hausdorff = [], []
    for start in range(0, xs.shape[0], block_size):
        bx, by = nx[start : start + block_size], ny[start : start + block_size]
        inter = (bx[:, :, None] == by[:, None, :]).any(dim=2).sum(dim=1).double()
        jaccard.append(1.0 - inter / (2 * k - inter))
        hausdorff.append(torch.maximum(_directed_hausdorff(xs, by, bx), _directed_hausdorff(ys, bx, by)))
    j, h = torch.cat(jaccard).numpy(), torch.cat(hausdorff).numpy()
    out: dict[str, Any] = {"jaccard": float(j.mean()), "hausdorff": float(h.mean()), "k": k}
    if per_item:
        out["jaccard_per_item"], out["hausdorff_per_item"] = j, h
    return out


def _labels(labels: Sequence[Any] | np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputDataError(f"labels: expected one class label per row ({n},), got shape {arr.shape}.")
    distinct = len(np.unique(arr))
    if not 2 <= distinct <= n - 1:
        raise InputDataError(
            f"labels: silhouette and NMI need between 2 and N − 1 = {n - 1} distinct classes, got {distinct}; "
            "pass class labels (not item ids) of at least two classes."
        )
    return arr


def cluster_metrics(
    z: Array, labels: Sequence[Any] | np.ndarray | torch.Tensor, *, n_clusters: int | None = None, seed: int = 0
) -> dict[str, float]:
    """``silhouette``: sklearn silhouette_score of the labels with the cosine metric (∈ [−1, 1]); ``nmi``:
    normalized_mutual_info_score(labels, KMeans(n_clusters or #classes, n_init=10, random_state=seed) on the
    unit rows) (∈ [0, 1])."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score, silhouette_score

    zs = _unit64(z, "z", min_batch=3).numpy()
    arr = _labels(labels, zs.shape[0])
    clusters = len(np.unique(arr)) if n_clusters is None else integer(n_clusters, "n_clusters", low=2)
    if clusters > zs.shape[0]:
        raise ConfigError(f"n_clusters={clusters} exceeds the {zs.shape[0]} rows; use fewer clusters.")
    predicted = KMeans(n_clusters=clusters, n_init=10, random_state=integer(seed, "seed", low=0)).fit_predict(zs)
    return {
        "silhouette": float(silhouette_score(zs, arr, metric="cosine")),
        "nmi": float(normalized_mutual_info_score(arr, predicted)),
    }


def geometric_alignment(
    x: Array,
    y: Array,
    labels: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    *,
    k: int = 10,
    bandwidth: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """All geometric-alignment metrics of paired embeddings x, y (N, d) in one shared space: ``jaccard`` and
    ``hausdorff`` (kNN graphs), ``mmd`` (unbiased MMD², median-heuristic bandwidth unless given), ``gap``
    (modality gap) and, with class ``labels`` (N,), ``silhouette`` and ``nmi`` of x ∪ y labelled twice."""
    xs, ys = _paired(x, y)
    if xs.shape[1] != ys.shape[1]:
        raise EmbeddingError(
            f"x is {xs.shape[1]}-d and y {ys.shape[1]}-d; MMD and the clustering metrics need one shared space "
            "(knn_graph_mismatch alone works across spaces)."
        )
    out = {k_: v for k_, v in knn_graph_mismatch(xs, ys, k).items() if k_ != "k"}
    out["mmd"] = float(mmd(xs, ys, bandwidth=bandwidth))
    out["gap"] = next(iter(modality_gap({"x": xs, "y": ys}).values()))
    if labels is not None:
        arr = _labels(labels, xs.shape[0])
        out.update(cluster_metrics(torch.cat([xs, ys]), np.concatenate([arr, arr]), seed=seed))
    return out


# ------------------------------------------------------------------------------------ robustness
def _fractions(fractions: Sequence[float]) -> list[float]:
    values = list(fractions) if isinstance(fractions, Sequence | np.ndarray) else None
    ok = values and all(
        isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f) and 0 <= f <= 1 for f in values
    )
    if not ok:
        raise ConfigError(f"fractions must be a non-empty sequence of numbers in [0, 1], got {fractions!r}.")
    return [float(f) for f in values]


def _default_metrics(queries: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    from gen_align.retrieval.metrics import retrieval_metrics
    from gen_align.retrieval.scores import cosine_scores

    return retrieval_metrics(cosine_scores(queries, gallery))


def _evaluate(
    corrupted: torch.Tensor, reference: torch.Tensor, side: str, metrics_fn: MetricsFn | None
) -> dict[str, float]:
    fn = metrics_fn or _default_metrics
    result = fn(corrupted, reference) if side == "query" else fn(reference, corrupted)
    if not isinstance(result, dict):
        raise ConfigError(f"metrics_fn must return a dict of metrics, got {type(result).__name__}.")
    return result


LOWER_IS_BETTER = ("MdR", "MnR")
"""Rank metrics, where a rise is the degradation; every other metric (R@k, mAP) degrades by falling."""


def degradation(clean: dict[str, float], corrupted: dict[str, float]) -> dict[str, float]:
    """The relative degradation against clean data, in %, per metric: ``100 (clean − value) / clean`` for metrics
    where higher is better, ``100 (value − clean) / clean`` for ranks (MdR, MnR); positive = worse. A metric that
    is 0 on clean data gets ``value − clean`` points instead (no ratio exists)."""
    out = {}
    for key, before in clean.items():
        if key not in corrupted or not isinstance(before, numbers.Real):
            continue
        worse = corrupted[key] - before if key.split("/")[-1] in LOWER_IS_BETTER else before - corrupted[key]
        out[key] = 100.0 * worse / abs(before) if before else worse
    return out


def _with_degradation(entry: dict[str, Any], clean: dict[str, float]) -> dict[str, Any]:
    return {**entry, "degradation_%": degradation(clean, entry)}


def _nested_subsets(n: int, fractions: list[float], seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(integer(seed, "seed", low=0))
    order = rng.permutation(n)
    item_seeds = rng.integers(0, 2**31 - 1, size=n)
    counts = [math.floor(f * n + 0.5) for f in fractions]
    return order, item_seeds, counts


def masking_curve(
    queries: Array,
    gallery: Array,
    fractions: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    *,
    side: str = "query",
    seed: int = 0,
    metrics_fn: MetricsFn | None = None,
) -> list[dict[str, float]]:
    """Retrieval metrics when round(f · N) rows of one modality (``side`` = "query" or "gallery") are replaced
    by that modality's mean embedding, for each fraction f; query i matches gallery item i.

    ``metrics_fn(queries, gallery) -> dict`` defaults to
    ``retrieval_metrics(cosine_scores(queries, gallery))`` (R@1/5/10, MdR, MnR, mAP). Each entry also holds
    ``fraction``, ``count`` (rows masked) and ``degradation_%``: :func:`degradation` against the unmasked data, the
    robustness measure of the Geometric Alignment proposal (e.g. "≤ 10 % drop under 50 % masking")."""
    choice(side, "side", ("query", "gallery"))
    q, g = as_embeddings(queries, "queries", min_batch=2), as_embeddings(gallery, "gallery", min_batch=2)
    if q.shape[0] != g.shape[0]:
        raise EmbeddingError(
            f"queries ({q.shape[0]} rows) and gallery ({g.shape[0]} rows) must be paired row by row (same N)."
        )
    target, other = (q, g) if side == "query" else (g, q)
    mean = target.mean(dim=0, keepdim=True)
    if not bool(torch.linalg.vector_norm(mean) > 0):
        raise EmbeddingError(
            f"the mean {side} embedding is zero, so a masked row would have no direction; centre-free "
            "embeddings are needed (or mask by a different reference)."
        )
    values = _fractions(fractions)
    order, _, counts = _nested_subsets(target.shape[0], values, seed)
    clean = _evaluate(target, other, side, metrics_fn)
    curve = []
    for fraction, count in zip(values, counts, strict=True):
        masked = target.clone()
        masked[torch.from_numpy(order[:count]).to(masked.device)] = mean
        entry = {"fraction": fraction, "count": count, **_evaluate(masked, other, side, metrics_fn)}
        curve.append(_with_degradation(entry, clean))
    return curve


def _embed(embed_fn: Callable[[list[Any]], Array], items: list[Any], what: str) -> torch.Tensor:
    out = embed_fn(items)
    z = as_embeddings(out if isinstance(out, torch.Tensor | np.ndarray) else torch.as_tensor(out), f"embed_fn({what})")
    if z.shape[0] != len(items):
        raise EmbeddingError(f"embed_fn returned {z.shape[0]} rows for {len(items)} {what} inputs; expected one each.")
    return z.detach()


def robustness_curve(
    embed_fn: Callable[[list[Any]], Array],
    inputs: Sequence[Any],
    corrupt_fn: Callable[[Any, int], Any],
    fractions: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    *,
    reference: Array,
    side: str = "query",
    seed: int = 0,
    metrics_fn: MetricsFn | None = None,
) -> list[dict[str, float]]:
    """Retrieval metrics when round(f · N) of the raw ``inputs`` are corrupted before embedding, per fraction f.

    ``embed_fn(list of inputs) -> (n, d)`` embeds one modality (each item independently of its batch, e.g. an
    encoder in eval mode); ``corrupt_fn(item, seed) -> item`` is e.g. ``get_corruption("audio-noise",
    snr_db=0)``; ``reference`` (N, d) are the other modality's embeddings, row i paired with ``inputs[i]``.
    ``side``: whether the corrupted modality is the query ("query") or the gallery. Clean inputs are embedded
    once and the corrupted ones once (the largest subset), so the cost is at most two passes.
    Entries as in :func:`masking_curve`."""
    choice(side, "side", ("query", "gallery"))
    if not callable(embed_fn) or not callable(corrupt_fn):
        raise ConfigError(
            "embed_fn and corrupt_fn must be callables: embed_fn(list) -> (n, d), corrupt_fn(item, seed)."
        )
    if isinstance(inputs, str) or not isinstance(inputs, Sequence):
        raise InputDataError(
            f"inputs: expected a list of raw inputs (waveforms, images, texts), got {type(inputs).__name__}."
        )
    items = list(inputs)
    ref = as_embeddings(reference, "reference", min_batch=2).detach()
    if len(items) != ref.shape[0]:
        raise InputDataError(
            f"inputs has {len(items)} items but reference {ref.shape[0]} rows; row i of reference must be the "
            "embedding of the item paired with inputs[i]."
        )
    values = _fractions(fractions)
    order, item_seeds, counts = _nested_subsets(len(items), values, seed)
    clean = _embed(embed_fn, items, "clean")
    if clean.shape[1] != ref.shape[1]:
        raise EmbeddingError(
            f"embed_fn gives {clean.shape[1]}-d embeddings but reference is {ref.shape[1]}-d; both modalities "
            "must be embedded into the same space."
        )
    chosen = order[: max(counts)]
    corrupted_inputs = [corrupt_fn(items[i], int(item_seeds[i])) for i in chosen]
    corrupted_rows = _embed(embed_fn, corrupted_inputs, "corrupted") if corrupted_inputs else None
    baseline = _evaluate(clean, ref.to(clean.device), side, metrics_fn)
    curve = []
    for fraction, count in zip(values, counts, strict=True):
        z = clean.clone()
        if count:
            z[torch.from_numpy(chosen[:count]).to(z.device)] = corrupted_rows[:count].to(z)
        entry = {"fraction": fraction, "count": count, **_evaluate(z, ref.to(z.device), side, metrics_fn)}
        curve.append(_with_degradation(entry, baseline))
    return curve
