"""`gen-align embed`: a manifest's embeddings in the aligned space, with its ids, for `gen-align retrieve`."""

from __future__ import annotations

import argparse
import sys

from gen_align.checks import positive
from gen_align.commands._decoding import add_input_arguments, space_or_default
from gen_align.commands._reports import report_skipped


def run(args: argparse.Namespace) -> int:
    from gen_align.aligned_embeddings import embed_manifest

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    space = space_or_default(args, modalities)
    summary = embed_manifest(
        args.manifest,
        space,
        args.out,
        modalities=modalities,
        cache_dir=args.features,
        weights_dir=args.weights_dir,
        batch_size=args.batch_size,
        strict=args.strict,
        max_audio_seconds=positive(args.max_audio_seconds, "--max-audio-seconds"),
    )
    dims = ", ".join(f"{m} {d}-d" for m, d in summary["dims"].items())
    print(f"embedded {summary['rows']} items ({dims}) into {args.out}; tower features in {summary['features']}")
    if summary["left_out"]:
        print(f"{len(summary['left_out'])} item(s) left out (a modality missing or skipped)", file=sys.stderr)
    if summary["skipped"]:
        print(report_skipped(summary["skipped"], f"{summary['features']}/encode_summary.json"), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="a manifest's embeddings in the aligned space (through the trained heads), with ids, for retrieve",
        description="Encode a manifest with a space's towers (through the resumable feature cache of `gen-align "
        "encode`), map the features with its heads and write one safetensors file of {modality: (N, d)} with the "
        "manifest ids in its metadata; rows are paired (items with every requested modality).",
    )
    p.add_argument("manifest", help="JSONL manifest; paths relative to its folder")
    p.add_argument("--preset", help="preset name (default: the smallest preset whose weights are present)")
    p.add_argument("--space", help="a trained space checkpoint directory instead of a preset")
    p.add_argument("--modalities", default="image,text,audio", help="comma list (default: image,text,audio)")
    p.add_argument("--out", required=True, help="the embeddings file (.safetensors; a summary .json beside it)")
    p.add_argument("--features", help="tower-feature cache folder (default: OUT without .safetensors + .features)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad item instead of skipping and listing it"
    )
    add_input_arguments(p)
    p.set_defaults(func=run)
