"""FID / KID core: closed forms, scipy sqrtm and torchmetrics agreement, near-singular accuracy, accumulator."""

from __future__ import annotations

import warnings
from urllib.error import URLError

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from gen_align.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingError,
    GenAlignError,
    InputDataError,
    WeightsNotFoundError,
)
from gen_align.eval.features import FeatureStatistics, state_dict_sha256
from gen_align.eval.fid import (
    FeatureStats,
    RankDeficientCovarianceWarning,
    feature_stats,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
)


class Passthrough(nn.Module):
    """A "feature extractor" whose inputs already are the features (torchmetrics sees the same numbers as we do)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


class TinyExtractor(nn.Module):
    """uint8 (B, 3, H, W) → (B, 8) features, computed in float64 (so batching does not change them)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, dtype=torch.float64)

    def forward(self, x):
        return torch.tanh(self.conv(x.double() / 255.0)).mean(dim=(2, 3)) * 3


def rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q


def spd(dim: int, cond: float, seed: int) -> np.ndarray:
    q = rotation(dim, seed)
    return (q * np.logspace(0, -np.log10(cond), dim)) @ q.T


def features(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(1.0, 0.2, dim, dtype=torch.float64)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * scales + shift


def sqrtm_fid(mu1, s1, mu2, s2) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


# ------------------------------------------------------------------------------------------ frechet_distance


def test_identical_sets_give_zero():
    x = features(300, 16, 0)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-10)
    stats = feature_stats(x)
    assert stats.fid(stats) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_commuting_gaussians_match_closed_form(backend):
    dim = 24
    rng = np.random.default_rng(3)
    q = rotation(dim, 4)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    closed = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2, backend=backend) == pytest.approx(closed, rel=1e-12)
    as_torch = [torch.from_numpy(v) for v in (mu1, s1, mu2, s2)]
    assert isinstance(frechet_distance(*as_torch), float)
    assert frechet_distance(*as_torch, backend=backend) == pytest.approx(closed, rel=1e-12)


def test_agrees_with_scipy_sqrtm_on_well_conditioned_input():
    dim = 64
    rng = np.random.default_rng(5)
    s1, s2 = spd(dim, 100, 6), spd(dim, 100, 7)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    reference = sqrtm_fid(mu1, s1, mu2, s2)
    copies = [v.copy() for v in (mu1, s1, mu2, s2)]
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2, backend="torch") == pytest.approx(reference, rel=1e-10)
    assert all(np.array_equal(a, b) for a, b in zip(copies, (mu1, s1, mu2, s2), strict=True))  # inputs untouched


def test_agrees_with_torchmetrics_on_the_same_features():
    real, fake = features(400, 32, 1), features(300, 32, 2, shift=0.3)
    metric = FrechetInceptionDistance(feature=Passthrough(32))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-6)
    ours = FeatureStatistics(None, num_features=32)
    ours.update(real[:150])
    ours.update(real[150:])
    theirs = FeatureStatistics(None, num_features=32)
    theirs.update(fake.numpy())
    assert ours.compute().fid(theirs.compute()) == pytest.approx(expected, rel=1e-6)


def test_accumulator_with_custom_extractor_agrees_with_torchmetrics_on_images():
    extractor = TinyExtractor()
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8, generator=g)
    fake = torch.randint(0, 180, (40, 3, 16, 16), dtype=torch.uint8, generator=g)
    metric = FrechetInceptionDistance(feature=extractor)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    stats_real, stats_fake = FeatureStatistics(extractor), FeatureStatistics(extractor)
    stats_real.update(real)
    stats_fake(fake)  # calling the module updates too
    assert stats_real.compute().fid(stats_fake.compute()) == pytest.approx(float(metric.compute()), rel=1e-6)


