"""Scale of the retrieval code on the CPU, measured side by side in one run:

1. InvGC w/ LocalAdj (k = 1 % of the bank, d = 512): the blocked torch path, the FAISS kNN path and ``auto``
   (the default, FAISS in float32) at N = N_train = 50 000, against the GEMM floor (the two N × N_train × d
   similarity products alone, in the same 4096-row blocks into one preallocated buffer) and against the dense
   layout of the published implementation (the whole N × N_train weight matrix) at the largest N it comfortably
   fits, 10 000 (where all of them run, and must agree).
2. Retrieval metrics on a 20 000 × 20 000 cosine matrix: the chunked rank counting (on the matrix, and on a
   callable that never materialises it) against a full-sort reference written here (argsort of every row).

    python benchmarks/retrieval.py [--small 10000] [--large 50000] [--metrics-n 20000] [--dim 512]
                                   [--repeats 1] [--skip-faiss-large] [--json out.json]

Each case runs in its own subprocess; "extra peak" is its peak resident size during the timed work minus
its resident size once the inputs exist (the peak is reset there through /proc/self/clear_refs); time is the
median of ``--repeats`` runs. Absolute times depend on the machine's load (printed first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

K_PERCENT = 1.0
RATES = (0.5, 0.5)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def reset_peak() -> float:
    """Reset the peak resident size to the current one (Linux: write 5 to /proc/self/clear_refs) and return
    the current resident size in MB; where that is refused, peaks include earlier transients."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def invgc_inputs(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(n, dim, generator=g) for _ in range(3))


def gemm_floor(gallery: torch.Tensor, banks: tuple[torch.Tensor, ...], block: int = 4096) -> torch.Tensor:
    """The two similarity products LocalAdj needs and nothing else: unit rows, 4096-row blocks, one buffer."""
    x = gallery / gallery.norm(dim=1, keepdim=True)
    buffer = torch.empty(min(block, x.shape[0]), banks[0].shape[0])
    for bank in banks:
        b = bank / bank.norm(dim=1, keepdim=True)
        for s in range(0, x.shape[0], block):
            torch.matmul(x[s : s + block], b.T, out=buffer[: min(block, x.shape[0] - s)])
    return x


def run_invgc_case(backend: str, n: int, dim: int, repeats: int, save: str | None) -> dict:
    from gen_align.retrieval.invgc import invgc

    gallery, train_gallery, train_query = invgc_inputs(n, dim)
    base = reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if backend == "floor":
            out = gemm_floor(gallery, (train_gallery, train_query))
        else:
            out = invgc(gallery, train_gallery, train_query, *RATES, "local", K_PERCENT, backend=backend)
        times.append(time.perf_counter() - start)
    if save:
        np.save(save, out.numpy())
    return {"time_s": statistics.median(times), "extra_peak_mb": peak_mb() - base}


def metrics_inputs(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(n, dim, generator=g)
    q = latent + 1.5 * torch.randn(n, dim, generator=g)
    x = latent + 1.5 * torch.randn(n, dim, generator=g)
    return q / q.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True)


def reference_full_sort(sim: torch.Tensor) -> np.ndarray:
    """Rank of item i for query i from a full descending argsort of every row (the whole matrix at once)."""
    order = torch.argsort(sim, dim=1, descending=True)
    hit = order == torch.arange(sim.shape[0]).unsqueeze(1)
    return (hit.nonzero()[:, 1] + 1).numpy()


def summary(ranks: np.ndarray) -> dict:
    return {
        "R@1": 100 * np.mean(ranks <= 1),
        "R@5": 100 * np.mean(ranks <= 5),
        "R@10": 100 * np.mean(ranks <= 10),
        "MdR": float(np.median(ranks)),
        "MnR": float(np.mean(ranks)),
    }


def run_metrics_case(case: str, n: int, dim: int, repeats: int, save: str | None) -> dict:
    from gen_align.retrieval.metrics import query_ranks

    q, x = metrics_inputs(n, dim)

    def rows_fn(rows: slice) -> torch.Tensor:
        return q[rows] @ x.T

    sim = None
    if case != "callable":  # built from the same row blocks, so every path sees bit-identical scores
        sim = torch.empty(n, n)
        for s in range(0, n, 1024):
            sim[s : s + 1024] = rows_fn(slice(s, s + 1024))
    base = reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if case == "reference":
            ranks = reference_full_sort(sim)
        elif case == "matrix":
            ranks = query_ranks(sim, chunk_size=1024)[0]
        else:
            ranks = query_ranks(rows_fn, num_queries=n, chunk_size=1024)[0]
        times.append(time.perf_counter() - start)
    if save:
        np.save(save, ranks)
    return {"time_s": statistics.median(times), "extra_peak_mb": peak_mb() - base, "metrics": summary(ranks)}


def child(args: argparse.Namespace) -> None:
    kind, name = args.case.split(":")
    if kind == "invgc":
        result = run_invgc_case(name, args.n, args.dim, args.repeats, args.save)
    else:
        result = run_metrics_case(name, args.n, args.dim, args.repeats, args.save)
    print("RESULT " + json.dumps(result))


