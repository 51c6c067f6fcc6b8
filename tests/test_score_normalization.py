"""IS, QB-Norm (dynamic inverted softmax), DBNorm and dual softmax against references written out here in NumPy,
loop by loop from the formulas, and their effect on a gallery with a hub."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_align.errors import EmbeddingError
from gen_align.retrieval.score_normalization import (
    activation_set,
    db_norm,
    dual_softmax,
    inverted_softmax,
    querybank_norm,
)


def cosines(rng, n, g, d=8):
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((g, d))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return {"test": cosines(rng, 6, 9), "qbank": cosines(rng, 11, 9), "gbank": cosines(rng, 7, 9)}


def is_reference(test, bank, beta):
    out = np.empty_like(test)
    for q in range(test.shape[0]):
        for g in range(test.shape[1]):
            out[q, g] = np.exp(beta * test[q, g]) / sum(np.exp(beta * bank[b, g]) for b in range(bank.shape[0]))
    return out


def dis_reference(test, bank, beta, k):
    active = set()
    for b in range(bank.shape[0]):
        active |= set(np.argsort(-bank[b])[:k].tolist())
    normalised = is_reference(test, bank, beta)
    return np.stack([normalised[q] if int(np.argmax(test[q])) in active else test[q] for q in range(test.shape[0])])


def test_inverted_softmax(data):
    got = inverted_softmax(data["test"], data["qbank"], beta=20)
    np.testing.assert_allclose(got.numpy(), is_reference(data["test"], data["qbank"], 20), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_querybank_norm_normalises_only_rows_whose_top1_is_activated(data, k):
    got = querybank_norm(data["test"], data["qbank"], beta=20, k=k)
    np.testing.assert_allclose(got.numpy(), dis_reference(data["test"], data["qbank"], 20, k), rtol=1e-12)
    active = activation_set(data["qbank"], k).numpy()
    assert active.sum() == len({int(i) for row in data["qbank"] for i in np.argsort(-row)[:k]})


@pytest.mark.parametrize("dynamic", [False, True])
def test_db_norm_is_the_product_of_the_query_bank_and_gallery_bank_factors(data, dynamic):
    f = (lambda t, b, beta: dis_reference(t, b, beta, 1)) if dynamic else is_reference
    expected = f(data["test"], data["qbank"], 1 / 1.99) * f(data["test"], data["gbank"], 3.0)
    got = db_norm(data["test"], data["qbank"], data["gbank"], dynamic=dynamic)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_dual_softmax(data):
    s, t = data["test"], 0.05
    prior = np.exp(s / t) / np.exp(s / t).sum(axis=0, keepdims=True)  # over the queries of each gallery column
    np.testing.assert_allclose(dual_softmax(s, t).numpy(), s * prior * s.shape[0], rtol=1e-12)


def test_a_hub_is_demoted():
    """Gallery item 0 is close to every query (a hub): cosine gives it to every query; IS hands each query back its
    own item, as the bank (other queries of the same kind) shows item 0 is close to everything."""
    rng = np.random.default_rng(1)
    own = np.eye(5) * 0.5 + rng.uniform(0, 0.05, (5, 5))
    own[:, 0] += 0.6  # the hub column
    bank = np.eye(5)[rng.integers(0, 5, 40)] * 0.5 + 0.6 * (np.arange(5) == 0)
    assert (own.argmax(1) == 0).all()
    assert (inverted_softmax(own, bank, beta=20).argmax(1).numpy() == np.arange(5)).all()


def test_large_beta_does_not_overflow_and_bad_inputs_are_refused(data):
    got = inverted_softmax(data["test"] * 50, data["qbank"] * 50, beta=20)  # exp(1000) overflows a float64
    assert torch.isfinite(got).all()
    with pytest.raises(EmbeddingError, match="same gallery"):
        inverted_softmax(data["test"], data["qbank"][:, :4])
    with pytest.raises(EmbeddingError, match="NaN"):
        dual_softmax(np.full((2, 2), np.nan))
    with pytest.raises(EmbeddingError, match="non-empty"):
        querybank_norm(np.zeros((0, 3)), data["qbank"][:, :3])
