"""BEATs clips/s on CPU, SDPA attention vs the naive (reference-style) attention, measured side by side.

    python benchmarks/encoders.py [--checkpoint BEATs_iter3_plus_AS2M.pt] [--batch 8] [--seconds 10] [--repeats 3]

Without --checkpoint the model is a randomly initialised full-size BEATs (BEATs_iter3+ AS2M shape: 768-d,
12 layers), which times the same as the released weights. Each timing is one ``BEATsEncoder.embed`` call on a
batch of clips (fbank included); the two paths are interleaved so that drift in machine load affects both
alike, and the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from gen_align.encoders.beats import BEATs, BEATsConfig, compute_fbank, load_beats
from gen_align.encoders.beats_clips import BEATsEncoder

MODES = ("sdpa", "naive")


def time_embed(encoder: BEATsEncoder, mode: str, clips: torch.Tensor) -> tuple[float, torch.Tensor]:
    encoder.model.attention = mode
    start = time.perf_counter()
    out = encoder.embed(clips)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="official BEATs .pt (default: random full-size AS2M-shaped model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_beats(args.checkpoint) if args.checkpoint else BEATs(BEATsConfig()).eval()
    encoder = BEATsEncoder(model, window_seconds=args.seconds, batch_size=args.batch)
    clips = 0.1 * torch.randn(args.batch, round(args.seconds * 16000))

    outputs = {mode: time_embed(encoder, mode, clips)[1] for mode in MODES}  # warm-up
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            times[mode].append(time_embed(encoder, mode, clips)[0])
    fbank_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for clip in clips:
            compute_fbank(clip)
        fbank_times.append(time.perf_counter() - start)

    medians = {mode: statistics.median(ts) for mode, ts in times.items()}
    clips_per_s = {mode: args.batch / t for mode, t in medians.items()}
    diff = (outputs["sdpa"] - outputs["naive"]).abs().max().item()
    cfg = model.cfg
    print(
        f"BEATs {cfg.encoder_embed_dim}-d x {cfg.encoder_layers} layers ({args.checkpoint or 'random init'}), "
        f"batch {args.batch} x {args.seconds:g} s clips, CPU threads={torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, repeats={args.repeats}"
    )
    print(f"{'attention':10s} {'median s/batch':>15s} {'clips/s':>10s}")
    for mode in MODES:
        print(f"{mode:10s} {medians[mode]:15.2f} {clips_per_s[mode]:10.2f}")
    ratio = clips_per_s["sdpa"] / clips_per_s["naive"]
    print(f"speed-up sdpa / naive: {ratio:.2f}x   (fbank alone: {statistics.median(fbank_times):.2f} s/batch)")
    print(f"max abs difference of the clip embeddings, sdpa vs naive: {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            result = {"config": vars(args), "median_seconds": medians, "clips_per_s": clips_per_s, "ratio": ratio}
            json.dump({**result, "times": times, "max_abs_diff": diff}, f, indent=2)


if __name__ == "__main__":
    main()
