"""`gen-align calibrate`: the mean norm of a decoder's own image embeddings over a folder of images."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from gen_align.pipelines.calibration import measure, save_for_preset, save_into_space
    from gen_align.pipelines.decoders import resolve_device
    from gen_align.space import AlignedSpace

    source = args.space or args.preset
    space = AlignedSpace.from_pretrained(
        source, modalities=["image"], weights_dir=args.weights_dir, device=resolve_device(args.device)
    )
    record = measure(space, args.images, batch_size=args.batch_size)
    if args.space:
        path = save_into_space(record, args.space)
    else:
        path = save_for_preset(record, args.preset, args.weights_dir)
    print(
        f"mean embedding norm {record['mean_norm']:.4f} (std {record['std_norm']:.4f}) over {record['count']} "
        f"images, {record['embedding_dim']}-d; wrote {path}"
    )
    own = space.config.get("output_norm")
    if not args.space and own is not None:
        print(
            f"note: the {args.preset} space has its own output_norm ({own:.4f}), which generate, interpolate, fid and "
            f"app use for it; this file serves spaces of preset {args.preset} without one. To rescale this space to "
            "the new norm, calibrate a copy of it: `gen-align calibrate --space COPY --images DIR`."
        )
    elif not args.space:
        print(f"generate, interpolate, fid and app with --preset {args.preset} now rescale to this norm")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure the decoder's image-embedding norm over a folder of images (generation rescales to it)",
        description="Encode every image under --images with the space's image tower (the decoder's own image "
        "encoder) and store the mean norm, std, count, the folder and a hash of its file list: in "
        "$GEN_ALIGN_HOME/calibration/<preset>.json for --preset, in the checkpoint's config.json for --space.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="preset name")
    which.add_argument("--space", help="a trained space checkpoint directory (its config.json is updated)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.set_defaults(func=run)
