"""Command-line options shared by ``generate`` and ``interpolate`` (light: no heavy imports at module level)."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Which space/decoder, where their weights are, where they run."""
    g = p.add_argument_group("models")
    from gen_align.presets import list_presets

    g.add_argument(
        "--preset",
        help=f"preset name: {', '.join(list_presets())} (default: the smallest preset whose weights are present)",
    )
    g.add_argument("--space", help="a trained space checkpoint directory instead of a preset")
    g.add_argument("--decoder", help="decoder folder or hub id (default: the preset's decoder)")
    g.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on GPU, fp32 on CPU")
    g.add_argument("--offload", action="store_true", help="model CPU offload (small GPUs)")
    g.add_argument("--attention-slicing", action="store_true", help="sliced attention (less GPU memory)")


MAX_AUDIO_SECONDS = 600.0
"""The longest audio input ``generate`` and ``interpolate`` decode by default (10 min; the app's is 30 s)."""


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """Bounds on the inputs."""
    p.add_argument(
        "--max-audio-seconds",
        type=float,
        default=MAX_AUDIO_SECONDS,
        help=f"longest audio input accepted, checked before decoding (default {MAX_AUDIO_SECONDS:g})",
    )


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Seed, steps, guidance, noise level, batch and size."""
    g = p.add_argument_group("sampling")
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    g.add_argument("--steps", type=int, help="denoising steps (default 25)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance (default: stable-unclip 10, kandinsky 4)")
    g.add_argument("--noise-level", type=int, help="stable-unclip embedding noise level 0..999 (default 0)")
    g.add_argument("--batch-size", type=int, help="images per decoder call (default: all at once)")
    g.add_argument("--height", type=int, help="output height, a multiple of 8 (default: the decoder's own)")
    g.add_argument("--width", type=int, help="output width, a multiple of 8 (default: the decoder's own)")


def model_options(args: argparse.Namespace) -> Any:
    from gen_align.pipelines.session import RuntimeOptions

    return RuntimeOptions(
        preset=args.preset,
        space=args.space,
        decoder=args.decoder,
        weights_dir=args.weights_dir,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        attention_slicing=args.attention_slicing,
    )


def sampling_options(args: argparse.Namespace) -> Any:
    from gen_align.pipelines.generate import DecodeOptions

    return DecodeOptions(
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        noise_level=args.noise_level,
        batch_size=args.batch_size,
        height=args.height,
        width=args.width,
    )


def space_or_default(args: argparse.Namespace, modalities: list[str]) -> str:
    """``--space``, else ``--preset``, else (as generate, fid and app) the smallest preset whose weights for
    ``modalities`` are here: the shipped mini preset when the package has it."""
    if args.space or args.preset:
        return args.space or args.preset
    from gen_align.pipelines.presence import default_preset

    return default_preset(modalities, args.weights_dir)
