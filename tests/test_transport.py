"""Transport objectives against independent references: POT for Sinkhorn, dense float64 NumPy for the
local-covariance (Jeffreys) divergence."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch

from gen_align.errors import ConfigError, EmbeddingError
from gen_align.objectives.transport import local_covariance_loss, sinkhorn_ot_loss, sinkhorn_plan


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _pot_plan(x: np.ndarray, y: np.ndarray, eps: float, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if normalize:
        x, y = _unit(x), _unit(y)
    C = _cost(np.asarray(x, np.float64), np.asarray(y, np.float64))
    P = ot.sinkhorn(_uniform(len(x)), _uniform(len(y)), C, reg=eps, numItermax=100_000, stopThr=1e-13)
    return P, C


def _batches(n: int, m: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


# ---------------------------------------------------------------- sinkhorn_ot_loss


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("n,m,d", [(8, 8, 16), (10, 13, 16), (32, 20, 8)])
def test_sinkhorn_matches_pot_sinkhorn2(n, m, d, eps):
    x, y = _batches(n, m, d, seed=n * 100 + m)
    xn, yn = _unit(x.numpy()), _unit(y.numpy())
    ref = ot.sinkhorn2(_uniform(n), _uniform(m), _cost(xn, yn), reg=eps, numItermax=100_000, stopThr=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # must converge: no "did not converge" warning
        value = sinkhorn_ot_loss(x, y, eps=eps, iters=5000)
    assert value.ndim == 0 and value.dtype == torch.float32
    assert abs(float(value) - float(ref)) < 1e-4


def test_sinkhorn_float64_and_unnormalised_match_pot():
    x, y = _batches(9, 12, 5, seed=3)
    x, y = 0.5 * x.double(), 0.5 * y.double()
    P, C = _pot_plan(x.numpy(), y.numpy(), eps=0.5, normalize=False)
    value = sinkhorn_ot_loss(x, y, eps=0.5, iters=5000, tol=1e-12, normalize=False)
    assert value.dtype == torch.float64
    assert abs(float(value) - float((P * C).sum())) < 1e-9


def test_sinkhorn_plan_is_pot_plan_with_uniform_marginals():
    x, y = _batches(12, 7, 16, seed=5)
    P_ref, _ = _pot_plan(x.numpy(), y.numpy(), eps=0.1)
    P = sinkhorn_plan(x, y, eps=0.1, iters=5000).double().numpy()
    assert P.shape == (12, 7)
    np.testing.assert_allclose(P.sum(1), np.full(12, 1 / 12), atol=1e-6)
    np.testing.assert_allclose(P.sum(0), np.full(7, 1 / 7), atol=1e-6)
    np.testing.assert_allclose(P, P_ref, atol=1e-6)


def test_sinkhorn_gradient_is_gradient_of_regularised_ot():
    """Envelope theorem: the gradient equals the derivative of OT_eps = <P,C> + eps·KL(P | ab), checked by
    central differences of POT's regularised value in float64."""
    eps = 0.1
    x, y = _batches(6, 5, 4, seed=11)
    x, y = x.double(), y.double()

    def ot_eps(xa: np.ndarray) -> float:
        P, C = _pot_plan(xa, y.numpy(), eps)
        ab = np.outer(_uniform(len(xa)), _uniform(len(y)))
        return float((P * C).sum() + eps * (P * np.log(P / ab)).sum())

    xg = x.clone().requires_grad_(True)
    sinkhorn_ot_loss(xg, y, eps=eps, iters=20_000, tol=1e-13).backward()
    h = 1e-5
    for i, j in [(0, 0), (2, 3), (5, 1)]:
        plus, minus = x.numpy().copy(), x.numpy().copy()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (ot_eps(plus) - ot_eps(minus)) / (2 * h)
        assert abs(float(xg.grad[i, j]) - fd) < 1e-6 * max(1.0, abs(fd))


def test_sinkhorn_gradient_finite_under_bf16_autocast():
    x, y = _batches(16, 24, 32, seed=1)
    x.requires_grad_(True)
    y16 = y.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sinkhorn_ot_loss(x, y16, eps=0.1, iters=2000)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert torch.isfinite(x.grad).all() and torch.isfinite(y16.grad.float()).all()


