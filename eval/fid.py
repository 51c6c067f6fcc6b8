"""Fréchet distance (FID) and kernel distance (KID) between feature sets, computed in float64.

FID between N(μ1, Σ1) and N(μ2, Σ2) is ‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr sqrt(Σ1 Σ2).

**How Tr sqrt(Σ1 Σ2) is computed** (in place of pytorch-fid's Schur-based ``sqrtm`` of the non-symmetric product
and torchmetrics' general eigensolver, both slow and inexact when a covariance is near-singular). Factor
Σ1 = A1 A1ᵀ; Σ1 Σ2 has the same eigenvalues as the symmetric PSD matrix A1ᵀ Σ2 A1 (with A1 = Σ1^½ it is
Σ1^½ Σ2 Σ1^½), so

1. **regular case** — A1 is the (pivoted) Cholesky factor of a full-rank Σ1, one symmetric eigensolve (values
   only) gives λ_i(A1ᵀ Σ2 A1), and Tr sqrt(Σ1 Σ2) = Σ sqrt(λ_i) (~1 s at 2048-d on two cores);
2. **singular case** — if Σ1 is rank-deficient, or some λ_i lies at the rounding-noise floor
   (size · eps · max λ), sqrt(λ_i) would turn a 1e-16 rounding error into a 1e-8 one. Both covariances are then
   factored, Σi = Ai Aiᵀ with rank-revealing factors (numerically zero directions dropped), and
   Tr sqrt(Σ1 Σ2) = Σ σ_j(A1ᵀ A2), the singular values of A1ᵀ A2 (σ_j² = λ_j): no square root of noise.

Factors: on the CPU (SciPy / OpenBLAS, much faster than torch's MKL on AMD CPUs) LAPACK's pivoted Cholesky
``dpstrf``, which stops at the numerical rank (pivots ≤ n · eps · max diag) and is checked against Σ when it stops
early; on CUDA tensors (``torch.linalg``, on their device) a plain Cholesky, and for the singular case V diag(sqrt(w))
from ``eigh`` with the eigenvalues at the noise floor (negatives included) dropped. All steps are backward stable.
A clearly indefinite input (eigenvalue or factorisation residual beyond 1e-4 of its scale) raises
:class:`InputDataError`.
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import numpy as np
import scipy.linalg
import torch

from gen_align.checks import integer, non_negative, positive
from gen_align.errors import ConfigError, EmbeddingError, InputDataError

ArrayLike = torch.Tensor | np.ndarray
Backend = Literal["auto", "numpy", "torch"]

# A covariance whose eigenvalues (or those of the product) go below -NOT_PSD_TOLERANCE × its scale is refused:
# rounding from float32 statistics stays orders of magnitude smaller.
NOT_PSD_TOLERANCE = 1e-4


class RankDeficientCovarianceWarning(UserWarning):
    """A covariance was estimated from n ≤ F samples (rank ≤ n − 1 < F): the FID is biased and unreliable."""


class FeatureStats(NamedTuple):
    """Gaussian statistics of a feature set: mean ``mu`` (F,), covariance ``sigma`` (F, F), both float64, and
    the sample count ``n`` behind them."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int

    def fid(self, other: FeatureStats) -> float:
        """FID between these statistics and ``other`` (warns when either is rank-deficient)."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, n1=self.n, n2=other.n)


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    *,
    n1: int | None = None,
    n2: int | None = None,
    backend: Backend = "auto",
) -> float:
    """FID between N(mu1, sigma1) and N(mu2, sigma2) in float64 (torch tensors or NumPy arrays).

    ``n1`` / ``n2``: sample counts behind the covariances; n ≤ F warns with
    :class:`RankDeficientCovarianceWarning`. ``backend="auto"`` uses torch for CUDA tensors and SciPy otherwise.
    Rounding can make the exact-zero distance come out as −1e-13; the result is clamped at 0.
    """
    device = _torch_device(backend, mu1, sigma1, mu2, sigma2)
    if device is None:
        mu1, mu2 = _as_numpy64(mu1, "mu1"), _as_numpy64(mu2, "mu2")
        sigma1, sigma2 = _as_numpy64(sigma1, "sigma1"), _as_numpy64(sigma2, "sigma2")
    else:
        mu1, mu2 = _as_torch64(mu1, "mu1", device), _as_torch64(mu2, "mu2", device)
        sigma1, sigma2 = _as_torch64(sigma1, "sigma1", device), _as_torch64(sigma2, "sigma2", device)
    dim = _check_stats(mu1, sigma1, "1")
    if _check_stats(mu2, sigma2, "2") != dim:
        raise EmbeddingError(
            f"the two feature sets have different dimensions ({dim} vs {mu2.shape[0]}); "
            "compute both statistics with the same feature extractor."
        )
    for n, which in ((n1, "1"), (n2, "2")):
        if n is not None:
            _warn_rank_deficient(integer(n, f"n{which}", low=2), dim, which)
    if device is not None:
        sigma1, sigma2 = _symmetric_torch(sigma1, "sigma1"), _symmetric_torch(sigma2, "sigma2")
        mean_term = float((mu1 - mu2).square().sum())
        traces = float(sigma1.diagonal().sum() + sigma2.diagonal().sum())
        cross = _trace_sqrt_product_torch(sigma1, sigma2)
    else:
        sigma1, sigma2 = _symmetric_numpy(sigma1, "sigma1"), _symmetric_numpy(sigma2, "sigma2")
        diff = mu1 - mu2
        mean_term = float(diff @ diff)
        traces = float(np.trace(sigma1) + np.trace(sigma2))
        cross = _trace_sqrt_product_numpy(sigma1, sigma2)
    return max(mean_term + traces - 2.0 * cross, 0.0)


def feature_stats(features: ArrayLike, name: str = "features") -> FeatureStats:
    """Mean and unbiased covariance (float64, centred before the product) of a (N, F) feature matrix."""
    x = _as_features(features, name)
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return FeatureStats(mu, (sigma + sigma.T) * 0.5, x.shape[0])


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """FID between two feature sets: ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½) of their Gaussian statistics.

    Args:
        real: the reference features (N_r, F), e.g. Inception pool features of the reference frames.
        fake: the generated images' features (N_f, F), from the same extractor.

    Returns:
        the Fréchet distance (float64 statistics, clamped at 0); warns with
        :class:`RankDeficientCovarianceWarning` when N ≤ F.

    Raises:
        EmbeddingError: feature sets of different widths, fewer than 2 rows, or NaN/inf values.

    Example:
        A set against itself is at distance 0; shifting every feature by 3 moves the mean only, by 3² per feature:

        >>> import torch
        >>> from gen_align.eval.fid import fid_from_features
        >>> real = torch.randn(500, 4, dtype=torch.float64)
        >>> round(fid_from_features(real, real), 9)  # the matrix square root leaves ~1e-15 on some BLAS builds
        0.0
        >>> round(fid_from_features(real, real + 3.0), 6)
        36.0
    """
    real_stats, fake_stats = feature_stats(real, "real features"), feature_stats(fake, "fake features")
    _check_same_dim(real_stats.mu.shape[0], fake_stats.mu.shape[0])
    return real_stats.fid(fake_stats)


def kernel_inception_distance(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD² with the polynomial kernel (γ xᵀy + coef)^degree, γ = 1/F by default, over ``subsets``
    random subsets of ``subset_size`` features from each set. Returns (mean, std) with the population std, as
    torchmetrics. Subsets are drawn with ``torch.randperm`` from a generator seeded with ``seed``, real then fake per
    subset — the order torchmetrics uses with the global generator, so ``torch.manual_seed(seed)`` reproduces it.
    """
    real = _as_features(real_features, "real features")
    fake = _as_features(fake_features, "fake features").to(real.device)
    _check_same_dim(real.shape[1], fake.shape[1])
    subsets = integer(subsets, "subsets")
    subset_size = integer(subset_size, "subset_size", low=2)
    degree = integer(degree, "degree")
    gamma = 1.0 / real.shape[1] if gamma is None else positive(gamma, "gamma")
    coef = non_negative(coef, "coef")
    smallest = min(real.shape[0], fake.shape[0])
    if subset_size > smallest:
        raise ConfigError(
            f"subset_size={subset_size} is larger than the smaller feature set ({smallest} samples); "
            f"pass subset_size <= {smallest} or provide more samples (KID is usually run with 1000)."
        )
    generator = torch.Generator().manual_seed(integer(seed, "seed", low=0))
    scores = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = real[torch.randperm(real.shape[0], generator=generator)[:subset_size].to(real.device)]
        y = fake[torch.randperm(fake.shape[0], generator=generator)[:subset_size].to(fake.device)]
        scores[i] = _unbiased_poly_mmd2(x, y, degree, gamma, coef)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _unbiased_poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef: float) -> torch.Tensor:
    m = x.shape[0]
    k_xx = (x @ x.T).mul_(gamma).add_(coef).pow_(degree)
    k_yy = (y @ y.T).mul_(gamma).add_(coef).pow_(degree)
    k_xy = (x @ y.T).mul_(gamma).add_(coef).pow_(degree)
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


