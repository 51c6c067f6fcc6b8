"""`gen-align retrieve index|search|eval`: FAISS indices over saved embeddings, top-k search, and retrieval
metrics with and without InvGC post-processing."""

from __future__ import annotations

import argparse
from pathlib import Path


def _modality(embeddings: dict, name: str, path: str) -> object:
    from gen_align.errors import ConfigError

    if name not in embeddings:
        raise ConfigError(f"{path} has no {name!r} embeddings; it holds {sorted(embeddings)}. Pick one of those.")
    return embeddings[name]


def run_index(args: argparse.Namespace) -> int:
    from gen_align.aligned_embeddings import read_embedding_ids
    from gen_align.io import load_embeddings
    from gen_align.retrieval.ann import AnnIndex

    gallery = _modality(load_embeddings(args.embeddings), args.modality, args.embeddings)
    ids = read_embedding_ids(args.embeddings)  # the manifest ids of a `gen-align embed` file, else row numbers
    index = AnnIndex.build(
        gallery, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, modality=args.modality, ids=ids
    )
    index.meta["source"] = str(args.embeddings)
    index.save(args.out)
    extra = f", nlist {index.meta['nlist']}, nprobe {index.meta['nprobe']}" if index.kind == "ivf" else ""
    print(f"indexed {index.count} {args.modality} embeddings (d = {index.dim}, {index.kind}{extra}) into {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from gen_align.aligned_embeddings import read_embedding_ids
    from gen_align.io import load_embeddings, write_json_atomic
    from gen_align.retrieval.ann import AnnIndex

    index = AnnIndex.load(args.index)
    queries = _modality(load_embeddings(args.queries), args.modality, args.queries)
    query_ids = read_embedding_ids(args.queries) or list(range(len(queries)))
    scores, positions = index.search(queries, args.k)
    ids = index.ids_of(positions)
    results = [
        {"query": q, "ids": row_ids, "scores": [float(s) for s in row_scores]}
        for q, row_ids, row_scores in zip(query_ids, ids, scores.tolist(), strict=True)
    ]
    summary = {"index": str(args.index), "queries": str(args.queries), "modality": args.modality, "k": args.k}
    path = write_json_atomic(args.out, summary | {"kind": index.kind, "results": results})
    for row in results[:5]:
        print(f"query {row['query']}: {row['ids']}")
    print(f"wrote top-{args.k} of {len(results)} queries to {path}")
    return 0


def _markdown(report: dict, args: argparse.Namespace, counts: tuple[int, int]) -> str:
    from gen_align.retrieval.metrics import metrics_table

    lines = [
        f"# Retrieval {args.query} → {args.gallery} ({counts[0]} queries, {counts[1]} gallery items)",
        "",
        metrics_table({name: entry["metrics"] for name, entry in report.items()}, ("R@1", "R@5", "R@10", "MdR", "MnR")),
        f"| method | r_g | r_q | Δ_deg | MeanSim@{report['cosine']['mean_sim_k']} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in report.items():
        geo = entry["gallery"]
        rates = f"{entry['r_g']:g} | {entry['r_q']:g}" if "r_g" in entry else "— | —"
        cells = [f"{geo[key]:.4f}" if key in geo else "—" for key in ("degeneration", "mean_sim@k")]
        lines.append(f"| {name} | {rates} | {cells[0]} | {cells[1]} |")
    edge = [name for name, entry in report.items() if entry.get("tuning", {}).get("at_grid_max")]
    if edge:
        lines += [
            "",
            f"_Note: the tuned rate of {', '.join(edge)} is the largest on the grid; try --r-g/--r-q above it._",
        ]
    if len(report) == 1:
        lines += ["", "_Note: pass --train-embeddings to add the InvGC post-processing rows._"]
    lines += ["", "_Ranks are 1-based with ties counted pessimistically; R@k in percent._"]
    return "\n".join(lines) + "\n"


def run_eval(args: argparse.Namespace) -> int:
    from gen_align.errors import ConfigError
    from gen_align.io import load_embeddings, write_json_atomic, write_text_atomic
    from gen_align.retrieval.invgc import compare_postprocessing

    if (args.r_g is None) != (args.r_q is None):
        raise ConfigError("give both --r-g and --r-q, or neither (then they are tuned on a validation split).")
    test = load_embeddings(args.embeddings)
    query, gallery = _modality(test, args.query, args.embeddings), _modality(test, args.gallery, args.embeddings)
    train_query = train_gallery = None
    if args.train_embeddings:
        train = load_embeddings(args.train_embeddings)
        train_query = _modality(train, args.query, args.train_embeddings)
        train_gallery = _modality(train, args.gallery, args.train_embeddings)
    report = compare_postprocessing(
        query,
        gallery,
        train_query,
        train_gallery,
        k_percent=args.k_percent,
        rates=None if args.r_g is None else (args.r_g, args.r_q),
        val_size=args.val_size,
        seed=args.seed,
        chunk_size=args.chunk_size,
    )
    out = Path(args.out)
    values = {
        "embeddings": str(args.embeddings),
        "train_embeddings": args.train_embeddings and str(args.train_embeddings),
        "query": args.query,
        "gallery": args.gallery,
        "tie_rule": "pessimistic: negatives tied with a positive rank ahead of it",
        "methods": report,
    }
    markdown = _markdown(report, args, (int(query.shape[0]), int(gallery.shape[0])))
    json_path = write_json_atomic(out / "retrieval.json", values)
    md_path = write_text_atomic(out / "retrieval.md", markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieve",
        help="FAISS index + search over saved embeddings; retrieval metrics with InvGC post-processing",
        description="Cross-modal retrieval over safetensors files of {modality: (N, d)} embeddings "
        "(rows paired across modalities).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    idx = actions.add_parser("index", help="build a FAISS index over one modality's L2-normalised embeddings")
    idx.add_argument("--embeddings", required=True, help="safetensors file of {modality: (N, d)}")
    idx.add_argument("--modality", required=True, help="the modality to index (the gallery), e.g. audio")
    idx.add_argument("--out", required=True, help="index directory (index.faiss + index.json)")
    idx.add_argument("--kind", choices=("flat", "ivf"), default="flat", help="exact flat or IVF (default: flat)")
    idx.add_argument("--nlist", type=int, help="IVF cells (default ≈ 4√N, ≥ 39 rows per cell)")
    idx.add_argument("--nprobe", type=int, help="IVF cells visited per query (default ⌈nlist / 8⌉)")
    idx.set_defaults(func=run_index)

    search = actions.add_parser("search", help="top-k gallery ids for every query row of a file")
    search.add_argument("--index", required=True, help="index directory written by `retrieve index`")
    search.add_argument("--queries", required=True, help="safetensors file of {modality: (N, d)}")
    search.add_argument("--modality", required=True, help="the query modality in that file, e.g. text")
    search.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--out", default="results/retrieval/search.json", help="results JSON file")
    search.set_defaults(func=run_search)

    ev = actions.add_parser(
        "eval",
        help="R@1/5/10, MdR, MnR, mAP of query → gallery by cosine, +AvgPool, +InvGC, +InvGC w/ LocalAdj",
        description="Paired retrieval (query row i ↔ gallery row i); with --train-embeddings the gallery is also "
        "post-processed (rates tuned by R@1 on a validation split of the train pairs unless --r-g/--r-q are given). "
        "Writes retrieval.json and retrieval.md.",
    )
    ev.add_argument("--embeddings", required=True, help="test embeddings: safetensors of {modality: (N, d)}")
    ev.add_argument("--query", required=True, help="query modality, e.g. text")
    ev.add_argument("--gallery", required=True, help="gallery modality, e.g. audio")
    ev.add_argument("--train-embeddings", help="train embeddings (the InvGC banks), same modalities")
    ev.add_argument("--k-percent", type=float, default=1.0, help="LocalAdj/AvgPool neighbours, %% of the bank (1)")
    ev.add_argument("--r-g", type=float, help="fixed propagation rate against the train gallery")
    ev.add_argument("--r-q", type=float, help="fixed propagation rate against the train queries")
    ev.add_argument("--val-size", type=int, help="validation pairs for tuning (default min(1000, N_train // 5))")
    ev.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    ev.add_argument("--chunk-size", type=int, default=1024, help="query rows scored per block (default 1024)")
    ev.add_argument("--out", default="results/retrieval", help="output directory (default: results/retrieval)")
    ev.set_defaults(func=run_eval)
