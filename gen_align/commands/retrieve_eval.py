"""`gen-align retrieve eval`: the retrieval table of :mod:`gen_align.retrieval.evaluation` as JSON and markdown."""

from __future__ import annotations

import argparse
from pathlib import Path

from gen_align.commands._embedding_files import modality

MEASURES = ("MeanSim", "MeanSim@1", "MeanSim@10")


def _heads(specs: list[str]) -> dict:
    """``[NAME=]DIR`` → {name: head}; the name defaults to the head's kind (GARE, GraviAlign)."""
    from gen_align.errors import ConfigError
    from gen_align.retrieval.head_training import load_head

    labels = {"gare": "GARE", "gravi-align": "GraviAlign"}
    heads = {}
    for spec in specs:
        name, _, directory = spec.rpartition("=") if "=" in spec else ("", "", spec)
        head = load_head(directory)
        name = name or labels.get(head.kind, head.kind)
        if name in heads:
            raise ConfigError(f"two heads are named {name!r}; name them --head NAME=DIR.")
        heads[name] = head
    return heads


def _percents(text: str) -> tuple[float, ...]:
    from gen_align.errors import ConfigError

    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(
            f"--avgpool-percents must be comma-separated numbers like 10,25,50,100, got {text!r}."
        ) from None


def _cell(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict, query: str, gallery: str, counts: tuple[int, int]) -> str:
    """The InvGC paper's layout: metrics per method, then its Tables 1–2 and the two-stage statistics."""
    from gen_align.retrieval.metrics import metrics_table

    lines = [
        f"# Retrieval {query} → {gallery} ({counts[0]} queries, {counts[1]} gallery items)",
        "",
        metrics_table({name: entry["metrics"] for name, entry in report.items()}, ("R@1", "R@5", "R@10", "MdR", "MnR")),
        "Similarity measures (InvGC Tables 1–2; ↓): within the gallery, and of the gallery against the queries "
        "(each item's own query excluded); MeanSim@1 is Δ_deg.",
        "",
        "| method | r_g | r_q | gallery MeanSim | @1 | @10 | gallery–query MeanSim | @1 | @10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report.items():
        if "gallery" not in entry:
            continue
        rates = f"{entry['r_g']:g} | {entry['r_q']:g}" if "r_g" in entry else "— | —"
        cells = [_cell(entry[table].get(m)) for table in ("gallery", "gallery_query") for m in MEASURES]
        lines.append(f"| {name} | {rates} | " + " | ".join(cells) + " |")
    staged = {name: entry for name, entry in report.items() if "coverage" in entry or "deviation" in entry}
    if staged:
        lines += [
            "",
            "Two-stage search (cosine top-K, re-ranked): coverage C_K = share of the head's full-gallery top-10 "
            "inside the cosine top-K; deviation = |s − cos| over all pairs (GARE).",
            "",
            "| method | K | C_K | deviation mean | deviation P95 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, entry in staged.items():
            cover, dev = entry.get("coverage", {}), entry.get("deviation", {})
            k = cover.get("K", "—")
            lines.append(
                f"| {name} | {k} | {_cell(cover.get('C_K'))} | {_cell(dev.get('mean'))} | {_cell(dev.get('p95'))} |"
            )
    edge = [name for name, entry in report.items() if entry.get("tuning", {}).get("at_grid_max")]
    if edge:
        lines += [
            "",
            f"_Note: the tuned rate of {', '.join(edge)} is the largest on the grid; try --r-g/--r-q above it._",
        ]
    if "+InvGC" not in report:
        lines += ["", "_Note: pass --train-embeddings to add the post-processing and normalisation rows._"]
    lines += ["", "_Ranks are 1-based with ties counted pessimistically; R@k in percent._"]
    return "\n".join(lines) + "\n"


def run_eval(args: argparse.Namespace) -> int:
    from gen_align.errors import ConfigError
    from gen_align.io import FolderLock, load_embeddings, write_json_atomic, write_text_atomic
    from gen_align.retrieval.evaluation import evaluate_retrieval

    if (args.r_g is None) != (args.r_q is None):
        raise ConfigError("give both --r-g and --r-q, or neither (then they are tuned on a validation split).")
    test = load_embeddings(args.embeddings)
    query, gallery = modality(test, args.query, args.embeddings), modality(test, args.gallery, args.embeddings)
    train_query = train_gallery = None
    if args.train_embeddings:
        train = load_embeddings(args.train_embeddings)
        train_query = modality(train, args.query, args.train_embeddings)
        train_gallery = modality(train, args.gallery, args.train_embeddings)
    heads = _heads(args.head)
    out = Path(args.out)
    with FolderLock(out, "retrieve-eval"):
        report = evaluate_retrieval(
            query,
            gallery,
            train_query,
            train_gallery,
            heads=heads,
            candidates=args.candidates,
            k_percent=args.k_percent,
            avgpool_percents=_percents(args.avgpool_percents),
            rates=None if args.r_g is None else (args.r_g, args.r_q),
            val_size=args.val_size,
            seed=args.seed,
            chunk_size=args.chunk_size,
        )
        values = {
            "embeddings": str(args.embeddings),
            "train_embeddings": args.train_embeddings and str(args.train_embeddings),
            "heads": {name: str(spec) for name, spec in zip(heads, args.head, strict=True)},
            "query": args.query,
            "gallery": args.gallery,
            "tie_rule": "pessimistic: negatives tied with a positive rank ahead of it",
            "methods": report,
        }
        text = markdown(report, args.query, args.gallery, (int(query.shape[0]), int(gallery.shape[0])))
        json_path = write_json_atomic(out / "retrieval.json", values)
        md_path = write_text_atomic(out / "retrieval.md", text)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0