# ---------------------------------------------------------------------------------------------- Tr sqrt(Σ1 Σ2)


def _trace_sqrt_product_numpy(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    lower1, pivots1, rank1 = _pivoted_cholesky(sigma1, "sigma1")
    if rank1 == sigma1.shape[0]:
        # Lᵀ (Pᵀ Σ2 P) L in one LAPACK call that uses the symmetry (dsygst, ~n³ flops instead of 4n³ for two GEMMs)
        permuted = sigma2[np.ix_(pivots1, pivots1)]
        product, _ = scipy.linalg.lapack.dsygst(permuted, lower1, itype=2, lower=1, overwrite_a=1)
        eigenvalues = scipy.linalg.eigvalsh(product, lower=True, overwrite_a=True, check_finite=False)
        if _resolved(eigenvalues, float(np.trace(sigma1)) * float(np.trace(sigma2))):
            return float(np.sqrt(eigenvalues).sum())
    lower2, pivots2, rank2 = _pivoted_cholesky(sigma2, "sigma2")
    if not (rank1 and rank2):
        return 0.0
    f1, f2 = _factor(lower1, pivots1, rank1), _factor(lower2, pivots2, rank2)
    return float(scipy.linalg.svdvals(f1.T @ f2, overwrite_a=True, check_finite=False).sum())


def _pivoted_cholesky(sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """LAPACK dpstrf: (L, p, r) with Σ[p][:, p] = L Lᵀ, L in the lower triangle with r meaningful columns; it stops
    at the numerical rank r (pivots ≤ n · eps · max diag). A stop before n is checked: an indefinite Σ stops early
    too."""
    n = sigma.shape[0]
    diag = np.diagonal(sigma)
    top = float(diag.max())
    if float(diag.min()) < -NOT_PSD_TOLERANCE * max(top, 0.0) or top < 0:
        _not_psd(name, f"a diagonal entry {float(diag.min()):.3g} < 0")
    if top == 0:
        return np.zeros((n, n)), np.arange(n), 0
    lower, piv, rank, _ = scipy.linalg.lapack.dpstrf(sigma, tol=n * np.finfo(np.float64).eps * top, lower=1)
    pivots = piv - 1  # the strict upper triangle of `lower` still holds Σ: dsygst ignores it, _factor drops it
    if rank < n:
        factor = _factor(lower, pivots, rank)
        residual = float(np.abs(sigma - factor @ factor.T).max())
        if residual > NOT_PSD_TOLERANCE * top:
            _not_psd(name, f"its Cholesky factorisation stops at rank {rank} of {n} with residual {residual:.3g}")
    return lower, pivots, rank


def _factor(lower: np.ndarray, pivots: np.ndarray, rank: int) -> np.ndarray:
    """F (n, r) with F Fᵀ = Σ from a pivoted Cholesky factor."""
    factor = np.empty((lower.shape[0], rank))
    factor[pivots] = np.tril(lower[:, :rank])
    return factor


def _trace_sqrt_product_torch(sigma1: torch.Tensor, sigma2: torch.Tensor) -> float:
    f1, info = torch.linalg.cholesky_ex(sigma1)
    if int(info) == 0:
        eigenvalues = torch.linalg.eigvalsh(f1.T @ (sigma2 @ f1)).cpu().numpy()
        if _resolved(eigenvalues, float(sigma1.diagonal().sum()) * float(sigma2.diagonal().sum())):
            return float(np.sqrt(eigenvalues).sum())
    f1, f2 = _eigh_factor_torch(sigma1, "sigma1"), _eigh_factor_torch(sigma2, "sigma2")
    if not (f1.shape[1] and f2.shape[1]):
        return 0.0
    return float(torch.linalg.svdvals(f1.T @ f2).sum())


def _eigh_factor_torch(sigma: torch.Tensor, name: str) -> torch.Tensor:
    """V diag(sqrt(w)) over the eigenvalues w above the noise floor (F Fᵀ = Σ up to rounding)."""
    w, v = torch.linalg.eigh(sigma)
    values = w.cpu().numpy()
    if values[0] < -NOT_PSD_TOLERANCE * max(float(values[-1]), 0.0) or values[-1] < 0:
        _not_psd(name, f"an eigenvalue {values[0]:.3g} < 0")
    keep = w > _noise_floor(values)
    return v[:, keep] * w[keep].sqrt()


def _resolved(eigenvalues: np.ndarray, scale: float) -> bool:
    """Whether every eigenvalue of Aᵀ Σ2 A stands above the rounding noise, so that sqrt(λ) is accurate; if not
    (a singular product), the caller switches to the singular values of A1ᵀ A2. Clearly negative → not PSD."""
    smallest = float(eigenvalues.min())
    if smallest < -NOT_PSD_TOLERANCE * max(scale, 0.0):
        _not_psd("sigma2", f"Aᵀ Σ2 A has an eigenvalue {smallest:.3g} < 0")
    return smallest > _noise_floor(eigenvalues)


def _noise_floor(eigenvalues: np.ndarray) -> float:
    """size · eps · max|λ|: eigenvalues at or below it are rounding noise around 0 (the numerical rank, as in
    ``pinv``)."""
    return eigenvalues.size * np.finfo(np.float64).eps * float(np.abs(eigenvalues).max())


def _not_psd(name: str, why: str) -> None:
    raise InputDataError(
        f"{name} is not a covariance matrix (not positive semi-definite: {why}). Pass the covariance of the features "
        "(e.g. torch.cov(x.T) or FeatureStats.sigma), not an inverse, a precision or a difference of matrices."
    )


# ------------------------------------------------------------------------------------------------ validation


def _torch_device(backend: str, *arrays: object) -> torch.device | None:
    """The device to compute on with torch, or None for the SciPy path."""
    if backend not in ("auto", "numpy", "torch"):
        raise ConfigError(f"unknown backend {backend!r}; choose one of ('auto', 'numpy', 'torch').")
    devices = [a.device for a in arrays if isinstance(a, torch.Tensor) and a.device.type != "cpu"]
    if backend == "numpy" or (backend == "auto" and not devices):
        return None
    return devices[0] if devices else torch.device("cpu")


def _as_numpy64(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputDataError(f"{name} must be a numeric torch tensor or NumPy array, got {type(x).__name__}.") from err
    return arr


def _as_torch64(x: object, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float64)
    return torch.from_numpy(_as_numpy64(x, name)).to(device)


def _check_stats(mu: ArrayLike, sigma: ArrayLike, which: str) -> int:
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise InputDataError(
            f"mu{which} must be a 1-D mean vector (F,), got shape {tuple(mu.shape)}; use x.mean(0) of (N, F) features."
        )
    dim = mu.shape[0]
    if tuple(sigma.shape) != (dim, dim):
        raise InputDataError(
            f"sigma{which} must be the ({dim}, {dim}) covariance matching mu{which}, got shape {tuple(sigma.shape)}."
        )
    finite = torch.isfinite if isinstance(mu, torch.Tensor) else np.isfinite
    if not (bool(finite(mu).all()) and bool(finite(sigma).all())):
        raise EmbeddingError(
            f"mu{which} / sigma{which} contain NaN or inf; the features they were computed from are not finite "
            "(check the extractor's input range and dtype)."
        )
    return dim


def _symmetric_numpy(sigma: np.ndarray, name: str) -> np.ndarray:
    symmetric = np.add(sigma, sigma.T)
    symmetric *= 0.5
    deviation = np.subtract(sigma, symmetric)
    _check_symmetric(2.0 * float(np.abs(deviation, out=deviation).max()), float(np.abs(np.diagonal(sigma)).max()), name)
    return symmetric


def _symmetric_torch(sigma: torch.Tensor, name: str) -> torch.Tensor:
    _check_symmetric(float((sigma - sigma.T).abs().max()), float(sigma.diagonal().abs().max()), name)
    return (sigma + sigma.T) * 0.5


def _check_symmetric(asymmetry: float, size: float, name: str) -> None:
    if asymmetry > 1e-6 * size:
        raise InputDataError(
            f"{name} is not symmetric (max |Σ − Σᵀ| = {asymmetry:.3g} vs max |diag Σ| = {size:.3g}); "
            "pass a covariance matrix, e.g. torch.cov(features.T)."
        )


def _warn_rank_deficient(n: int, dim: int, which: str) -> None:
    if n <= dim:
        warnings.warn(
            f"covariance {which} comes from n={n} samples of {dim}-d features, so its rank is at most {n - 1} < {dim}: "
            f"the FID is biased and unreliable. Use more than {dim} samples (10k+ is usual for 2048-d Inception "
            "features) or a lower-dimensional feature.",
            RankDeficientCovarianceWarning,
            stacklevel=3,
        )


def _as_features(features: object, name: str) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise EmbeddingError(f"{name}: expected a (N, F) torch tensor or NumPy array, got {type(features).__name__}.")
    if features.ndim != 2 or features.shape[1] == 0:
        raise EmbeddingError(
            f"{name}: expected shape (N, F), got {tuple(features.shape)}; stack one feature vector per image."
        )
    if not features.is_floating_point():
        raise EmbeddingError(
            f"{name}: expected floating-point features, got {features.dtype}; images go through an extractor first."
        )
    if features.shape[0] < 2:
        raise EmbeddingError(
            f"{name}: a covariance needs at least 2 samples, got {features.shape[0]}; pass more images."
        )
    x = features.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten()[:5].tolist()
        raise EmbeddingError(
            f"{name}: {int((~torch.isfinite(x).all(dim=1)).sum())} row(s) contain NaN/inf (first rows: {bad}); "
            "check the extractor's input range and dtype."
        )
    return x


def _check_same_dim(d1: int, d2: int) -> None:
    if d1 != d2:
        raise EmbeddingError(
            f"real and fake features have different dimensions ({d1} vs {d2}); "
            "extract both with the same feature extractor."
        )