def spawn(case: str, n: int, dim: int, repeats: int, save: str | None) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--n", str(n), "--dim", str(dim), "--repeats", str(repeats)]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} (n={n}) failed:\n{proc.stderr}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def max_abs_diff(a: str, b: str) -> float:
    return float(np.abs(np.load(a) - np.load(b)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="N = N_train of the dense comparison")
    parser.add_argument("--large", type=int, default=50_000, help="N = N_train of the scaled run")
    parser.add_argument("--metrics-n", type=int, default=20_000, help="queries = gallery of the metrics run")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-faiss-large", action="store_true", help="run only the blocked path at --large")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args)
        return

    print(
        f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; d = {args.dim}, k = {K_PERCENT:g} % of the bank, "
        f"r_g = r_q = {RATES[0]}, repeats {args.repeats}"
    )
    results: dict = {"invgc": {}, "metrics": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("dense", args.small), ("blocked", args.small), ("faiss", args.small), ("auto", args.small)]
        cases += [("floor", args.large), ("blocked", args.large), ("auto", args.large)]
        if not args.skip_faiss_large:
            cases.append(("faiss", args.large))
        saved = {}
        for backend, n in cases:
            saved[(backend, n)] = os.path.join(tmp, f"{backend}-{n}.npy")
            results["invgc"][f"{backend}@{n}"] = spawn(
                f"invgc:{backend}", n, args.dim, args.repeats, saved[(backend, n)]
            )
            r = results["invgc"][f"{backend}@{n}"]
            print(f"  invgc {backend:>7} N={n:>6}: {r['time_s']:8.2f} s, extra peak {r['extra_peak_mb']:8.0f} MB")
        agree = {
            "blocked vs dense @small": max_abs_diff(saved[("blocked", args.small)], saved[("dense", args.small)]),
            "faiss vs dense @small": max_abs_diff(saved[("faiss", args.small)], saved[("dense", args.small)]),
            "auto vs dense @small": max_abs_diff(saved[("auto", args.small)], saved[("dense", args.small)]),
        }
        if ("faiss", args.large) in saved:
            agree["faiss vs blocked @large"] = max_abs_diff(
                saved[("faiss", args.large)], saved[("blocked", args.large)]
            )
        results["invgc_max_abs_diff"] = agree

        for case in ("reference", "matrix", "callable"):
            saved[case] = os.path.join(tmp, f"ranks-{case}.npy")
            results["metrics"][case] = spawn(f"metrics:{case}", args.metrics_n, args.dim, args.repeats, saved[case])
            r = results["metrics"][case]
            print(f"  metrics {case:>9}: {r['time_s']:8.2f} s, extra peak {r['extra_peak_mb']:8.0f} MB")
        ref_ranks = np.load(saved["reference"])
        results["metrics_equal"] = {
            case: bool(np.array_equal(np.load(saved[case]), ref_ranks)) for case in ("matrix", "callable")
        }

    inv = results["invgc"]
    dense, small_blocked = inv[f"dense@{args.small}"], inv[f"blocked@{args.small}"]
    floor = inv[f"floor@{args.large}"]["time_s"]
    print(f"\nInvGC w/ LocalAdj at N = N_train = {args.large} against the GEMM floor (the two products alone)")
    for name in ("blocked", "auto", "faiss"):
        if f"{name}@{args.large}" in inv:
            r = inv[f"{name}@{args.large}"]["time_s"]
            print(f"  {name:<8} {r:8.2f} s  x floor {r / floor:5.2f}   (floor {floor:.2f} s)")
    print(f"\nInvGC w/ LocalAdj (N = N_train, d = {args.dim}); ratios vs dense @ N = {args.small}")
    print(f"{'path':<22}{'time s':>10}{'x dense':>10}{'peak MB':>10}{'x dense':>10}")
    for name, r in inv.items():
        print(
            f"{name:<22}{r['time_s']:>10.2f}{r['time_s'] / dense['time_s']:>10.2f}"
            f"{r['extra_peak_mb']:>10.0f}{r['extra_peak_mb'] / dense['extra_peak_mb']:>10.2f}"
        )
    large = inv[f"blocked@{args.large}"]
    scale = (args.large / args.small) ** 2
    print(
        f"blocked @ {args.large} vs blocked @ {args.small}: time x{large['time_s'] / small_blocked['time_s']:.1f} "
        f"(work x{scale:.0f}); dense @ {args.large} would need ≈ {2 * 4 * args.large**2 / 2**30:.1f} GiB "
        "for W and the scattered adjacency"
    )
    print("max |difference| of the outputs: " + ", ".join(f"{k} {v:.2e}" for k, v in agree.items()))

    met = results["metrics"]
    ref = met["reference"]
    print(
        f"\nMetrics on {args.metrics_n} x {args.metrics_n} (ranks equal to the full sort: {results['metrics_equal']})"
    )
    print(f"{'path':<22}{'time s':>10}{'x sort':>10}{'peak MB':>10}{'x sort':>10}")
    for name, r in met.items():
        print(
            f"{name:<22}{r['time_s']:>10.2f}{r['time_s'] / ref['time_s']:>10.2f}"
            f"{r['extra_peak_mb']:>10.0f}{r['extra_peak_mb'] / ref['extra_peak_mb']:>10.2f}"
        )
    print("(callable includes computing the scores block by block; the others start from the matrix)")
    print("metrics: " + json.dumps(met["matrix"]["metrics"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
