"""`gen-align generate`: images from text, audio, an image or a blend of them, through an unCLIP decoder."""

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
    from gen_align.pipelines.generate import CLI_FLAGS, generate
    from gen_align.pipelines.session import check_condition, parse_weights

    limit = positive(args.max_audio_seconds, CLI_FLAGS["max_audio_seconds"])
    conditions = [
        check_condition(k, getattr(args, k), CLI_FLAGS, max_audio_seconds=limit)
        for k in ("text", "audio", "image")
        if getattr(args, k)
    ]
    result = generate(
        model_options(args),
        conditions,
        weights=parse_weights(args.weights, [c.kind for c in conditions], CLI_FLAGS),
        mode=args.mode,
        n=args.n,
        decode=sampling_options(args),
        out=args.out,
    )
    e = result.record["embedding"]
    print(
        f"{result.record['decoder']['kind']} ({result.record['space']}): {args.n} image(s), embedding norm "
        f"{', '.join(f'{k} {v:.3g}' for k, v in e['norms_before'].items())} -> {e['norm_after']:.4g}"
    )
    for warning in result.record.get("warnings", []):
        print(f"gen-align generate: warning: {warning}", file=sys.stderr)
    print(f"wrote {len(result.files)} files to {args.out} (grid.png, image_*.png + .json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="images from text, audio, an image or a blend of them, through an unCLIP decoder",
        description="Encode the inputs into the aligned space, blend their directions (slerp/lerp), rescale to the "
        "decoder's embedding norm and decode. Writes image_NNN.png + a JSON sidecar each and grid.png.",
    )
    g = p.add_argument_group("inputs (at least one)")
    g.add_argument("--text", help="a text prompt")
    g.add_argument("--audio", help="an audio file (wav, flac, mp3, mp4, ...)")
    g.add_argument("--image", help="an image file")
    b = p.add_argument_group("blend and batch")
    b.add_argument("--weights", help="blend weights, e.g. text=0.5,audio=0.5 (default: equal)")
    b.add_argument("--mode", choices=("slerp", "lerp"), default="slerp", help="blend mode (default slerp)")
    b.add_argument("--n", type=int, default=4, help="number of images (seeds seed..seed+n-1; default 4)")
    add_input_arguments(p)
    add_sampling_arguments(p)
    add_model_arguments(p)
    p.add_argument("--out", default="results/generate", help="output directory (default: results/generate)")
    p.set_defaults(func=run)
