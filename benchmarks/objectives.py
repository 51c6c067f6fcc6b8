"""Forward+backward time of each objective vs an efficient CLIP-style InfoNCE, measured side by side.

    python benchmarks/objectives.py [--batch 512] [--dim 1024] [--repeats 30] [--json out.json]

The reference is written here, independent of gen_align: symmetric cross-entropy with one similarity
matrix per unordered pair of modalities. Timings are interleaved (round-robin over the objectives) so
that drift in machine load affects all of them alike; the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from gen_align.objectives import get_objective, gram_loss, infonce_loss, unialign_loss

MODALITIES = ("image", "text", "audio")


def reference_clip_infonce(z: dict[str, torch.Tensor], tau: float = 0.07) -> torch.Tensor:
    units = {m: F.normalize(v, dim=-1) for m, v in z.items()}
    targets = torch.arange(next(iter(units.values())).shape[0])
    losses = []
    for a, b in itertools.combinations(units, 2):
        logits = units[a] @ units[b].T / tau
        losses.append(0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)))
    return torch.stack(losses).mean()


def candidates() -> dict:
    geo_ot = get_objective("geo-ot")
    return {
        "reference CLIP InfoNCE": reference_clip_infonce,
        "infonce_loss": infonce_loss,
        "unialign_loss (euclidean, all terms)": unialign_loss,
        "unialign_loss (geodesic, all terms)": lambda z: unialign_loss(z, geometry="geodesic"),
        "gram_loss (text vs (image, audio))": lambda z: gram_loss(z["text"], [z["image"], z["audio"]]),
        "geo-ot (InfoNCE + Sinkhorn + local cov)": lambda z: geo_ot(z)[0],
    }


def time_once(fn, z: dict[str, torch.Tensor]) -> float:
    for v in z.values():
        v.grad = None
    start = time.perf_counter()
    fn(z).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", nargs="*", help="substrings of candidate names to run (the reference always runs)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    z = {m: torch.randn(args.batch, args.dim, requires_grad=True) for m in MODALITIES}
    fns = candidates()
    if args.only:
        fns = {k: v for k, v in fns.items() if k.startswith("reference") or any(s in k for s in args.only)}
    for fn in fns.values():  # warm-up
        time_once(fn, z)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, z))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ref = medians["reference CLIP InfoNCE"]
    print(
        f"B={args.batch} M={len(MODALITIES)} d={args.dim}, CPU threads={torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, repeats={args.repeats}"
    )
    print(f"{'objective':45s} {'median fwd+bwd (ms)':>20s} {'ratio to reference':>20s}")
    for name, t in medians.items():
        print(f"{name:45s} {t * 1e3:20.1f} {t / ref:20.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"config": vars(args), "median_seconds": medians, "ratio": {k: v / ref for k, v in medians.items()}},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
