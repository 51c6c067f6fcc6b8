"""Figures of an embedding space: a t-SNE (and UMAP, when installed) map of the modalities like the paper's
Fig. 2, and histograms of paired vs unpaired cosine similarities per modality pair."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch

from gen_align.io import write_bytes_atomic

MAX_POINTS = 2000  # per modality in the 2-D maps (t-SNE is O(N log N) but slow on a CPU beyond this)


def _figure_bytes(fig: object) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _units(z: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {m: torch.nn.functional.normalize(v.float(), dim=-1)[:MAX_POINTS].numpy() for m, v in z.items()}


def embedding_map(z: dict[str, torch.Tensor], path: str | os.PathLike, method: str = "tsne", seed: int = 0) -> Path:
    """2-D map of the L2-normalised embeddings of every modality, one colour per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = _units(z)
    points = np.concatenate(list(units.values()))
    if method == "umap":
        import umap

        xy = umap.UMAP(random_state=seed).fit_transform(points)
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    fig, ax = plt.subplots(figsize=(6, 6))
    start = 0
    for modality, u in units.items():
        ax.scatter(xy[start : start + len(u), 0], xy[start : start + len(u), 1], s=6, alpha=0.7, label=modality)
        start += len(u)
    ax.set_title(f"{method.upper()} of the normalised embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3)
    data = _figure_bytes(fig)
    plt.close(fig)
    return write_bytes_atomic(path, data)


def similarity_histograms(z: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Per modality pair: cosine of paired items (same row) vs of unpaired items (all other rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = _units(z)
    pairs = list(itertools.combinations(units, 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.5), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        sim = units[a] @ units[b].T
        paired = np.diag(sim)
        unpaired = sim[~np.eye(*sim.shape, dtype=bool)]
        ax.hist(unpaired, bins=50, density=True, alpha=0.6, label="unpaired")
        ax.hist(paired, bins=50, density=True, alpha=0.6, label="paired")
        ax.set_title(f"{a} vs {b}")
        ax.set_xlabel("cosine similarity")
        ax.legend()
    data = _figure_bytes(fig)
    plt.close(fig)
    return write_bytes_atomic(path, data)
