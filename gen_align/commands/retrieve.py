"""`gen-align retrieve index|search|eval|train-head`: FAISS indices over saved embeddings, top-k search with
re-ranking, the retrieval table, and head training."""

from __future__ import annotations

import argparse

from gen_align.commands._embedding_files import modality
from gen_align.commands.retrieve_eval import run_eval
from gen_align.commands.retrieve_train import add_train_arguments, run_train_head


def run_index(args: argparse.Namespace) -> int:
    from gen_align.aligned_embeddings import read_embedding_ids
    from gen_align.io import load_embeddings
    from gen_align.retrieval.ann import AnnIndex

    gallery = modality(load_embeddings(args.embeddings), args.modality, args.embeddings)
    ids = read_embedding_ids(args.embeddings)  # the manifest ids of a `gen-align embed` file, else row numbers
    index = AnnIndex.build(
        gallery, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, modality=args.modality, ids=ids
    )
    index.meta["source"] = str(args.embeddings)
    index.save(args.out)
    extra = f", nlist {index.meta['nlist']}, nprobe {index.meta['nprobe']}" if index.kind == "ivf" else ""
    print(f"indexed {index.count} {args.modality} embeddings (d = {index.dim}, {index.kind}{extra}) into {args.out}")
    return 0


RERANKERS = ("gare", "gravi", "volume", "invgc")


def _same_gallery(index: object, gallery: object, path: str) -> None:
    from gen_align.errors import InputFileError
    from gen_align.retrieval.ann import gallery_sha256

    if gallery_sha256(gallery) != index.meta.get("gallery_sha256"):
        raise InputFileError(
            f"{path}: its {index.meta.get('modality')!r} rows are not the ones the index was built from; pass the "
            "embeddings file given to `retrieve index` (--gallery-embeddings)."
        )


def _gallery_file(args: argparse.Namespace, index: object) -> dict:
    """The embeddings file the index was built from (or --gallery-embeddings), its indexed rows checked."""
    from gen_align.errors import ConfigError
    from gen_align.io import load_embeddings

    path = args.gallery_embeddings or index.meta.get("source")
    if not path:
        raise ConfigError("this re-ranker reads the gallery's embeddings file; pass --gallery-embeddings FILE.")
    embeddings = load_embeddings(path)
    _same_gallery(index, modality(embeddings, index.meta.get("modality"), path), path)
    return embeddings


def _invgc_gallery(args: argparse.Namespace, index: object, gallery: object) -> tuple[object, dict]:
    """The index's gallery post-processed by InvGC against the train banks, rates given or tuned (R@1 on a
    validation split of the train pairs)."""
    from gen_align.errors import ConfigError
    from gen_align.io import load_embeddings
    from gen_align.retrieval.evaluation import validation_split
    from gen_align.retrieval.invgc import invgc, tune_invgc

    if not args.train_embeddings:
        raise ConfigError("--rerank invgc needs --train-embeddings FILE (the train queries and gallery: its banks).")
    if (args.r_g is None) != (args.r_q is None):
        raise ConfigError("give both --r-g and --r-q, or neither (then they are tuned on a validation split).")
    train = load_embeddings(args.train_embeddings)
    tq = modality(train, args.modality, args.train_embeddings)
    tg = modality(train, index.meta.get("modality"), args.train_embeddings)
    settings = {"adjacency": args.adjacency, "k_percent": args.k_percent}
    if args.r_g is None:
        val, bank, n_val = validation_split(tq.shape[0], None, 0)
        tuned = tune_invgc(tq[val], tg[val], tg[bank], tq[bank], args.adjacency, args.k_percent)
        rates = (tuned["r_g"], tuned["r_q"])
        settings |= {"tuned_on": n_val, "validation_R@1": tuned["R@1"]}
    else:
        rates = (args.r_g, args.r_q)
    settings |= {"r_g": rates[0], "r_q": rates[1]}
    return invgc(gallery, tg, tq, *rates, args.adjacency, args.k_percent), settings


def _rescorer(args: argparse.Namespace, index: object, queries: object) -> tuple[object, dict]:
    """The ``rescore(rows, candidates)`` of ``--rerank`` and what the output records about it."""
    from gen_align.errors import ConfigError
    from gen_align.retrieval.ann import cosine_rescorer, volume_rescorer
    from gen_align.retrieval.head_training import load_head

    kind = args.rerank
    if kind in ("gare", "gravi"):
        if not args.head:
            raise ConfigError(f"--rerank {kind} needs --head DIR (a head from `gen-align retrieve train-head`).")
        head = load_head(args.head)
        expected = "gare" if kind == "gare" else "gravi-align"
        if head.kind != expected:
            raise ConfigError(f"--head {args.head} holds a {head.kind!r} head; --rerank {kind} needs a {expected} one.")
        gallery = index.embeddings()  # GARE and GraviAlign read the rows at their original lengths
        return (lambda rows, cand: head.rerank(queries[rows], gallery, cand).float()), {"head": str(args.head)}
    if kind == "volume":
        if not args.with_modalities:
            raise ConfigError("--rerank volume needs --with MOD[,MOD] (the other modalities of each gallery tuple).")
        embeddings = _gallery_file(args, index)
        names = [m.strip() for m in args.with_modalities.split(",") if m.strip()]
        parts = [index.vectors()] + [
            modality(embeddings, m, args.gallery_embeddings or "the gallery file") for m in names
        ]
        return volume_rescorer(queries, parts), {"with": names}
    processed, settings = _invgc_gallery(args, index, index.vectors())
    return cosine_rescorer(queries, processed), settings


