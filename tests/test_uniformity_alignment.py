"""Uniformity (Eq. 9 / 14), centroid uniformity (Eq. 11) and anchor alignment (Eq. 10) against
independent float64 references: numpy loops and closed-form gradients written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gen_align.objectives.alignment import anchor_alignment
from gen_align.objectives.uniformity import centroid_uniformity, uniformity

KERNELS = ("euclidean", "geodesic")


# ----------------------------------------------------------------------------- numpy references


def unit_np(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sq_dist_np(a: np.ndarray, b: np.ndarray, kernel: str) -> float:
    """δ² between two unit vectors: ‖a − b‖² or arccos(⟨a, b⟩)²."""
    if kernel == "euclidean":
        return float(np.sum((a - b) ** 2))
    return math.acos(float(np.clip(np.dot(a, b), -1.0, 1.0))) ** 2


def kernel_matrix_np(z: np.ndarray, tau: float, kernel: str) -> np.ndarray:
    """K_ij = exp(−δ(z_i, z_j)²/(2τ²)) for i ≠ j (the κ of Eq. 9 / 14), 0 on the diagonal (z already unit)."""
    b = len(z)
    k = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if i != j:
                k[i, j] = math.exp(-sq_dist_np(z[i], z[j], kernel) / (2.0 * tau * tau))
    return k


def uniformity_np(z: np.ndarray, tau: float, kernel: str) -> float:
    """Eq. 9: 1/B Σ_i log( 1/(B−1) Σ_{j≠i} κ(z_i, z_j) )."""
    z = unit_np(z)
    b = len(z)
    k = kernel_matrix_np(z, tau, kernel)
    return float(np.mean([math.log(k[i].sum() / (b - 1)) for i in range(b)]))


def tangent(z: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Row-wise (I − z_k z_kᵀ) g_k: the gradient w.r.t. the raw input at a unit-norm point."""
    return g - np.sum(g * z, axis=1, keepdims=True) * z


def row_softmax_np(z: np.ndarray, tau: float, kernel: str) -> np.ndarray:
    """p_ij = κ_ij / Σ_{l≠i} κ_il (the weights after Eq. 9)."""
    k = kernel_matrix_np(z, tau, kernel)
    return k / k.sum(axis=1, keepdims=True)


def euclidean_grad_closed_form(z: np.ndarray, tau: float) -> np.ndarray:
    """∂U/∂z_k = −1/(Bτ²) Σ_{j≠k} (p_kj + p_jk)(z_k − z_j): row k's own term (the sample-wise gradient after
    Eq. 9, divided by B) plus the terms of the other rows in which z_k is a neighbour."""
    p = row_softmax_np(z, tau, "euclidean")
    b = len(z)
    g = np.zeros_like(z)
    for k in range(b):
        for j in range(b):
            if j != k:
                g[k] += -(p[k, j] + p[j, k]) * (z[k] - z[j]) / (b * tau * tau)
    return g


def geodesic_grad_closed_form(z: np.ndarray, tau: float) -> np.ndarray:
    """Same with δ² = arccos(c)², d δ²/dc = −2θ/sin θ (limit −2 at θ = 0):
    ∂U/∂z_k = 1/(Bτ²) Σ_{j≠k} (p_kj + p_jk) (θ_kj / sin θ_kj) z_j."""
    p = row_softmax_np(z, tau, "geodesic")
    b = len(z)
    g = np.zeros_like(z)
    for k in range(b):
        for j in range(b):
            if j == k:
                continue
            theta = math.acos(float(np.clip(np.dot(z[k], z[j]), -1.0, 1.0)))
            if math.pi - theta < 1e-7:
                continue  # antipodal: the pull is along ±z_k, purely radial (removed by `tangent`)
            ratio = 1.0 if theta < 1e-12 else theta / math.sin(theta)
            g[k] += (p[k, j] + p[j, k]) * ratio * z[j] / (b * tau * tau)
    return g


def random_unit(b: int, d: int, seed: int) -> np.ndarray:
    return unit_np(np.random.default_rng(seed).standard_normal((b, d)))


def uniformity_grad(z: np.ndarray, tau: float, kernel: str) -> tuple[float, np.ndarray]:
    x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    value = uniformity(x, tau=tau, kernel=kernel)
    value.backward()
    return value.item(), x.grad.numpy()