def test_sinkhorn_warns_when_not_converged_and_tol_zero_runs_silently():
    x, y = _batches(10, 10, 8, seed=2)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations.*Increase iters"):
        sinkhorn_ot_loss(x, y, eps=0.05, iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert torch.isfinite(sinkhorn_ot_loss(x, y, eps=0.05, iters=3, tol=0))


def test_sinkhorn_bad_inputs():
    x, y = _batches(6, 6, 4, seed=0)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN/inf or all zero"):
        sinkhorn_ot_loss(bad, y)
    with pytest.raises(EmbeddingError, match="NaN or inf"):
        sinkhorn_ot_loss(bad, y, normalize=False)
    with pytest.raises(EmbeddingError, match="same space.*dimensions 4 and 5"):
        sinkhorn_ot_loss(x, torch.randn(6, 5))
    with pytest.raises(EmbeddingError, match=r"expected shape \(B, d\)"):
        sinkhorn_ot_loss(x[0], y)
    for eps in (0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="eps must be a positive finite number"):
            sinkhorn_ot_loss(x, y, eps=eps)
    with pytest.raises(ConfigError, match="iters must be an integer >= 1"):
        sinkhorn_ot_loss(x, y, iters=0)
    with pytest.raises(ConfigError, match="tol must be a non-negative finite number"):
        sinkhorn_ot_loss(x, y, tol=-1.0)


# ---------------------------------------------------------------- local_covariance_loss


def _dense_jeffreys(x: np.ndarray, y: np.ndarray, k: int, ridge: float, normalize: bool = True) -> float:
    """Full d×d covariances, np.linalg.inv and explicit traces, float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if normalize:
        x, y = _unit(x), _unit(y)
    n, d = x.shape
    total = 0.0
    for i in range(n):
        dist = ((x - x[i]) ** 2).sum(1)
        dist[i] = np.inf
        nb = np.concatenate([[i], np.argsort(dist)[:k]])

        def cov(z: np.ndarray, nb: np.ndarray = nb) -> np.ndarray:
            zc = z[nb] - z[nb].mean(0)
            return zc.T @ zc / (k + 1) + ridge * np.eye(d)

        A, B = cov(x), cov(y)
        total += 0.5 * (np.trace(A @ np.linalg.inv(B)) + np.trace(B @ np.linalg.inv(A))) - d
    return total / n


@pytest.mark.parametrize("ridge,normalize", [(1e-3, True), (0.1, True), (1e-2, False)])
def test_local_covariance_matches_dense_reference(ridge, normalize):
    x, y = _batches(12, 12, 8, seed=7)
    ref = _dense_jeffreys(x.numpy(), y.numpy(), k=4, ridge=ridge, normalize=normalize)
    got64 = local_covariance_loss(x.double(), y.double(), k=4, ridge=ridge, normalize=normalize)
    got32 = local_covariance_loss(x, y, k=4, ridge=ridge, normalize=normalize)
    assert got64.ndim == 0 and got32.dtype == torch.float32
    np.testing.assert_allclose(float(got64), ref, rtol=1e-9)
    np.testing.assert_allclose(float(got32), ref, rtol=1e-4)


def test_local_covariance_zero_for_identical_and_nonnegative():
    x, _ = _batches(20, 1, 16, seed=4)
    assert abs(float(local_covariance_loss(x, x.clone(), k=5))) < 1e-6
    for seed in range(5):
        x, y = _batches(15, 15, 6, seed=seed)
        assert float(local_covariance_loss(x, y, k=3, ridge=0.05)) >= 0.0


def test_local_covariance_rotation_invariant():
    x, y = _batches(16, 16, 8, seed=9)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
    Q = torch.from_numpy(q).float()
    before = local_covariance_loss(x, y, k=5, ridge=1e-2, normalize=False)
    after = local_covariance_loss(x @ Q, y @ Q, k=5, ridge=1e-2, normalize=False)
    np.testing.assert_allclose(float(after), float(before), rtol=1e-4)


def test_local_covariance_gradient_matches_finite_differences_of_reference():
    x, y = _batches(10, 10, 5, seed=12)
    x, y = x.double(), y.double()
    yg = y.clone().requires_grad_(True)
    local_covariance_loss(x, yg, k=3, ridge=0.05).backward()
    h = 1e-6
    for i, j in [(0, 0), (4, 2), (9, 4)]:
        plus, minus = y.numpy().copy(), y.numpy().copy()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (_dense_jeffreys(x.numpy(), plus, 3, 0.05) - _dense_jeffreys(x.numpy(), minus, 3, 0.05)) / (2 * h)
        assert abs(float(yg.grad[i, j]) - fd) < 1e-5 * max(1.0, abs(fd))


def test_local_covariance_gradient_finite_under_bf16_autocast():
    x, y = _batches(32, 32, 64, seed=6)
    x.requires_grad_(True)
    y16 = y.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = local_covariance_loss(x, y16, k=10)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert torch.isfinite(x.grad).all() and torch.isfinite(y16.grad.float()).all()


def test_local_covariance_bad_inputs():
    x, y = _batches(6, 6, 4, seed=0)
    with pytest.raises(EmbeddingError, match=r"k=6 needs a batch of at least k \+ 1 = 7 items, got 6"):
        local_covariance_loss(x, y, k=6)
    with pytest.raises(EmbeddingError, match="paired batches of the same shape"):
        local_covariance_loss(x, y[:5])
    with pytest.raises(EmbeddingError, match="paired batches of the same shape"):
        local_covariance_loss(x, torch.randn(6, 3))
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(EmbeddingError, match="NaN/inf or all zero"):
        local_covariance_loss(x, bad, k=2)
    with pytest.raises(EmbeddingError, match="NaN or inf"):
        local_covariance_loss(x, bad, k=2, normalize=False)
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        local_covariance_loss(x, y, k=0)
    for ridge in (0.0, -1e-3, float("inf")):
        with pytest.raises(ConfigError, match="ridge must be a positive finite number"):
            local_covariance_loss(x, y, k=2, ridge=ridge)