def run_search(args: argparse.Namespace) -> int:
    from gen_align.aligned_embeddings import read_embedding_ids
    from gen_align.checks import integer
    from gen_align.errors import ConfigError
    from gen_align.io import load_embeddings, write_json_atomic
    from gen_align.retrieval.ann import AnnIndex, two_stage_search

    index = AnnIndex.load(args.index)
    queries = modality(load_embeddings(args.queries), args.modality, args.queries)
    query_ids = read_embedding_ids(args.queries) or list(range(len(queries)))
    summary = {"index": str(args.index), "queries": str(args.queries), "modality": args.modality, "k": args.k}
    if args.rerank is None:
        scores, positions = index.search(queries, args.k)
    else:
        candidates = min(100, index.count) if args.candidates is None else integer(args.candidates, "--candidates")
        if candidates > index.count:
            raise ConfigError(f"--candidates {candidates} exceeds the {index.count} indexed items; lower it.")
        rescore, settings = _rescorer(args, index, queries)
        # a head reads the whole gallery on every call (and chunks its queries itself): call it once
        chunk = len(queries) if args.rerank in ("gare", "gravi") else 256
        scores, positions = two_stage_search(index, queries, args.k, candidates, rescore, chunk_size=chunk)
        summary["rerank"] = {"method": args.rerank, "candidates": candidates, **settings}
    ids = index.ids_of(positions)
    results = [
        {"query": q, "ids": row_ids, "scores": [float(s) for s in row_scores]}
        for q, row_ids, row_scores in zip(query_ids, ids, scores.tolist(), strict=True)
    ]
    path = write_json_atomic(args.out, summary | {"kind": index.kind, "results": results})
    for row in results[:5]:
        print(f"query {row['query']}: {row['ids']}")
    print(f"wrote top-{args.k} of {len(results)} queries to {path}")
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
    rerank = search.add_argument_group("re-ranking (two-stage: the index's top --candidates, re-scored)")
    rerank.add_argument(
        "--rerank", choices=RERANKERS, help="re-score the candidates with a head, GRAM's volume or InvGC"
    )
    rerank.add_argument("--candidates", type=int, help="first-stage candidates per query (default min(100, N))")
    rerank.add_argument("--head", help="gare/gravi: the head directory written by `retrieve train-head`")
    rerank.add_argument("--with", dest="with_modalities", help="volume: the gallery tuple's other modalities, a,b")
    rerank.add_argument("--gallery-embeddings", help="volume: the gallery file (default: the index's source file)")
    rerank.add_argument("--train-embeddings", help="invgc: train embeddings of the query and gallery modalities")
    rerank.add_argument("--adjacency", choices=("local", "full"), default="local", help="invgc: LocalAdj or full")
    rerank.add_argument("--k-percent", type=float, default=1.0, help="invgc LocalAdj neighbours, %% of a bank (1)")
    rerank.add_argument("--r-g", type=float, help="invgc: rate against the train gallery (default: tuned)")
    rerank.add_argument("--r-q", type=float, help="invgc: rate against the train queries (default: tuned)")
    search.set_defaults(func=run_search)

    ev = actions.add_parser(
        "eval",
        help="R@1/5/10, MdR, MnR of query → gallery by cosine, post-processing, score normalisation and heads",
        description="Paired retrieval (query row i ↔ gallery row i) in the InvGC paper's table layout. With "
        "--train-embeddings: +AvgPool (p grid), +InvGC, +InvGC w/ LocalAdj (rates tuned by R@1 on a validation split "
        "of the train pairs unless --r-g/--r-q are given), +IS, +QB-Norm, +DBNorm; always +DSL; each --head over the "
        "whole gallery and as a two-stage re-ranker (coverage, deviation). Writes retrieval.json and retrieval.md.",
    )
    ev.add_argument("--embeddings", required=True, help="test embeddings: safetensors of {modality: (N, d)}")
    ev.add_argument("--query", required=True, help="query modality, e.g. text")
    ev.add_argument("--gallery", required=True, help="gallery modality, e.g. audio")
    ev.add_argument("--train-embeddings", help="train embeddings (the InvGC banks), same modalities")
    ev.add_argument("--k-percent", type=float, default=1.0, help="LocalAdj neighbours, %% of each bank (default 1)")
    ev.add_argument(
        "--avgpool-percents", default="10,25,50,100", help="AvgPool's p grid, %% of each bank (InvGC App. C.4)"
    )
    ev.add_argument("--head", action="append", default=[], metavar="[NAME=]DIR", help="a trained head (repeatable)")
    ev.add_argument("--candidates", type=int, default=100, help="two-stage rows: cosine candidates per query (100)")
    ev.add_argument("--r-g", type=float, help="fixed propagation rate against the train gallery")
    ev.add_argument("--r-q", type=float, help="fixed propagation rate against the train queries")
    ev.add_argument("--val-size", type=int, help="validation pairs for tuning (default min(1000, N_train // 5))")
    ev.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    ev.add_argument("--chunk-size", type=int, default=1024, help="query rows scored per block (default 1024)")
    ev.add_argument("--out", default="results/retrieval", help="output directory (default: results/retrieval)")
    ev.set_defaults(func=run_eval)

    train = actions.add_parser("train-head", help="train a GARE or GraviAlign head on paired embeddings")
    add_train_arguments(train)
    train.set_defaults(func=run_train_head)
