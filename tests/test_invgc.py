"""InvGC / LocalAdj / AvgPool against a dense float64 NumPy implementation of Eq. 9 (published-code details);
the blocked and FAISS backends against it; rate tuning against a brute-force grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gen_align.diagnostics import degeneration_score, mean_sim_at_k
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.retrieval.invgc import degeneration_change, invgc, neighbour_count, tune_invgc
from gen_align.retrieval.metrics import retrieval_metrics


def normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def message_reference(x, bank, adjacency, k_percent):
    """Σ_j w_ij b_j with W = x bᵀ: full subtracts the mean of W and divides by N_b; local keeps the top-k of
    each row and divides by k; avgpool puts 1 on the top-k and divides by k."""
    W = x @ bank.T
    if adjacency == "full":
        return (W - W.mean()) @ bank / bank.shape[0]
    k = max(1, math.floor(k_percent * bank.shape[0] / 100))
    A = np.zeros_like(W)
    for i, row in enumerate(W):
        top = np.argsort(-row)[:k]
        A[i, top] = row[top] if adjacency == "local" else 1.0
    return A @ bank / k


def invgc_reference(gallery, train_gallery, train_query, r_g, r_q, adjacency, k_percent=1.0):
    """x' = n(½[n(x − r_g m^g) + n(x − r_q m^q)]), n = row normalisation (Eq. 9, applied per bank)."""
    x, g, q = (normalise(np.asarray(a, dtype=np.float64)) for a in (gallery, train_gallery, train_query))
    by_gallery = normalise(x - r_g * message_reference(x, g, adjacency, k_percent))
    by_query = normalise(x - r_q * message_reference(x, q, adjacency, k_percent))
    return normalise(0.5 * (by_gallery + by_query))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(260, 12, generator=g, dtype=torch.float64)
    hub = torch.randn(12, generator=g, dtype=torch.float64)  # a shared offset: a degenerate (hubby) gallery
    query = latent + 0.7 * torch.randn(260, 12, generator=g, dtype=torch.float64)
    gallery = latent + 0.7 * torch.randn(260, 12, generator=g, dtype=torch.float64) + 1.5 * hub
    return {"query": query[:60], "gallery": gallery[:60], "train_query": query[60:], "train_gallery": gallery[60:]}


@pytest.mark.parametrize("adjacency", ["full", "local", "avgpool"])
@pytest.mark.parametrize("backend", ["dense", "blocked", "faiss"])
def test_invgc_matches_dense_float64_reference(data, adjacency, backend):
    args = (data["gallery"], data["train_gallery"], data["train_query"], 0.3, 0.7)
    expected = invgc_reference(*args, adjacency, k_percent=5)
    got = invgc(*args, adjacency, k_percent=5, backend=backend, block_size=7)
    assert got.dtype == torch.float64 and got.shape == (60, 12)
    tolerance = 1e-5 if backend == "faiss" else 1e-12  # FAISS scores neighbours in float32
    np.testing.assert_allclose(got.numpy(), expected, atol=tolerance)


def test_local_backends_agree_in_float32_with_larger_k(data):
    args = [t.float() for t in (data["gallery"], data["train_gallery"], data["train_query"])]
    dense = invgc(*args, 0.5, 0.2, "local", k_percent=20, backend="dense")
    for backend in ("blocked", "faiss"):
        torch.testing.assert_close(invgc(*args, 0.5, 0.2, "local", k_percent=20, backend=backend), dense)


def test_zero_rates_return_the_normalised_gallery(data):
    got = invgc(data["gallery"], data["train_gallery"], data["train_query"], 0, 0, "local")
    torch.testing.assert_close(got, data["gallery"] / data["gallery"].norm(dim=1, keepdim=True))


def test_neighbour_count_follows_the_published_floor():
    assert neighbour_count(10_000, 1) == 100
    assert neighbour_count(50, 1) == 1  # ⌊0.5⌋ = 0 is raised to one neighbour
    assert neighbour_count(100, 29) == 29
    assert neighbour_count(7, 100) == 7


def test_invgc_reduces_degeneration_of_a_hubby_gallery(data):
    after = invgc(data["gallery"], data["train_gallery"], data["train_query"], 1.0, 1.0, "local", k_percent=5)
    change = degeneration_change(data["gallery"], after, k=5)
    assert change["degeneration"]["before"] == pytest.approx(degeneration_score(data["gallery"]))
    assert change["mean_sim@5"]["after"] == pytest.approx(mean_sim_at_k(after, 5))
    assert change["degeneration"]["after"] < change["degeneration"]["before"]


def test_tune_invgc_matches_a_brute_force_grid(data):
    grid = (0.0, 0.1, 1.0)
    args = (data["query"], data["gallery"], data["train_gallery"], data["train_query"])
    tuned = tune_invgc(*args, "local", k_percent=5, grid=grid)
    brute = []
    for r_g in grid:
        for r_q in grid:
            processed = torch.from_numpy(invgc_reference(*args[1:], r_g, r_q, "local", k_percent=5))
            brute.append([r_g, r_q, retrieval_metrics(data["query"] @ processed.T)["R@1"]])
    np.testing.assert_allclose(np.array(tuned["results"]), np.array(brute))
    best = max(row[2] for row in brute)
    assert tuned["R@1"] == best and [tuned["r_g"], tuned["r_q"], best] in brute
    assert min(row[0] + row[1] for row in brute if row[2] == best) == tuned["r_g"] + tuned["r_q"]
    assert tuned["baseline_R@1"] == brute[0][2] <= tuned["R@1"]
    assert tuned["at_grid_max"] == (1.0 in (tuned["r_g"], tuned["r_q"]))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"r_g": -0.1}, ConfigError, "r_g"),
        ({"r_q": float("nan")}, ConfigError, "r_q"),
        ({"k_percent": 0}, ConfigError, "k_percent"),
        ({"k_percent": 150}, ConfigError, "k_percent"),
        ({"adjacency": "knn"}, ConfigError, "adjacency"),
        ({"backend": "gpu"}, ConfigError, "backend"),
        ({"block_size": 0}, ConfigError, "block_size"),
        ({"train_query": torch.randn(20, 5)}, EmbeddingError, "dimension"),
        ({"gallery": torch.full((4, 12), float("nan"))}, EmbeddingError, "NaN"),
    ],
)
def test_bad_inputs(data, kwargs, error, message):
    args = {"gallery": data["gallery"], "train_gallery": data["train_gallery"], "train_query": data["train_query"]}
    args |= {"r_g": 0.1, "r_q": 0.1, "adjacency": "local", "k_percent": 1.0} | kwargs
    with pytest.raises(error, match=message):
        invgc(**args)
