"""`gen-align download PRESET`: every component of a preset into the weights home, resumable."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from gen_align.pipelines.download import download_preset, missing_components
    from gen_align.presets import get_preset
    from gen_align.weights import weights_home

    modalities = None if args.modalities is None else [m.strip() for m in args.modalities.split(",") if m.strip()]
    preset = get_preset(args.preset)
    if args.check:
        missing = missing_components(preset, modalities, args.weights_dir)
        for m in missing:
            print(f"missing {m.what}: {m.source}")
        print(f"{args.preset}: {'complete' if not missing else f'{len(missing)} component(s) missing'}")
        return 0 if not missing else 1
    written = download_preset(args.preset, modalities, args.weights_dir)
    print(f"{args.preset}: {len(written)} component(s) fetched into {weights_home(args.weights_dir)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from gen_align.presets import list_presets

    p = sub.add_parser(
        "download",
        help="fetch every component of a preset (decoder, towers, official BEATs file) into $GEN_ALIGN_HOME",
        description="Download what a preset needs, each component once, into --weights-dir / $GEN_ALIGN_HOME "
        "(~/.cache/gen-align): hub repositories as <owner>/<name>/ with only the files the loaders read, files "
        "that are not on the hub from their official URL. Interrupted downloads continue when run again. --check "
        "lists what is missing without downloading (exit 1 when something is).",
    )
    p.add_argument("preset", help=f"preset name: {', '.join(list_presets())}")
    p.add_argument("--modalities", help="only the towers of these inputs, e.g. text,audio (default: every tower)")
    p.add_argument("--weights-dir", help="where to put them (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    p.add_argument("--check", action="store_true", help="list the missing components only; download nothing")
    p.set_defaults(func=run)
