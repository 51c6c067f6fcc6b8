"""The ``gen-align`` command line: one sub-command per feature; user errors print a message, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gen_align import __version__
from gen_align.errors import GenAlignError


def _cmd_objectives(args: argparse.Namespace) -> int:
    from gen_align.objectives import list_objectives

    table = list_objectives()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, info in table.items():
        defaults = ", ".join(f"{k}={v}" for k, v in info["defaults"].items())
        print(f"{name:18s} {info['description']}\n{'':18s} defaults: {defaults}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from gen_align.eval.analysis import analyze_embeddings_file

    report = analyze_embeddings_file(
        args.embeddings, out_dir=args.out, anchor=args.anchor, tau=args.tau, max_items=args.max_items, seed=args.seed
    )
    print(report.markdown)
    print(f"\nwrote {report.json_path} and {report.markdown_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gen-align",
        description="Align text, audio and vision in one image-anchored CLIP space; generate, evaluate, retrieve.",
    )
    parser.add_argument("--version", action="version", version=f"gen-align {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("objectives", help="list the registered training objectives and their defaults")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_objectives)

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
    p.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gen-align`` console script and ``python -m gen_align``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except GenAlignError as err:
        print(f"gen-align {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gen-align {args.command}: interrupted", file=sys.stderr)
        return 130
