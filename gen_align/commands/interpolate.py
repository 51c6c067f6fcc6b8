"""`gen-align interpolate`: images along the arc between two inputs, as a strip PNG and an animated GIF."""

from __future__ import annotations

import argparse
import sys

from gen_align.commands._decoding import (
    add_input_arguments,
    add_model_arguments,
    add_sampling_arguments,
    model_options,
    sampling_options,
)


def run(args: argparse.Namespace) -> int:
    from gen_align.checks import positive
    from gen_align.pipelines.generate import CLI_FLAGS, interpolate_images
    from gen_align.pipelines.session import parse_condition

    limit = positive(args.max_audio_seconds, CLI_FLAGS["max_audio_seconds"])
    result = interpolate_images(
        model_options(args),
        parse_condition(args.start, CLI_FLAGS, max_audio_seconds=limit),
        parse_condition(args.end, CLI_FLAGS, max_audio_seconds=limit),
        frames=args.frames,
        mode=args.mode,
        decode=sampling_options(args),
        duration_ms=args.duration,
        out=args.out,
    )
    for warning in result.record.get("warnings", []):
        print(f"gen-align interpolate: warning: {warning}", file=sys.stderr)
    print(f"{args.frames} frames ({result.record['decoder']['kind']}); wrote " + ", ".join(map(str, result.files)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="images along the arc between two inputs: a strip PNG and an animated GIF",
        description="Interpolate between two inputs (slerp on directions, endpoints included), rescale to the "
        "decoder's embedding norm and decode every frame with one seed. Writes interpolation.png, "
        "interpolation.gif and interpolation.json.",
    )
    p.add_argument("--start", required=True, help="KIND=VALUE, e.g. text='a dog' or audio=bark.wav or image=a.png")
    p.add_argument("--end", required=True, help="KIND=VALUE, the other endpoint")
    p.add_argument("--frames", type=int, default=8, help="number of frames, endpoints included (default 8)")
    p.add_argument("--mode", choices=("slerp", "lerp"), default="slerp", help="interpolation (default slerp)")
    p.add_argument("--duration", type=int, default=200, help="GIF milliseconds per frame (default 200)")
    add_input_arguments(p)
    add_sampling_arguments(p)
    add_model_arguments(p)
    p.add_argument("--out", default="results/interpolate", help="output directory (default: results/interpolate)")
    p.set_defaults(func=run)
