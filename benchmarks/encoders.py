"""Audio towers' clips/s on CPU, SDPA attention vs the naive (explicit softmax) attention, measured side by side.

    python benchmarks/encoders.py [--encoder beats|imagebind|both] [--checkpoint FILE] [--batch 8] [--seconds 10]
                                  [--repeats 3] [--threads N] [--json OUT]

Without --checkpoint each model is randomly initialised at its released size, which times the same as the released
weights: BEATs iter3+ AS2M (768-d, 12 layers) and ImageBind's audio tower (768-d, 12 blocks, 12 heads → 1024-d; its
input is 3 clips of 2 s per input whatever the length). Each timing is one ``embed`` call on a batch of inputs
(preprocessing included); the two paths are interleaved so that drift in machine load affects both alike, and the
median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

MODES = ("sdpa", "naive")


def beats(checkpoint: str | None, batch: int, seconds: float) -> tuple[str, torch.nn.Module, Callable]:
    from gen_align.encoders.beats import BEATs, BEATsConfig, load_beats
    from gen_align.encoders.beats_clips import BEATsEncoder

    model = load_beats(checkpoint) if checkpoint else BEATs(BEATsConfig()).eval()
    encoder = BEATsEncoder(model, window_seconds=seconds, batch_size=batch)
    name = f"BEATs {model.cfg.encoder_embed_dim}-d x {model.cfg.encoder_layers} layers"
    return name, model, encoder.embed


def imagebind(checkpoint: str | None, batch: int, seconds: float) -> tuple[str, torch.nn.Module, Callable]:
    from gen_align.encoders.imagebind import ImageBindAudio, load_imagebind_audio
    from gen_align.encoders.imagebind_clips import ImageBindAudioEncoder

    model = load_imagebind_audio(checkpoint) if checkpoint else ImageBindAudio().eval()
    encoder = ImageBindAudioEncoder(model, batch_size=3 * batch)  # every clip of the batch in one pass
    cfg = model.cfg
    name = f"ImageBind audio {cfg.embed_dim}-d x {cfg.num_blocks} blocks -> {cfg.out_embed_dim}-d (3 clips of 2 s)"
    return name, model, lambda clips: encoder.embed(list(clips))


ENCODERS = {"beats": beats, "imagebind": imagebind}


def measure(build: Callable, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    name, model, embed = build(args.checkpoint, args.batch, args.seconds)
    clips = 0.1 * torch.randn(args.batch, round(args.seconds * 16000))

    def run(mode: str) -> tuple[float, torch.Tensor]:
        model.attention = mode
        start = time.perf_counter()
        with torch.inference_mode():
            out = embed(clips)
        return time.perf_counter() - start, out

    outputs = {mode: run(mode)[1] for mode in MODES}  # warm-up
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            times[mode].append(run(mode)[0])
    medians = {mode: statistics.median(ts) for mode, ts in times.items()}
    clips_per_s = {mode: args.batch / t for mode, t in medians.items()}
    diff = (outputs["sdpa"] - outputs["naive"]).abs().max().item()
    ratio = clips_per_s["sdpa"] / clips_per_s["naive"]
    print(f"{name} ({args.checkpoint or 'random init'}), batch {args.batch} x {args.seconds:g} s clips")
    print(f"  {'attention':10s} {'median s/batch':>15s} {'clips/s':>10s}")
    for mode in MODES:
        print(f"  {mode:10s} {medians[mode]:15.2f} {clips_per_s[mode]:10.2f}")
    print(f"  speed-up sdpa / naive: {ratio:.2f}x; max abs difference of the embeddings, sdpa vs naive: {diff:.2e}")
    return {"median_seconds": medians, "clips_per_s": clips_per_s, "ratio": ratio, "times": times, "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=[*ENCODERS, "both"], default="both")
    parser.add_argument("--checkpoint", help="an official checkpoint of the one --encoder (default: random init)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.checkpoint and args.encoder == "both":
        parser.error("--checkpoint needs one --encoder (beats or imagebind)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU threads={torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, repeats={args.repeats}"
    )
    chosen = list(ENCODERS) if args.encoder == "both" else [args.encoder]
    results = {name: measure(ENCODERS[name], args) for name in chosen}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