# ----------------------------------------------------------------------------- uniformity: value


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
def test_uniformity_value_matches_numpy_loop(kernel, tau):
    raw = np.random.default_rng(1).standard_normal((7, 5)) * 3.0  # not unit: normalised internally
    got = uniformity(torch.tensor(raw), tau=tau, kernel=kernel)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(uniformity_np(raw, tau, kernel), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_uniformity_accepts_numpy_input(kernel):
    raw = np.random.default_rng(2).standard_normal((4, 3))
    assert uniformity(raw, tau=0.3, kernel=kernel).item() == pytest.approx(uniformity_np(raw, 0.3, kernel), rel=1e-10)


def test_uniformity_two_points_closed_form():
    z = random_unit(2, 4, seed=3)
    tau = 0.2
    d2 = float(np.sum((z[0] - z[1]) ** 2))
    theta = math.acos(float(np.dot(z[0], z[1])))
    assert uniformity(torch.tensor(z), tau=tau).item() == pytest.approx(-d2 / (2 * tau**2), rel=1e-12)
    geodesic = uniformity(torch.tensor(z), tau=tau, kernel="geodesic").item()
    assert geodesic == pytest.approx(-(theta**2) / (2 * tau**2), rel=1e-12)


def test_uniformity_is_scale_invariant_per_row():
    raw = np.random.default_rng(4).standard_normal((5, 3))
    scaled = raw * np.array([[0.1], [2.0], [7.0], [1.0], [1e3]])
    for kernel in KERNELS:
        a = uniformity(torch.tensor(raw), tau=0.1, kernel=kernel).item()
        b = uniformity(torch.tensor(scaled), tau=0.1, kernel=kernel).item()
        assert a == pytest.approx(b, rel=1e-12)


# ----------------------------------------------------------------------------- uniformity: gradient


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_uniformity_euclidean_gradient_equals_closed_form(tau):
    z = random_unit(6, 4, seed=5)
    _, grad = uniformity_grad(z, tau, "euclidean")
    expected = tangent(z, euclidean_grad_closed_form(z, tau))
    np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).max() > 1e-3  # the comparison is not vacuous


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_uniformity_geodesic_gradient_equals_analytic_arccos_derivative(tau):
    z = random_unit(6, 4, seed=6)
    _, grad = uniformity_grad(z, tau, "geodesic")
    expected = tangent(z, geodesic_grad_closed_form(z, tau))
    np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize("kernel", KERNELS)
