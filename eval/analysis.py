"""Geometry of an embedding space: modality gap, Hölder divergence, conflict metrics, degeneration.

``gen-align analyze --embeddings FILE`` reads ``{modality: (N, d)}`` embeddings and writes
``analysis.json`` and ``analysis.md``. Paired sets (same N in every modality, row i = one item) also get
the paired cosine and the conflict metrics ζ/χ of the anchor.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gen_align.diagnostics import conflict_metrics, degeneration_score, holder_divergence, modality_gap
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.io import load_embeddings, write_json_atomic, write_text_atomic
from gen_align.objectives.uniformity import uniformity
from gen_align.tensors import as_embeddings, unit


@dataclass
class AnalysisReport:
    """Values of one analysis, its Markdown rendering and where both were written."""

    values: dict[str, Any]
    markdown: str
    json_path: Path | None = None
    markdown_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def _subsample(z_dict: dict[str, torch.Tensor], max_items: int, seed: int, paired: bool) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if paired:
        n = next(iter(z_dict.values())).shape[0]
        idx = torch.randperm(n, generator=generator)[:max_items] if n > max_items else None
        return {m: z if idx is None else z[idx] for m, z in z_dict.items()}
    return {
        m: z if z.shape[0] <= max_items else z[torch.randperm(z.shape[0], generator=generator)[:max_items]]
        for m, z in z_dict.items()
    }


def analyze_embeddings(
    z_dict: dict[str, torch.Tensor], anchor: str = "image", tau: float = 0.07, max_items: int = 4096, seed: int = 0
) -> AnalysisReport:
    """Compute the diagnostics of ``gen_align.diagnostics`` on a ``{modality: (N, d)}`` set (O(N²) estimates
    on a seeded random subset of at most ``max_items`` items)."""
    if max_items < 2:
        raise ConfigError(f"max_items must be at least 2, got {max_items}.")
    z_dict = {m: as_embeddings(z, name=m, min_batch=2).float() for m, z in z_dict.items()}
    for m, z in z_dict.items():
        unit(z, name=m)  # NaN/inf/zero rows: refuse the file before any output is written
    dims = {m: z.shape[1] for m, z in z_dict.items()}
    if len(set(dims.values())) > 1:
        raise EmbeddingError(f"all modalities must live in one space (same d), got dimensions {dims}.")
    counts = {m: z.shape[0] for m, z in z_dict.items()}
    paired = len(set(counts.values())) == 1
    z = _subsample(z_dict, max_items, seed, paired)
    values: dict[str, Any] = {
        "items": counts,
        "dimension": next(iter(dims.values())),
        "paired": paired,
        "tau": tau,
        "subset": {m: v.shape[0] for m, v in z.items()},
        "per_modality": {},
    }
    for m, v in z.items():
        values["per_modality"][m] = {
            "mean_norm": float(torch.linalg.vector_norm(v, dim=-1).mean()),
            "uniformity": float(uniformity(v, tau=tau)),
            "degeneration": degeneration_score(v),
        }
    notes = []
    if len(z) >= 2:
        values["modality_gap"] = modality_gap(z)
        holder_anchor = anchor if anchor in z else None  # the paper's estimator anchors the joint term (Eq. 24)
        values["holder_divergence"] = float(holder_divergence(z, tau=tau, anchor=holder_anchor))
        values["holder_anchor"] = holder_anchor or next(iter(z))
        if paired:
            values["paired_cosine"] = {
                f"{a}-{b}": float((unit(z[a]) * unit(z[b])).sum(-1).mean()) for a, b in itertools.combinations(z, 2)
            }
            if anchor in z:
                conflict = conflict_metrics(z, anchor=anchor, tau=tau)  # μ̄ is NaN for M = 2: null in the JSON
                values["conflict"] = {k: v if math.isfinite(v) else None for k, v in conflict.items()}
            else:
                notes.append(f"anchor {anchor!r} not in the file: conflict metrics skipped")
        else:
            notes.append("modalities have different item counts (unpaired): paired cosine and ζ/χ skipped")
    else:
        notes.append("one modality only: cross-modal quantities skipped")
    return AnalysisReport(values=values, markdown=_markdown(values, notes), notes=notes)


def _markdown(values: dict[str, Any], notes: list[str]) -> str:
    lines = [
        f"# Embedding analysis (d = {values['dimension']}, τ = {values['tau']})",
        "",
        "| modality | items | mean norm | uniformity U(Z) | Δ_deg |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, row in values["per_modality"].items():
        lines.append(
            f"| {m} | {values['items'][m]} | {row['mean_norm']:.4f} | {row['uniformity']:.4f} "
            f"| {row['degeneration']:.4f} |"
        )
    if "modality_gap" in values:
        lines += ["", "| pair | modality gap | paired cosine |", "|---|---:|---:|"]
        for pair, gap in values["modality_gap"].items():
            cos = values.get("paired_cosine", {}).get(pair)
            lines.append(f"| {pair} | {gap:.4f} | {'—' if cos is None else f'{cos:.4f}'} |")
        lines += [
            "",
            f"Hölder divergence (Eq. 24, anchor {values['holder_anchor']}): {values['holder_divergence']:.4f}",
        ]
    if "conflict" in values:
        c = values["conflict"]
        bound = "" if c["mu_bar"] is None else f", μ̄ = {c['mu_bar']:.4f} (Eq. 7: E[χ] ≥ {c['chi_bound']:.4f})"
        lines.append(f"Conflict (Eq. 4, anchor): ζ = {c['zeta']:.4f}, χ = {c['chi']:.4f}{bound}")
    lines += [f"\n_Note: {n}._" for n in notes]
    return "\n".join(lines) + "\n"


def embed_manifest(
    space: str | os.PathLike,
    manifest: str | os.PathLike,
    modalities: list[str],
    *,
    max_items: int = 4096,
    seed: int = 0,
    weights_dir: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """Embeddings of the manifest items that have every modality (a seeded subset of at most ``max_items``)."""
    from gen_align.data.manifest import read_manifest
    from gen_align.space import AlignedSpace

    items = read_manifest(manifest, modalities=modalities).items_with(modalities)
    if len(items) < 2:
        raise EmbeddingError(f"{manifest} has {len(items)} items with all of {modalities}; the analysis needs >= 2.")
    if len(items) > max_items:
        keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:max_items].sort().values
        items = [items[i] for i in keep.tolist()]
    model = AlignedSpace.from_pretrained(space, modalities=modalities, weights_dir=weights_dir)
    encode = {"image": model.encode_image, "text": model.encode_text, "audio": model.encode_audio}
    return {m: encode[m]([item.get(m) for item in items]) for m in modalities}


def write_report(
    report: AnalysisReport, z: dict[str, torch.Tensor], out_dir: str | os.PathLike, plots: bool = True, seed: int = 0
) -> AnalysisReport:
    """``analysis.json``, ``analysis.md`` and (with ≥ 2 modalities) ``tsne.png``, ``umap.png`` (if umap-learn is
    installed) and ``similarity.png`` under ``out_dir``."""
    from gen_align.eval.plots import embedding_map, similarity_histograms

    out_dir = Path(out_dir)
    if plots and len(z) >= 2:
        figures = {"tsne": embedding_map(z, out_dir / "tsne.png", "tsne", seed)}
        if importlib.util.find_spec("umap") is not None:
            figures["umap"] = embedding_map(z, out_dir / "umap.png", "umap", seed)
        if len({v.shape[0] for v in z.values()}) == 1:  # paired rows
            figures["similarity"] = similarity_histograms(z, out_dir / "similarity.png")
        report.values["figures"] = {k: str(v) for k, v in figures.items()}
    report.json_path = write_json_atomic(out_dir / "analysis.json", report.values)
    report.markdown_path = write_text_atomic(out_dir / "analysis.md", report.markdown)
    return report


def analyze_embeddings_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike = "results/analysis",
    anchor: str = "image",
    tau: float = 0.07,
    max_items: int = 4096,
    seed: int = 0,
) -> AnalysisReport:
    """:func:`analyze_embeddings` on a safetensors file; writes the report (see :func:`write_report`)."""
    z = load_embeddings(path)
    report = analyze_embeddings(z, anchor=anchor, tau=tau, max_items=max_items, seed=seed)
    report.values["source"] = str(path)
    return write_report(report, z, out_dir, seed=seed)
