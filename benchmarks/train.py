"""Training throughput (samples/s) over cached features, per objective, measured in one run.

    python benchmarks/train.py [--items 200000] [--dim 1024] [--batch 512] [--steps 40] [--json out.json]

Builds a feature cache of ``--items`` random (image, text, audio) triplets of ``--dim`` features (or reuses
``--cache DIR``), then trains the default heads (MLP) for ``--steps`` steps with each objective through the
real trainer, and prints samples/s and the ratio to multi-modal InfoNCE.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from gen_align.data.cache import FeatureCache
from gen_align.train.config import load_config
from gen_align.train.trainer import Trainer

OBJECTIVES = ("infonce", "unialign", "unialign-geodesic", "gram", "geo-ot")


def build_cache(directory: Path, items: int, dim: int) -> Path:
    ids = [f"clip{i:07d}" for i in range(items)]
    identity = {"space": "benchmark", "towers": {}}
    g = torch.Generator().manual_seed(0)
    with FeatureCache.open(directory, identity, shard_size=8192) as cache:
        for modality in ("image", "text", "audio"):
            for start in range(0, items, 8192):
                chunk = ids[start : start + 8192]
                cache.write(modality, chunk, torch.randn(len(chunk), dim, generator=g))
    return directory


def measure(cache: Path, out: Path, objective: str, batch: int, steps: int) -> float:
    settings = [f"features={cache}", f"out={out / objective}", f"objective={objective}", f"batch_size={batch}"]
    settings += [f"max_steps={steps + 5}", "val_size=0", "checkpoint_every=1000000", "log_every=1000000"]
    trainer = Trainer(load_config(None, settings))
    trainer.total_steps = 5  # warm-up steps, not timed
    trainer.fit()
    trainer.total_steps = steps + 5
    start = time.perf_counter()
    trainer.fit()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cache", help="reuse this feature cache instead of building one")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        cache = Path(args.cache) if args.cache else build_cache(tmp / "cache", args.items, args.dim)
        print(f"cache of {args.items} triplets x {args.dim}-d ready in {time.perf_counter() - started:.0f} s")
        rates = {name: measure(cache, tmp / "runs", name, args.batch, args.steps) for name in args.objectives}
    print(f"batch={args.batch} steps={args.steps} CPU threads={torch.get_num_threads()} {platform.machine()}")
    reference = rates.get("infonce")
    print(f"{'objective':22s} {'samples/s':>12s} {'ratio to infonce':>18s}")
    for name, rate in rates.items():
        ratio = f"{rate / reference:18.3f}" if reference else f"{'-':>18s}"
        print(f"{name:22s} {rate:12.1f} {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "samples_per_second": rates}, indent=2))


if __name__ == "__main__":
    main()
