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


def _cmd_encode(args: argparse.Namespace) -> int:
    from gen_align.data.encode import encode_manifest

    summary = encode_manifest(
        args.manifest,
        args.space or args.preset,
        args.out,
        modalities=[m.strip() for m in args.modalities.split(",") if m.strip()],
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        weights_dir=args.weights_dir,
        overwrite=args.overwrite,
    )
    lacking = summary["lacking"]
    print(f"encoded {summary['encoded_now']} into {args.out}; {len(lacking)} items lack a requested modality")
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

    p = sub.add_parser(
        "encode",
        help="frozen tower features of a JSONL manifest into a resumable sharded safetensors cache",
        description="Encode a manifest ({id, image?, audio?, text?} per line) into DIR: shards + index.json + "
        "sha256; re-running resumes. Multi-GPU: accelerate launch -m gen_align encode ...",
    )
    p.add_argument("manifest", help="JSONL manifest; paths relative to its folder")
    p.add_argument("--preset", default="stable-unclip-h", help="preset name (default: stable-unclip-h)")
    p.add_argument("--space", help="a trained space checkpoint directory instead of a preset")
    p.add_argument("--modalities", default="image,text,audio", help="comma list (default: image,text,audio)")
    p.add_argument("--out", required=True, help="output directory of the cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1024, help="rows per shard (default 1024)")
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    p.add_argument("--overwrite", action="store_true", help="start over if DIR holds a cache of another space")
    p.set_defaults(func=_cmd_encode)
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
