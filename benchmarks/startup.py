"""Seconds from command to image: `gen-align generate` on the shipped mini preset (one image, one step) next to the
imports it cannot avoid, each in a fresh interpreter.

    python benchmarks/startup.py [--repeats 5] [--json FILE]

Each row is the median of ``--repeats`` fresh processes (the first run of a row also fills the OS file cache: the
"cold" column is that first run, "warm" the median of the others). Rows: the whole command; ``import torch`` (the
floor of anything torch-based); the third-party modules the mini path imports (diffusers' UNet, transformers' CLIP
text model) and gen-align's command module. The ratio column is each row over ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = {
    "gen-align generate (mini, 1 image, 1 step)": None,
    "import torch": "import torch",
    "diffusers UNet2DConditionModel": "from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel",
    "transformers CLIPTextModelWithProjection": "from transformers import CLIPTextModelWithProjection",
    "gen_align.pipelines.generate": "import gen_align.pipelines.generate",
}


def run_once(code: str | None, out: str) -> float:
    if code is None:
        argv = [sys.executable, "-m", "gen_align", "generate", "--text", "a small red star on stripes", "--n", "1"]
        argv += ["--steps", "1", "--out", out]
    else:
        argv = [sys.executable, "-c", code]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name, code in ROWS.items():
            times = [run_once(code, out) for _ in range(args.repeats)]
            results[name] = {"cold_s": times[0], "warm_s": statistics.median(times[1:] or times)}
    floor = results["import torch"]["warm_s"]
    print(f"{'':46} {'cold s':>8} {'warm s':>8} {'/ torch':>8}")
    for name, r in results.items():
        print(f"{name:46} {r['cold_s']:8.2f} {r['warm_s']:8.2f} {r['warm_s'] / floor:8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