def test_uniformity_gradient_matches_finite_differences(kernel):
    x = torch.tensor(np.random.default_rng(7).standard_normal((5, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: uniformity(t, tau=0.5, kernel=kernel), (x,), eps=1e-6, atol=1e-6)


def test_geodesic_finite_with_coincident_rows():
    z = random_unit(4, 5, seed=8)
    z[1] = z[0]  # cos = 1 between rows 0 and 1: autograd through arccos would give 0·∞ = NaN
    value, grad = uniformity_grad(z, 0.3, "geodesic")
    assert math.isfinite(value)
    assert value == pytest.approx(uniformity_np(z, 0.3, "geodesic"), rel=1e-10)
    assert np.isfinite(grad).all()
    # The arccos² derivative has the finite limit −2 at θ = 0, so the gradient is the analytic one.
    np.testing.assert_allclose(grad, tangent(z, geodesic_grad_closed_form(z, 0.3)), rtol=1e-6, atol=1e-8)


def test_geodesic_finite_with_antipodal_rows():
    z = random_unit(4, 5, seed=9)
    z[1] = -z[0]  # cos = −1: θ = π, where arccos is not differentiable
    value, grad = uniformity_grad(z, 0.3, "geodesic")
    assert math.isfinite(value)
    assert value == pytest.approx(uniformity_np(z, 0.3, "geodesic"), rel=1e-10)
    assert np.isfinite(grad).all()
    # The antipodal partner pulls along ±z_k only (radial), which the tangent projection removes, so
    # away from that pair the analytic gradient still holds.
    np.testing.assert_allclose(grad, tangent(z, geodesic_grad_closed_form(z, 0.3)), rtol=1e-6, atol=1e-8)


def test_geodesic_antipodal_pair_only():
    z = random_unit(1, 3, seed=10)
    z = np.concatenate([z, -z])
    value, grad = uniformity_grad(z, 0.5, "geodesic")
    assert value == pytest.approx(-(math.pi**2) / (2 * 0.5**2), rel=1e-12)
    # The only direction the partner exerts is radial, so the tangent gradient vanishes.
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, 0.0, atol=1e-9)


def test_euclidean_finite_with_coincident_and_antipodal_rows():
    z = random_unit(5, 4, seed=11)
    z[1] = z[0]
    z[2] = -z[0]
    value, grad = uniformity_grad(z, 0.2, "euclidean")
    assert value == pytest.approx(uniformity_np(z, 0.2, "euclidean"), rel=1e-10)
    np.testing.assert_allclose(grad, tangent(z, euclidean_grad_closed_form(z, 0.2)), rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- centroid uniformity


def centroid_uniformity_np(zs: dict[str, np.ndarray], weights: dict[str, float], tau: float, kernel: str) -> float:
    total = sum(weights.values())
    c = sum((weights[m] / total) * unit_np(z) for m, z in zs.items())
    return uniformity_np(c, tau, kernel)


def three_modalities(b: int = 6, d: int = 4, seed: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((b, d)) * s for m, s in (("image", 1.0), ("text", 3.0), ("audio", 0.5))}


@pytest.mark.parametrize("kernel", KERNELS)
def test_centroid_uniformity_default_weights(kernel):
    zs = three_modalities()
    got = centroid_uniformity({m: torch.tensor(z) for m, z in zs.items()}, tau=0.2, kernel=kernel)
    expected = centroid_uniformity_np(zs, {m: 1.0 for m in zs}, 0.2, kernel)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("weights", [{"image": 5.0, "text": 3.0, "audio": 2.0}, {"image": 0.1, "text": 0.9}])
def test_centroid_uniformity_non_uniform_weights(kernel, weights):
    zs = three_modalities()
    full = {m: weights.get(m, 0.0) for m in zs}  # missing modalities get weight 0
    got = centroid_uniformity({m: torch.tensor(z) for m, z in zs.items()}, weights=weights, tau=0.2, kernel=kernel)
    assert got.item() == pytest.approx(centroid_uniformity_np(zs, full, 0.2, kernel), rel=1e-10)
    uniform = centroid_uniformity_np(zs, {m: 1.0 for m in zs}, 0.2, kernel)
    assert abs(got.item() - uniform) > 1e-4  # the weights actually changed the centroids


def test_centroid_uniformity_single_weighted_modality_is_its_uniformity():
    zs = three_modalities()
    got = centroid_uniformity({m: torch.tensor(z) for m, z in zs.items()}, weights={"text": 1.0}, tau=0.3)
    assert got.item() == pytest.approx(uniformity_np(zs["text"], 0.3, "euclidean"), rel=1e-10)


def test_centroid_uniformity_gradient_matches_finite_differences():
    zs = three_modalities(b=4, d=3)
    xs = [torch.tensor(zs[m], requires_grad=True) for m in ("image", "text", "audio")]

    def f(a, b, c):
        return centroid_uniformity({"image": a, "text": b, "audio": c}, weights={"image": 2, "text": 1, "audio": 1})

    assert torch.autograd.gradcheck(f, tuple(xs), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- anchor alignment


def alignment_np(zs: dict[str, np.ndarray], anchor: str, geometry: str) -> float:
    a = unit_np(zs[anchor])
    terms = []
    for m, z in zs.items():
        if m == anchor:
            continue
        u = unit_np(z)
        terms.append(np.mean([sq_dist_np(u[i], a[i], geometry) for i in range(len(u))]))
    return float(np.mean(terms))


@pytest.mark.parametrize("geometry", KERNELS)
@pytest.mark.parametrize("anchor", ["image", "audio"])
def test_anchor_alignment_value_matches_numpy(geometry, anchor):
    zs = three_modalities(b=5, d=4, seed=13)
    got = anchor_alignment({m: torch.tensor(z) for m, z in zs.items()}, anchor=anchor, geometry=geometry)
    assert got.item() == pytest.approx(alignment_np(zs, anchor, geometry), rel=1e-10)


def test_anchor_alignment_two_modalities_euclidean_is_two_minus_two_cos():
    zs = three_modalities(b=5, d=4, seed=14)
    img, txt = unit_np(zs["image"]), unit_np(zs["text"])
    expected = float(np.mean(2.0 - 2.0 * np.sum(img * txt, axis=1)))
    got = anchor_alignment({"image": torch.tensor(zs["image"]), "text": torch.tensor(zs["text"])})
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_anchor_alignment_zero_when_aligned():
    z = np.random.default_rng(15).standard_normal((4, 3))
    for geometry in KERNELS:
        zd = {"image": torch.tensor(z), "text": torch.tensor(2.5 * z)}
        assert anchor_alignment(zd, geometry=geometry).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("geometry", KERNELS)
def test_anchor_alignment_anchor_gets_no_gradient(geometry):
    zs = three_modalities(b=5, d=4, seed=16)
    xs = {m: torch.tensor(z, requires_grad=True) for m, z in zs.items()}
    anchor_alignment(xs, anchor="image", geometry=geometry).backward()
    g = xs["image"].grad
    assert g is None or bool((g == 0).all())
    for m in ("text", "audio"):
        assert xs[m].grad is not None
        assert torch.isfinite(xs[m].grad).all()
        assert xs[m].grad.abs().max() > 1e-3


def test_anchor_alignment_gradient_closed_form_euclidean():
    """∂/∂ẑ_i^m of 1/(M−1) · 1/B Σ_i (2 − 2⟨ẑ_i^m, ẑ_i^a⟩) = −2 ẑ_i^a / ((M−1) B), then tangent projection."""
    zs = {m: random_unit(5, 4, seed=s) for m, s in (("image", 17), ("text", 18), ("audio", 19))}
    xs = {m: torch.tensor(z, requires_grad=True) for m, z in zs.items()}
    anchor_alignment(xs, anchor="image").backward()
    for m in ("text", "audio"):
        expected = tangent(zs[m], -2.0 * zs["image"] / (2 * 5))
        np.testing.assert_allclose(xs[m].grad.numpy(), expected, rtol=1e-10, atol=1e-12)
