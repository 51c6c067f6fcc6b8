"""GraviAlign score against independent references: scipy's Gaussian log-density and a NumPy cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from gen_align.errors import ConfigError, EmbeddingError
from gen_align.objectives.gravi import gravi_score, gravi_terms


def _gaussians(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    var = 0.05 + torch.rand(n, d, generator=g, dtype=torch.float64)
    return mu.to(dtype), var.to(dtype)


def _reference(mu_q, var_q, mu_g, var_g, temperature):
    """(A, B + C) from a NumPy cosine and scipy's multivariate-normal log-density, float64."""
    mu_q, var_q, mu_g, var_g = (np.asarray(t, np.float64) for t in (mu_q, var_q, mu_g, var_g))
    dq = mu_q / np.linalg.norm(mu_q, axis=1, keepdims=True)
    dg = mu_g / np.linalg.norm(mu_g, axis=1, keepdims=True)
    a = dq @ dg.T / temperature
    d = mu_q.shape[1]
    bc = np.empty((len(mu_q), len(mu_g)))
    for i in range(len(mu_q)):
        for j in range(len(mu_g)):
            cov = np.diag(var_q[i] + var_g[j])
            bc[i, j] = multivariate_normal.logpdf(mu_q[i], mean=mu_g[j], cov=cov) + 0.5 * d * math.log(2 * math.pi)
    return a, bc


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_score_matches_scipy_logpdf(dtype, rtol, temperature):
    mu_q, var_q = _gaussians(7, 6, seed=1, dtype=dtype)
    mu_g, var_g = _gaussians(9, 6, seed=2, dtype=dtype)
    a_ref, bc_ref = _reference(mu_q, var_q, mu_g, var_g, temperature)
    score = gravi_score(mu_q, var_q, mu_g, var_g, temperature=temperature)
    assert score.shape == (7, 9) and score.dtype == dtype
    np.testing.assert_allclose(score.double().numpy() - a_ref, bc_ref, rtol=rtol, atol=rtol * 10)
    with torch.no_grad():  # the in-place inference path
        score_ng = gravi_score(mu_q, var_q, mu_g, var_g, temperature=temperature, chunk_size=4)
    np.testing.assert_allclose(score_ng.double().numpy() - a_ref, bc_ref, rtol=rtol, atol=rtol * 10)
    A, B, C = gravi_terms(mu_q, var_q, mu_g, var_g, temperature=temperature)
    np.testing.assert_allclose(A.double().numpy(), a_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose((B + C).double().numpy(), bc_ref, rtol=rtol, atol=rtol * 10)
    # C alone is the log-determinant part: -1/2 sum_d log(var_q + var_g)
    c_ref = -0.5 * np.log(var_q.double().numpy()[:, None, :] + var_g.double().numpy()[None, :, :]).sum(-1)
    np.testing.assert_allclose(C.double().numpy(), c_ref, rtol=rtol)


def test_isotropic_variances_equal_expanded():
    mu_q, var_q = _gaussians(5, 4, seed=3)
    mu_g, var_g = _gaussians(6, 4, seed=4)
    iso_q, iso_g = var_q[:, :1], var_g[:, :1]
    a_ref, bc_ref = _reference(mu_q, iso_q.expand(5, 4), mu_g, iso_g.expand(6, 4), 0.07)
    score = gravi_score(mu_q, iso_q, mu_g, iso_g)
    np.testing.assert_allclose(score.double().numpy(), a_ref + bc_ref, rtol=1e-5, atol=1e-4)


def test_chunking_gives_identical_values_and_gradients():
    mu_q, var_q = _gaussians(23, 8, seed=5)
    mu_g, var_g = _gaussians(11, 8, seed=6)
    results = []
    for chunk in (1, 4, 1024):
        leaves = [t.clone().requires_grad_(True) for t in (mu_q, var_q, mu_g, var_g)]
        score = gravi_score(*leaves, chunk_size=chunk)
        (score * torch.linspace(-1, 1, score.numel()).view_as(score)).sum().backward()
        results.append((score.detach(), [t.grad for t in leaves]))
    for score, grads in results[:-1]:
        torch.testing.assert_close(score, results[-1][0], rtol=1e-6, atol=1e-6)
        for g, g_ref in zip(grads, results[-1][1], strict=True):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(gravi_score(mu_q, var_q, mu_g, var_g, chunk_size=3), results[-1][0])


def test_gradient_finite_and_bf16_autocast():
    mu_q, var_q = _gaussians(16, 32, seed=7)
    mu_g, var_g = _gaussians(20, 32, seed=8)
    leaves = [mu_q.requires_grad_(True), var_q.requires_grad_(True)]
    mu_g16, var_g16 = mu_g.bfloat16().requires_grad_(True), var_g.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = gravi_score(leaves[0], leaves[1], mu_g16, var_g16, chunk_size=5)
    assert score.dtype == torch.float32 and torch.isfinite(score).all()
    score.logsumexp(dim=1).mean().backward()
    for t in (*leaves, mu_g16, var_g16):
        assert torch.isfinite(t.grad.float()).all()


def test_bad_inputs():
    mu_q, var_q = _gaussians(4, 3, seed=0)
    mu_g, var_g = _gaussians(5, 3, seed=1)
    for bad_value in (0.0, -1.0, float("inf"), float("nan")):
        bad = var_g.clone()
        bad[2, 1] = bad_value
        with pytest.raises(EmbeddingError, match=r"var_g: variances must be finite and > 0.*first in row 2"):
            gravi_score(mu_q, var_q, mu_g, bad)
    nan_mu = mu_q.clone()
    nan_mu[1, 0] = float("nan")
    with pytest.raises(EmbeddingError, match="mu_q: 1 row.*NaN/inf or all zero"):
        gravi_score(nan_mu, var_q, mu_g, var_g)
    with pytest.raises(EmbeddingError, match="share the embedding dimension, got 3 and 4"):
        gravi_score(mu_q, var_q, torch.randn(5, 4), torch.ones(5, 4))
    with pytest.raises(EmbeddingError, match=r"var_q: expected variances of shape \(4, 3\)"):
        gravi_score(mu_q, var_q[:3], mu_g, var_g)
    with pytest.raises(EmbeddingError, match=r"var_q: expected variances of shape \(4, 3\)"):
        gravi_score(mu_q, torch.ones(4, 2), mu_g, var_g)
    for temperature in (0.0, -0.07, float("nan")):
        with pytest.raises(ConfigError, match="temperature must be a positive finite number"):
            gravi_score(mu_q, var_q, mu_g, var_g, temperature=temperature)
    with pytest.raises(ConfigError, match="chunk_size must be an integer >= 1"):
        gravi_score(mu_q, var_q, mu_g, var_g, chunk_size=0)
