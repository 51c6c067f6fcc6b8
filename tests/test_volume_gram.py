"""Gram volume (Eq. 12) and the GRAM baseline (similarity matrix, volume-contrastive loss) against
np.linalg.det on explicit float64 Gram matrices and torch's cross-entropy on an independent matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gen_align.objectives.gram import gram_loss, gram_similarity
from gen_align.objectives.volume import gram_volume


def unit_np(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def volume_np(vectors: list[np.ndarray]) -> float:
    """sqrt(det G) of the Gram matrix of the normalised vectors (clipped at 0 for rounding)."""
    m = np.stack([unit_np(v) for v in vectors])
    return math.sqrt(max(np.linalg.det(m @ m.T), 0.0))


def batch_volume_np(zs: list[np.ndarray]) -> np.ndarray:
    return np.array([volume_np([z[i] for z in zs]) for i in range(len(zs[0]))])


def rand(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def t64(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ----------------------------------------------------------------------------- gram_volume


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gram_volume_equals_sqrt_det(k):
    zs = [rand((6, 5), seed=10 * k + i) * (i + 1) for i in range(k)]
    got = gram_volume(*[t64(z) for z in zs])
    assert got.shape == (6,)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), batch_volume_np(zs), rtol=1e-10, atol=1e-12)


def test_gram_volume_two_vectors_is_sine_of_angle():
    a, b = rand((5, 3), 1), rand((5, 3), 2)
    cos = np.sum(unit_np(a) * unit_np(b), axis=1)
    np.testing.assert_allclose(gram_volume(t64(a), t64(b)).numpy(), np.sqrt(1 - cos**2), rtol=1e-10)


def test_gram_volume_accepts_numpy_arrays():
    a, b, c = rand((3, 4), 3), rand((3, 4), 4), rand((3, 4), 5)
    np.testing.assert_allclose(gram_volume(a, b, c).numpy(), batch_volume_np([a, b, c]), rtol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda z: [z, -z],
        lambda z: [z, 3.0 * z],
        lambda z: [z, z.copy()],
        lambda z: [z, -z, 2.5 * z],
        lambda z: [0.1 * z, z, -4.0 * z, z],
    ],
    ids=["negative", "scaled", "copy", "k3-mixed", "k4-mixed"],
)
def test_gram_volume_zero_on_collinear_sets(make):
    z = rand((4, 5), 6)
    got = gram_volume(*[t64(v) for v in make(z)])
    np.testing.assert_allclose(got.numpy(), 0.0, atol=1e-7)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gram_volume_one_on_orthonormal_sets(k):
    rng = np.random.default_rng(7)
    b, d = 5, 6
    rows = []
    for _ in range(b):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        rows.append(q[:, :k].T * rng.uniform(0.5, 3.0, size=(k, 1)))  # orthogonal, arbitrary lengths
    zs = [np.stack([r[m] for r in rows]) for m in range(k)]
    np.testing.assert_allclose(gram_volume(*[t64(z) for z in zs]).numpy(), 1.0, rtol=1e-10)


def test_gram_volume_lies_in_unit_interval():
    zs = [rand((20, 3), 30 + i) for i in range(3)]
    v = gram_volume(*[t64(z) for z in zs])
    assert bool(((v >= 0) & (v <= 1 + 1e-12)).all())


@pytest.mark.parametrize("k", [2, 3])
def test_gram_volume_gradient_finite_when_two_coincide(k):
    base = [rand((4, 5), 40 + i) for i in range(k)]
    base[1] = base[0].copy()
    xs = [t64(z, grad=True) for z in base]
    v = gram_volume(*xs)
    np.testing.assert_allclose(v.detach().numpy(), 0.0, atol=1e-7)
    v.sum().backward()
    for x in xs:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gram_volume_gradient_finite_when_all_coincide(k):
    z = rand((4, 5), 50)
    xs = [t64(z * (i + 1), grad=True) for i in range(k)]
    v = gram_volume(*xs)
    np.testing.assert_allclose(v.detach().numpy(), 0.0, atol=1e-7)
    v.sum().backward()
    for x in xs:
        assert torch.isfinite(x.grad).all()


def test_gram_volume_gradient_finite_partial_degeneracy_float32():
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    c = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    gram_volume(a, b, c).sum().backward()
    for x in (a, b, c):
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gram_volume_gradcheck_non_degenerate(k):
    xs = tuple(t64(rand((3, 5), 60 + i), grad=True) for i in range(k))
    assert torch.autograd.gradcheck(lambda *zs: gram_volume(*zs), xs, eps=1e-6, atol=1e-6)


def test_gram_volume_two_vector_gradient_closed_form():
    """Vol = sqrt(1 − c²) with c = ⟨â, b̂⟩: ∂Vol/∂â = −c b̂ / Vol, projected on the tangent space of â
    (and divided by ‖a‖ for the raw input)."""
    a, b = rand((4, 3), 70) * 2.0, rand((4, 3), 71)
    xa, xb = t64(a, grad=True), t64(b, grad=True)
    gram_volume(xa, xb).sum().backward()
    ua, ub = unit_np(a), unit_np(b)
    c = np.sum(ua * ub, axis=1, keepdims=True)
    g = -c * ub / np.sqrt(1 - c**2)
    expected = (g - np.sum(g * ua, axis=1, keepdims=True) * ua) / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(xa.grad.numpy(), expected, rtol=1e-9)


# ----------------------------------------------------------------------------- gram_similarity


def similarity_np(text: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(text), len(others[0])))
    for i in range(len(text)):
        for j in range(len(others[0])):
            out[i, j] = -volume_np([text[i]] + [o[j] for o in others])
    return out


@pytest.mark.parametrize("n_others", [1, 2, 3])
def test_gram_similarity_matches_numpy_loops(n_others):
    text = rand((4, 5), 80) * 3.0
    others = [rand((6, 5), 81 + i) for i in range(n_others)]  # B_text ≠ B_tuple is allowed
    got = gram_similarity(t64(text), [t64(o) for o in others])
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got.numpy(), similarity_np(text, others), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 100])
def test_gram_similarity_chunked_is_identical(chunk_size):
    text = rand((5, 4), 90)
    others = [rand((5, 4), 91), rand((5, 4), 92)]
    expected = similarity_np(text, others)
    got = gram_similarity(t64(text), [t64(o) for o in others], chunk_size=chunk_size)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_gram_similarity_diagonal_is_best_for_perfect_tuples():
    base = rand((5, 6), 93)
    text = base + 0.01 * rand((5, 6), 94)
    others = [base + 0.01 * rand((5, 6), 95), base + 0.01 * rand((5, 6), 96)]
    s = gram_similarity(t64(text), [t64(o) for o in others]).numpy()
    assert (s.argmax(axis=1) == np.arange(5)).all()


# ----------------------------------------------------------------------------- gram_loss


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("n_others", [1, 2])
def test_gram_loss_is_symmetric_cross_entropy_of_negative_volumes(tau, n_others):
    b = 5
    text = rand((b, 4), 100)
    others = [rand((b, 4), 101 + i) for i in range(n_others)]
    logits = torch.tensor(similarity_np(text, others) / tau)  # L = −Vol / τ, independent of the code
    target = torch.arange(b)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    got = gram_loss(t64(text), [t64(o) for o in others], tau=tau, label_smoothing=0.0)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    # GRAM as published smooths the labels by 0.1 (the default): (1 − ε) · CE + ε · mean_k(−log p_ik) per row
    log_p = logits.log_softmax(dim=1), logits.T.log_softmax(dim=1)
    smoothed = [(-(0.9 * lp.diagonal()) - 0.1 * lp.mean(dim=1)).mean() for lp in log_p]
    published = gram_loss(t64(text), [t64(o) for o in others], tau=tau)
    assert published.item() == pytest.approx(0.5 * (smoothed[0] + smoothed[1]).item(), rel=1e-10)


def test_gram_loss_gradient_finite_and_matches_finite_differences():
    xs = (t64(rand((3, 4), 110), grad=True), t64(rand((3, 4), 111), grad=True), t64(rand((3, 4), 112), grad=True))
    assert torch.autograd.gradcheck(lambda t, a, b: gram_loss(t, [a, b], tau=0.3), xs, eps=1e-6, atol=1e-6)


def test_gram_loss_gradient_finite_with_degenerate_tuples():
    z = rand((4, 5), 120)
    text = t64(z, grad=True)
    a = t64(z.copy(), grad=True)  # the matching text/tuple vectors coincide: Vol_ii = 0
    b = t64(z.copy(), grad=True)
    loss = gram_loss(text, [a, b], tau=0.1)
    loss.backward()
    assert math.isfinite(loss.item())
    for x in (text, a, b):
        assert torch.isfinite(x.grad).all()
