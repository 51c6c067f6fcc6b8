"""`gen-align analyze`: geometry diagnostics of saved embeddings."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from gen_align.eval.analysis import analyze_embeddings_file

    report = analyze_embeddings_file(
        args.embeddings, out_dir=args.out, anchor=args.anchor, tau=args.tau, max_items=args.max_items, seed=args.seed
    )
    print(report.markdown)
    print(f"\nwrote {report.json_path} and {report.markdown_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="modality gap, Hölder divergence, conflict metrics ζ/χ and degeneration of saved embeddings",
        description="Analyse a safetensors file of {modality: (N, d)} embeddings; "
        "writes analysis.json and analysis.md.",
    )
    p.add_argument("--embeddings", required=True, help="safetensors file with one (N, d) tensor per modality")
    p.add_argument("--anchor", default="image", help="anchor modality for ζ/χ (default: image)")
    p.add_argument("--tau", type=float, default=0.07, help="kernel temperature (default: 0.07)")
    p.add_argument("--max-items", type=int, default=4096, help="random subset for the O(N²) estimates (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of that subset (default 0)")
    p.add_argument("--out", default="results/analysis", help="output directory (default: results/analysis)")
    p.set_defaults(func=run)
