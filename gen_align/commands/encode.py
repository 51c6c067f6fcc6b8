"""`gen-align encode`: frozen tower features of a manifest into the feature cache."""

from __future__ import annotations

import argparse
import sys

from gen_align.checks import positive
from gen_align.commands._decoding import add_input_arguments, space_or_default
from gen_align.commands._reports import report_skipped


def run(args: argparse.Namespace) -> int:
    from gen_align.feature_extraction import encode_manifest

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    space = space_or_default(args, modalities)
    summary = encode_manifest(
        args.manifest,
        space,
        args.out,
        modalities=modalities,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        weights_dir=args.weights_dir,
        overwrite=args.overwrite,
        strict=args.strict,
        max_audio_seconds=positive(args.max_audio_seconds, "--max-audio-seconds"),
    )
    lacking, skipped = summary["lacking"], summary["skipped"]
    print(f"encoded {summary['encoded_now']} into {args.out}; {len(lacking)} items lack a requested modality")
    if skipped:
        print(report_skipped(skipped, f"{args.out}/encode_summary.json"), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="frozen tower features of a JSONL manifest into a resumable sharded safetensors cache",
        description="Encode a manifest ({id, image?, audio?, text?} per line) into DIR: shards + index.json + "
        "sha256; re-running resumes. Multi-GPU: accelerate launch -m gen_align encode ...",
    )
    p.add_argument("manifest", help="JSONL manifest; paths relative to its folder")
    p.add_argument(
        "--preset", help="preset name (default: the smallest preset whose weights are present, as in generate)"
    )
    p.add_argument("--space", help="a trained space checkpoint directory instead of a preset")
    p.add_argument("--modalities", default="image,text,audio", help="comma list (default: image,text,audio)")
    p.add_argument("--out", required=True, help="output directory of the cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1024, help="rows per shard (default 1024)")
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    p.add_argument("--overwrite", action="store_true", help="start over if DIR holds a cache of another space")
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad item instead of skipping and listing it"
    )
    add_input_arguments(p)
    p.set_defaults(func=run)
