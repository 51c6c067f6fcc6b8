"""`gen-align fid`: FID (and KID) of images generated from text, audio, text+audio and image vs. reference frames."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gen_align.checks import positive
from gen_align.commands._decoding import (
    add_input_arguments,
    add_model_arguments,
    add_sampling_arguments,
    model_options,
    sampling_options,
)
from gen_align.commands._reports import report_skipped

MINI_EXTRACTOR = "gen_align.mini.recipes.classifier:shipped_extractor"


def run(args: argparse.Namespace) -> int:
    from gen_align.eval.vggsound_fid import FIDOptions, argument_names, fid_warnings, parse_conditions, run_fid
    from gen_align.pipelines.generate import CLI_FLAGS
    from gen_align.pipelines.session import parse_weights

    flags = {name: CLI_FLAGS.get(name, f"--{name.replace('_', '-')}") for name in argument_names()}
    conditions = parse_conditions(args.conditions, flags)
    fid = FIDOptions(
        manifest=args.manifest,
        conditions=conditions,
        weights=parse_weights(args.weights, ["text", "audio"], flags),
        mode=args.mode,
        limit=args.limit,
        extractor=args.extractor or default_extractor(model_options(args)),
        antialias=args.antialias,
        resize=args.resize,
        kid=args.kid,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        cache_dir=args.cache_dir,
        refresh_reference=args.refresh_reference,
        out=args.out,
        strict=args.strict,
        max_audio_seconds=positive(args.max_audio_seconds, flags["max_audio_seconds"]),
    )
    result = run_fid(model_options(args), fid, sampling_options(args), names=flags)
    if not result.record:
        print(f"generated {result.generated} image(s) on this process")
        return 0
    record = result.record
    ref = record["reference"]
    print(
        f"generated {result.generated} image(s); reference statistics of {ref['n']} frames "
        f"{'from the cache' if ref['cached'] else 'computed and cached'}"
    )
    for entry in record["conditions"].values():
        score = "n/a" if entry["fid"] is None else f"{entry['fid']:.3f}"
        kid = f", KID {entry['kid']['mean']:.4g}" if "kid" in entry else ""
        skipped = f", {len(entry['skipped'])} skipped" if entry["skipped"] else ""
        print(f"  {entry['column']:<14} FID {score}{kid} ({entry['images']} images{skipped})")
    for note in fid_warnings(record):
        print(f"  warning: {note}")
    bad = [{**f, "modality": c} for c, e in record["conditions"].items() for f in e["failed"]]
    bad += [{**f, "modality": "reference frame"} for f in record["bad_reference_frames"]]
    if bad:
        print(report_skipped(bad, f"{args.out}/fid.json"), file=sys.stderr)
    print(f"wrote {args.out}/fid.json, fid.md and grids/")
    return 0


def default_extractor(options: Any) -> str:
    """The mini world's attribute classifier when the space is the mini preset, else the FID Inception."""
    from gen_align.pipelines.presence import default_preset
    from gen_align.space import AlignedSpace

    source = options.space or options.preset or default_preset(["text", "audio"], options.weights_dir)
    preset = AlignedSpace.from_pretrained(source, modalities=[]).config.get("preset")
    return MINI_EXTRACTOR if preset == "mini" else "inception"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid",
        help="FID of generated images (text, audio, text+audio, image) against a manifest's reference frames",
        description="Generate one image per manifest item and condition (seed + item index; resumable: existing "
        "OUT/<condition>/<id>.png are reused), then score each condition's FID against the items' image files "
        "(reference statistics cached by manifest, extractor and resize mode). Writes fid.json, fid.md (the "
        "paper's Table 3 layout) and a sample grid per condition.",
    )
    p.add_argument("--manifest", required=True, help="JSONL manifest of the test items (image = reference frame)")
    p.add_argument(
        "--conditions",
        default="text,audio,text+audio,image",
        help="comma-separated subset of text,audio,text+audio,image (default: all four)",
    )
    p.add_argument("--weights", help="text+audio blend weights, e.g. text=0.5,audio=0.5 (default: equal)")
    p.add_argument("--mode", choices=("slerp", "lerp"), default="slerp", help="blend mode (default slerp)")
    p.add_argument("--limit", type=int, help="use only the first N manifest items")
    f = p.add_argument_group("features")
    f.add_argument(
        "--extractor",
        help="inception, a TorchScript file, or package.module:Name of an nn.Module (default: inception; for the "
        "mini preset its attribute classifier, gen_align.mini.recipes.classifier:shipped_extractor)",
    )
    f.add_argument(
        "--antialias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Inception's internal resize antialiased (default; --no-antialias: the TF-FID-compatible resize)",
    )
    f.add_argument(
        "--resize",
        choices=("bicubic", "bilinear", "lanczos", "box", "nearest"),
        default="bicubic",
        help="PIL filter resizing images to the extractor's input size (default bicubic)",
    )
    f.add_argument("--kid", action="store_true", help="also compute KID (extracts the reference features)")
    f.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    f.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size, capped at the set sizes")
    f.add_argument("--cache-dir", help="reference-statistics cache (default: $GEN_ALIGN_HOME/fid-stats)")
    f.add_argument("--refresh-reference", action="store_true", help="recompute the cached reference statistics")
    add_sampling_arguments(p)
    add_model_arguments(p)
    p.add_argument("--out", default="results/fid", help="output directory (default: results/fid)")
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad item instead of skipping and listing it"
    )
    add_input_arguments(p)
    p.set_defaults(func=run)
