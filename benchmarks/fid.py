"""Time of our ``frechet_distance`` vs SciPy ``sqrtm`` (pytorch-fid) and torchmetrics' FID compute, side by side.

    python benchmarks/fid.py [--dim 2048] [--samples 5000] [--repeats 5] [--cases full,rank-deficient]
                             [--threads N] [--json out.json]

Statistics come from random feature vectors with an Inception-like spectrum (eigenvalues ∝ 1/k, positive mean);
the "fake" set has a perturbed spectrum, rotation and mean. Case ``full``: ``--samples`` vectors per set (PD
covariances, our Cholesky path). Case ``rank-deficient``: 1500 vectors per set at 2048-d (our eigendecomposition
path). Every method gets the same float64 (μ, Σ). The reference value, written here independently of gen_align,
uses the features themselves: with Σi = Ai Aiᵀ (Ai = centred features / sqrt(n − 1)), Tr sqrt(Σ1 Σ2) is the sum
of the singular values of A1ᵀ A2, free of the sqrt(rounding noise) that any method working from Σ alone adds for
near-zero eigenvalues. The textbook symmetric formula (full eigh of Σ1, then eigvalsh of Σ1^½ Σ2 Σ1^½) is timed
too. Ours is timed ``--repeats`` times (median); the slow baselines once.
``--threads`` caps the BLAS threads of every method (torch and OpenBLAS): on a shared, oversubscribed machine
multi-threaded BLAS can be several times slower than one thread, and this keeps the comparison even.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torchmetrics.image.fid import _compute_fid

from gen_align.eval.fid import RankDeficientCovarianceWarning, feature_stats, frechet_distance


def _blas_threads() -> str:
    return ",".join(f"{p['internal_api']}:{p['num_threads']}" for p in threadpool_info()) or "?"


def make_stats(dim: int, samples: int, seed: int = 0) -> tuple[tuple, tuple]:
    """((μ1, Σ1, μ2, Σ2) as float64 NumPy, (A1, A2) with Σi = Ai Aiᵀ: centred features / sqrt(n − 1))."""
    g = torch.Generator().manual_seed(seed)
    spectrum = 0.5 / torch.arange(1, dim + 1, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    tilt, _ = torch.linalg.qr(rotation + 0.05 * torch.randn(dim, dim, dtype=torch.float64, generator=g))
    mean = 0.4 + 0.1 * torch.rand(dim, dtype=torch.float64, generator=g)
    real = torch.randn(samples, dim, dtype=torch.float64, generator=g) * spectrum.sqrt() @ rotation.T + mean
    fake_spectrum = spectrum * torch.exp(0.3 * torch.randn(dim, dtype=torch.float64, generator=g))
    fake = torch.randn(samples, dim, dtype=torch.float64, generator=g) * fake_spectrum.sqrt() @ tilt.T
    fake += mean + 0.02 * torch.randn(dim, dtype=torch.float64, generator=g)
    a, b = feature_stats(real), feature_stats(fake)
    factors = tuple(((x - x.mean(0)).T / (samples - 1) ** 0.5).numpy() for x in (real, fake))
    return (a.mu.numpy(), a.sigma.numpy(), b.mu.numpy(), b.sigma.numpy()), factors


def reference_fid(stats: tuple, factors: tuple) -> float:
    """Tr sqrt(Σ1 Σ2) = Σ singular values of A1ᵀ A2 (Σi = Ai Aiᵀ): computed from the features, with absolute error
    ~eps·‖·‖ per singular value instead of sqrt(eps) for eigenvalues of the product near 0."""
    mu1, s1, mu2, s2 = stats
    nuclear = scipy.linalg.svdvals(factors[0].T @ factors[1]).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear)


def textbook_fid(mu1, s1, mu2, s2) -> float:
    """The symmetric formula with a full eigendecomposition: Σ1^½, then eigenvalues of Σ1^½ Σ2 Σ1^½, clamped."""
    w, v = scipy.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = scipy.linalg.eigvalsh(root @ s2 @ root)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def sqrtm_fid(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's formula: scipy.linalg.sqrtm of the non-symmetric product, real part."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def torchmetrics_fid(mu1, s1, mu2, s2) -> float:
    return float(_compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))))


def timed(fn, stats, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*stats)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def run_case(name: str, stats: tuple, factors: tuple, repeats: int) -> list[dict]:
    reference = reference_fid(stats, factors)
    methods = [
        ("ours (frechet_distance, SciPy/OpenBLAS)", lambda *s: frechet_distance(*s), repeats),
        ("ours, torch backend (MKL)", lambda *s: frechet_distance(*s, backend="torch"), 1),
        ("textbook eigh(Σ1) + eigvalsh (SciPy)", textbook_fid, 1),
        ("scipy sqrtm (pytorch-fid)", sqrtm_fid, 1),
        ("torchmetrics _compute_fid (eigvals)", torchmetrics_fid, 1),
    ]
    rows = []
    for label, fn, count in methods:
        seconds, value = timed(fn, stats, count)
        rows.append(
            {
                "case": name,
                "method": label,
                "seconds": seconds,
                "fid": value,
                "abs_diff": abs(value - reference),
                "rel_diff": abs(value - reference) / abs(reference),
                "reference": reference,
            }
        )
    ours = rows[0]["seconds"]
    for row in rows:
        row["slower_than_ours"] = row["seconds"] / ours
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="full,rank-deficient")
    parser.add_argument("--threads", type=int, default=None, help="BLAS/LAPACK threads for every method")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # OpenBLAS under SciPy / NumPy
    warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
    print(f"# FID core, {args.dim}-d, float64, CPU {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}, SciPy BLAS threads {_blas_threads()}")  # fmt: skip
    rows = []
    for case in args.cases.split(","):
        samples = args.samples if case == "full" else min(1500, args.dim - 1)
        stats, factors = make_stats(args.dim, samples)
        print(f"\n## case {case}: {samples} feature vectors per set")
        case_rows = run_case(case, stats, factors, args.repeats)
        print(f"reference FID (nuclear norm of A1ᵀA2 from the features, float64) = {case_rows[0]['reference']:.12g}")
        print(f"{'method':<42} {'time s':>8} {'× ours':>8} {'FID':>18} {'|Δ| vs ref':>11} {'rel Δ':>9}")
        for r in case_rows:
            print(
                f"{r['method']:<42} {r['seconds']:8.3f} {r['slower_than_ours']:8.1f} {r['fid']:18.12g} "
                f"{r['abs_diff']:11.2e} {r['rel_diff']:9.1e}"
            )
        ours, _, _, sqrtm, tm = case_rows
        print(
            f"targets: ≥5× faster than sqrtm: {sqrtm['slower_than_ours']:.1f}× "
            f"({'ok' if sqrtm['slower_than_ours'] >= 5 else 'MISSED'}); not slower than torchmetrics: "
            f"{tm['slower_than_ours']:.1f}× ({'ok' if tm['slower_than_ours'] >= 1 else 'MISSED'}); "
            f"within 1e-6 of the reference: {ours['rel_diff']:.1e} ({'ok' if ours['rel_diff'] <= 1e-6 else 'MISSED'})"
        )
        rows += case_rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