def hadamard_pair(zeros: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Σ1 = H diag(a) Hᵀ, Σ2 = H diag(b) Hᵀ with H/8 a 64-d Hadamard matrix and a, b powers of two in [2^-40, 1]
    (some exactly 0): every entry is exact in float64, so the closed form Σ (√a − √b)² is the true FID."""
    rng = np.random.default_rng(zeros)
    h = scipy.linalg.hadamard(64).astype(np.float64) / 8.0
    a, b = 2.0 ** -rng.integers(0, 41, 64), 2.0 ** -rng.integers(0, 41, 64)
    a[:zeros] = 0.0
    b[zeros // 2 : zeros // 2 + zeros] = 0.0
    return (h * a) @ h.T, (h * b) @ h.T, float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


@pytest.mark.parametrize("zeros", [0, 20, 40])
def test_near_singular_exact_construction_stays_accurate(zeros):
    s1, s2, exact = hadamard_pair(zeros)
    mu = np.zeros(64)
    for backend in ("numpy", "torch"):
        value = frechet_distance(mu, s1, mu, s2, backend=backend)
        assert np.isfinite(value)
        assert abs(value - exact) / exact < 1e-10


@pytest.mark.parametrize("rank", [8, 40, 63])
def test_low_rank_non_commuting_pair_matches_closed_form(rank):
    """Σ2 = B Σ1 B with B SPD: Σ1^½ Σ2 Σ1^½ = (Σ1^½ B Σ1^½)², so FID = ‖(I − B) Σ1^½‖²_F, for any rank of Σ1."""
    dim = 64
    q = rotation(dim, rank)
    w = np.zeros(dim)
    w[:rank] = np.logspace(0, -12, rank)
    half = (q * np.sqrt(w)) @ q.T
    s1 = (q * w) @ q.T
    b = spd(dim, 10, 100 + rank)
    s2 = b @ s1 @ b
    exact = float((((np.eye(dim) - b) @ half) ** 2).sum())
    mu = np.zeros(dim)
    for backend in ("numpy", "torch"):
        assert frechet_distance(mu, s1, mu, s2, backend=backend) == pytest.approx(exact, rel=1e-11)
        assert frechet_distance(mu, s2, mu, s1, backend=backend) == pytest.approx(exact, rel=1e-11)


def test_rank_deficient_covariance_warns_and_stays_accurate():
    x = features(10, 32, 8)
    with pytest.warns(RankDeficientCovarianceWarning, match="n=10 samples of 32-d"):
        value = fid_from_features(x, x)
    assert value == pytest.approx(0.0, abs=1e-13 * float(feature_stats(x).sigma.trace()))
    y = features(12, 32, 9, shift=1.0)
    # reference from the features themselves: Σi = Ai Aiᵀ, Tr sqrt(Σ1 Σ2) = nuclear norm of A1ᵀ A2
    a1, a2 = ((v - v.mean(0)).T.numpy() / np.sqrt(v.shape[0] - 1) for v in (x, y))
    mean_term = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    exact = mean_term + (a1**2).sum() + (a2**2).sum() - 2 * np.linalg.svd(a1.T @ a2, compute_uv=False).sum()
    with pytest.warns(RankDeficientCovarianceWarning):
        assert fid_from_features(x, y) == pytest.approx(exact, rel=1e-12)
    stats = feature_stats(features(40, 32, 10))
    with pytest.warns(RankDeficientCovarianceWarning, match="covariance 2"):
        frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma, n1=40, n2=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma, n1=33, n2=33)


# ---------------------------------------------------------------------------------------------------- KID


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_with_the_same_subsets():
    real, fake = features(60, 16, 11), features(50, 16, 12, shift=0.2)
    metric = KernelInceptionDistance(feature=Passthrough(16), subsets=6, subset_size=20)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(123)
    mean, std = (float(v) for v in metric.compute())
    ours = kernel_inception_distance(real, fake, subsets=6, subset_size=20, seed=123)
    assert ours == pytest.approx((mean, std), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_with_full_subsets_is_seed_independent_and_matches_torchmetrics():
    real, fake = features(30, 8, 13), features(30, 8, 14, shift=0.5)
    metric = KernelInceptionDistance(feature=Passthrough(8), subsets=1, subset_size=30, degree=2, coef=0.5)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute()[0])
    for seed in (0, 1):
        mean, std = kernel_inception_distance(real, fake, subsets=1, subset_size=30, degree=2, coef=0.5, seed=seed)
        assert mean == pytest.approx(expected, rel=1e-6) and std == 0.0


def test_kid_refuses_too_large_subsets():
    with pytest.raises(ConfigError, match="subset_size=50 is larger than the smaller feature set"):
        kernel_inception_distance(features(40, 4, 0), features(60, 4, 1), subsets=2, subset_size=50)


# --------------------------------------------------------------------------------------------- bad inputs


def test_bad_feature_inputs_raise_clear_errors():
    good = features(10, 4, 0)
    nan = good.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(EmbeddingError, match=r"1 row\(s\) contain NaN/inf \(first rows: \[3\]\)"):
        fid_from_features(nan, good)
    with pytest.raises(EmbeddingError, match="different dimensions"):
        fid_from_features(good, features(10, 5, 1))
    with pytest.raises(EmbeddingError, match="at least 2 samples"):
        fid_from_features(good[:1], good)
    with pytest.raises(EmbeddingError, match="floating-point"):
        fid_from_features(torch.ones(5, 4, dtype=torch.long), good)
    with pytest.raises(EmbeddingError, match=r"expected shape \(N, F\)"):
        fid_from_features(good[None], good)
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        kernel_inception_distance(nan, good, subsets=1, subset_size=5)


def test_zero_covariances():
    zero, mu = np.zeros((4, 4)), np.zeros(4)
    for backend in ("numpy", "torch"):
        assert frechet_distance(mu, zero, mu + 1, zero, backend=backend) == pytest.approx(4.0)
        assert frechet_distance(mu, zero, mu + 1, np.eye(4), backend=backend) == pytest.approx(8.0)


def test_bad_statistics_raise_clear_errors():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(InputDataError, match="1-D mean"):
        frechet_distance(mu[None], sigma, mu, sigma)
    with pytest.raises(InputDataError, match=r"\(4, 4\) covariance"):
        frechet_distance(mu, np.eye(3), mu, sigma)
    with pytest.raises(EmbeddingError, match="different dimensions"):
        frechet_distance(mu, sigma, np.zeros(3), np.eye(3))
    with pytest.raises(InputDataError, match="not symmetric"):
        frechet_distance(mu, np.triu(np.ones((4, 4))), mu, sigma)
    indefinite = np.array([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    for backend in ("numpy", "torch"):
        for s1, s2 in [(-np.eye(4), -np.eye(4)), (np.diag([1.0, 1, 1, -1]), sigma), (indefinite, sigma),
                       (sigma, indefinite), (np.diag([1.0, 1, 0, 0]), indefinite)]:  # fmt: skip
            with pytest.raises(InputDataError, match="not a covariance matrix"):
                frechet_distance(mu, s1, mu, s2, backend=backend)
    with pytest.raises(EmbeddingError, match="NaN or inf"):
        frechet_distance(np.full(4, np.nan), sigma, mu, sigma)
    with pytest.raises(ConfigError, match="backend"):
        frechet_distance(mu, sigma, mu, sigma, backend="jax")


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_bad_image_inputs_raise_clear_errors():
    stats = FeatureStatistics(TinyExtractor())
    with pytest.raises(InputDataError, match="uint8 in \\[0, 255\\].*\\(x \\* 255\\)"):
        stats.update(torch.rand(2, 3, 8, 8))
    with pytest.raises(InputDataError, match="channels-last"):
        stats.update(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(InputDataError, match=r"images\[None\]"):
        stats.update(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(EmbeddingError, match=r"expected shape \(B, 8\)"):
        stats.update(torch.zeros(4, 5))
    with pytest.raises(InputDataError, match="different sizes.*image_size"):
        stats.update([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))])
    with pytest.raises(InputDataError, match="stack them"):
        stats.update([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ConfigError, match="no extractor"):
        FeatureStatistics(None, num_features=8).update(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(EmbeddingError, match="at least 2 samples"):
        FeatureStatistics(None, num_features=8).compute()

    class Broken(nn.Module):
        num_features = 8

        def forward(self, x):
            return torch.full((x.shape[0], 8), float("nan"))

    with pytest.raises(EmbeddingError, match="output of the extractor .*NaN/inf"):
        FeatureStatistics(Broken()).update(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert all(issubclass(e, GenAlignError) for e in (InputDataError, EmbeddingError, ConfigError))


# -------------------------------------------------------------------------------------------- accumulator


def test_pil_and_path_inputs_are_resized_and_recorded(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, 12, 3), dtype=np.uint8)) for h in (10, 12, 14)]
    images[1].save(tmp_path / "b.png")
    stats = FeatureStatistics(TinyExtractor(), image_size=12, resize="bilinear", batch_size=2)
    stats.update([images[0], tmp_path / "b.png", images[2]])
    direct = torch.from_numpy(
        np.stack([np.asarray(im.resize((12, 12), Image.Resampling.BILINEAR)) for im in images])
    ).permute(0, 3, 1, 2)
    expected = FeatureStatistics(TinyExtractor())
    expected.update(direct)
    assert torch.allclose(stats.compute().sigma, expected.compute().sigma, rtol=1e-12, atol=1e-15)
    assert stats.fingerprint()["preprocessing"] == {
        "image_size": 12,
        "resize": "pil-bilinear",
        "antialias": None,
        "input": "uint8",
    }


def test_float_input_extractor_and_inferred_dimension():
    class FloatNet(nn.Module):
        def forward(self, x):
            assert x.dtype == torch.float32 and float(x.max()) <= 1.0
            return x.mean(dim=(2, 3))

    stats = FeatureStatistics(FloatNet(), float_input=True, image_size=4)
    assert stats.num_features == 3
    stats.update(torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8))
    assert stats.compute().n == 5
    assert stats.fingerprint()["preprocessing"]["input"] == "float[0,1]"


def test_states_sync_like_torchmetrics_across_processes():
    """Emulate a 2-process gather: rank 0 computes from the sum of both ranks' states."""
    data = features(90, 6, 20)
    other = FeatureStatistics(None, num_features=6)
    other.update(data[40:])
    by_shape = {tuple(t.shape): t for t in (other.feature_sum, other.outer_sum, other.num_samples)}

    def gather(tensor, group=None):
        return [tensor, by_shape[tuple(tensor.shape)]]

    rank0 = FeatureStatistics(None, num_features=6, dist_sync_fn=gather, distributed_available_fn=lambda: True)
    rank0.update(data[:40])
    synced = rank0.compute()
    reference = feature_stats(data)
    assert synced.n == 90
    assert torch.allclose(synced.mu, reference.mu, rtol=1e-12)
    assert torch.allclose(synced.sigma, reference.sigma, rtol=1e-10, atol=1e-14)
    assert int(rank0.num_samples) == 40  # local state restored after the synced compute


def test_feature_stats_is_a_named_tuple():
    mu, sigma, n = feature_stats(features(5, 3, 0))
    assert isinstance(feature_stats(features(5, 3, 0)), FeatureStats)
    assert mu.dtype == sigma.dtype == torch.float64 and n == 5


def test_extractor_hash_changes_with_weights():
    a, b = TinyExtractor(), TinyExtractor()
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.conv.bias[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)
    assert FeatureStatistics(a).weights_id() != FeatureStatistics(b).weights_id()


# ------------------------------------------------------------------------------------- default Inception


@pytest.fixture
def empty_weight_homes(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_default_inception_is_lazy_and_offline_failure_is_clear(empty_weight_homes, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    stats = FeatureStatistics(antialias=False)
    stats.update(torch.zeros(3, 2048))  # features need no weights
    assert stats.extractor is None and stats.compute().n == 3
    assert stats.fingerprint()["extractor"]["weights"] == "weights-inception-2015-12-05-6726825d.pth"
    assert stats.fingerprint()["preprocessing"]["antialias"] is False
    with pytest.raises(WeightsNotFoundError) as info:
        stats.update(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    message = str(info.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "https://github.com/toshas" in message
    assert str(empty_weight_homes / "home" / "fid") in message and "extractor=my_module" in message


def test_default_inception_wiring_with_stand_in_weights(empty_weight_homes, monkeypatch):
    """The real Inception forward takes seconds on a CPU; record what reaches it instead."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    seen = []

    def record(self, x):
        seen.append(x)
        return torch.rand(x.shape[0], 2048)

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(NoTrainInceptionV3, "forward", record)
    stats = FeatureStatistics(antialias=False)
    stats.update([Image.new("RGB", (20, 16), (200, 10, 10)), Image.new("RGB", (299, 299), (0, 90, 255))])
    assert isinstance(stats.extractor, NoTrainInceptionV3)
    assert stats.extractor.use_antialias is False and not stats.extractor.training
    assert seen[0].dtype == torch.uint8 and seen[0].shape == (2, 3, 299, 299)
    assert stats.compute().mu.shape == (2048,)
    assert stats.fingerprint()["preprocessing"]["resize"] == "pil-bicubic"


def test_inception_weights_path_problems(empty_weight_homes):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        FeatureStatistics(weights_path=empty_weight_homes / "nope.pth").update(
            torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
        )
    garbage = empty_weight_homes / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable tensor checkpoint"):
        FeatureStatistics(weights_path=garbage).update(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert FeatureStatistics(weights_path=garbage).weights_id().startswith("sha256:")


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="2048-d"):
        FeatureStatistics(num_features=64)
    with pytest.raises(ConfigError, match="num_features"):
        FeatureStatistics(None)
    with pytest.raises(ConfigError, match="resize"):
        FeatureStatistics(TinyExtractor(), resize="cubic")
    with pytest.raises(ConfigError, match="extractor"):
        FeatureStatistics("resnet")
