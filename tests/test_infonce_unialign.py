"""Multi-modal InfoNCE (Eq. 1) against torch's cross-entropy on independently built similarity matrices,
and UniAlign (Eq. 13) against its composition written here in numpy float64, plus the anchor's gradient."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gen_align.objectives.infonce import infonce_loss
from gen_align.objectives.unialign import unialign_loss, unialign_terms
from gen_align.objectives.uniformity import centroid_uniformity

MODS = ("image", "text", "audio")


def unit_np(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch(b: int = 6, d: int = 5, seed: int = 0, mods: tuple[str, ...] = MODS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((b, d)) * (1 + i) for i, m in enumerate(mods)}


def tensors(zs: dict[str, np.ndarray], grad: bool = False) -> dict[str, torch.Tensor]:
    return {m: torch.tensor(z, dtype=torch.float64, requires_grad=grad) for m, z in zs.items()}


def row_ce(zq: np.ndarray, zk: np.ndarray, tau: float) -> float:
    """Mean row-wise cross-entropy of S = ẑ_q ẑ_kᵀ / τ with targets on the diagonal (torch reference)."""
    s = torch.tensor(unit_np(zq) @ unit_np(zk).T / tau)
    return F.cross_entropy(s, torch.arange(len(zq))).item()


# ----------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_infonce_two_modalities_is_symmetric_clip_loss(tau):
    zs = batch(mods=("image", "text"), seed=1)
    s = torch.tensor(unit_np(zs["image"]) @ unit_np(zs["text"]).T / tau)
    target = torch.arange(len(s))
    expected = 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))
    got = infonce_loss(tensors(zs), tau=tau, reduction="mean")
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    # Eq. 1 as printed sums over the B samples: the default is B times CLIP's per-sample mean
    assert infonce_loss(tensors(zs), tau=tau).item() == pytest.approx(len(s) * expected.item(), rel=1e-10)


def test_infonce_manual_log_softmax_two_modalities():
    """The same value from an explicit numpy log-sum-exp, not from torch."""
    zs = batch(mods=("a", "b"), b=4, seed=2)
    tau = 0.2
    s = unit_np(zs["a"]) @ unit_np(zs["b"]).T / tau

    def ce(m: np.ndarray) -> float:
        return float(np.mean([math.log(np.exp(m[i]).sum()) - m[i, i] for i in range(len(m))]))

    got = infonce_loss(tensors(zs), tau=tau, reduction="mean").item()
    assert got == pytest.approx(0.5 * (ce(s) + ce(s.T)), rel=1e-10)


def test_infonce_three_modalities_is_mean_over_ordered_pairs():
    zs = batch(seed=3)
    tau = 0.1
    pairs = list(itertools.permutations(MODS, 2))
    assert len(pairs) == 6
    expected = np.mean([row_ce(zs[m], zs[n], tau) for m, n in pairs])
    assert infonce_loss(tensors(zs), tau=tau, reduction="mean").item() == pytest.approx(expected, rel=1e-10)


def test_infonce_custom_weights_missing_pairs_are_zero_and_normalised():
    zs = batch(seed=4)
    tau = 0.1
    weights = {("text", "image"): 2.0, ("audio", "image"): 1.0, ("image", "audio"): 1.0}
    expected = sum(w * row_ce(zs[m], zs[n], tau) for (m, n), w in weights.items()) / 4.0
    got = infonce_loss(tensors(zs), weights=weights, tau=tau, reduction="mean").item()
    assert got == pytest.approx(expected, rel=1e-10)
    spelled = {f"{m}->{n}": w for (m, n), w in weights.items()}  # the config spelling of the pair keys
    assert infonce_loss(tensors(zs), weights=spelled, tau=tau, reduction="mean").item() == pytest.approx(got, rel=1e-14)


def test_infonce_single_direction_weight():
    zs = batch(seed=5)
    got = infonce_loss(tensors(zs), weights={("audio", "text"): 0.3}, tau=0.5, reduction="mean")
    assert got.item() == pytest.approx(row_ce(zs["audio"], zs["text"], 0.5), rel=1e-10)


def test_infonce_weights_scale_invariant():
    zs = batch(seed=6)
    w = {("text", "image"): 1.0, ("image", "text"): 3.0}
    a = infonce_loss(tensors(zs), weights=w).item()
    b = infonce_loss(tensors(zs), weights={k: 10 * v for k, v in w.items()}).item()
    assert a == pytest.approx(b, rel=1e-12)


def test_infonce_gradient_matches_finite_differences():
    zs = batch(b=3, d=3, seed=7)
    xs = tuple(torch.tensor(zs[m], requires_grad=True) for m in MODS)
    assert torch.autograd.gradcheck(
        lambda a, b, c: infonce_loss({"image": a, "text": b, "audio": c}, tau=0.3), xs, eps=1e-6, atol=1e-6
    )


# ----------------------------------------------------------------------------- UniAlign: numpy composition


def sq_dist(c: np.ndarray, geometry: str) -> np.ndarray:
    return 2.0 - 2.0 * c if geometry == "euclidean" else np.arccos(np.clip(c, -1.0, 1.0)) ** 2


def uniformity_np(z: np.ndarray, tau: float, geometry: str) -> float:
    """Eq. 9 / 14: 1/B Σ_i log( 1/(B−1) Σ_{j≠i} exp(−δ²/(2τ²)) )."""
    u = unit_np(z)
    b = len(u)
    rows = [
        sum(math.exp(-float(sq_dist(np.dot(u[i], u[j]), geometry)) / (2 * tau * tau)) for j in range(b) if j != i)
        for i in range(b)
    ]
    return float(np.mean([math.log(r / (b - 1)) for r in rows]))


def alignment_np(zs: dict[str, np.ndarray], anchor: str, geometry: str) -> float:
    a = unit_np(zs[anchor])
    return float(
        np.mean([np.mean(sq_dist(np.sum(unit_np(z) * a, axis=1), geometry)) for m, z in zs.items() if m != anchor])
    )


def volume_np(zs: dict[str, np.ndarray]) -> float:
    units = [unit_np(z) for z in zs.values()]
    vols = []
    for i in range(len(units[0])):
        m = np.stack([u[i] for u in units])
        vols.append(math.sqrt(max(np.linalg.det(m @ m.T), 0.0)))
    return float(np.mean(vols))


def centroid_uniformity_np(zs: dict[str, np.ndarray], tau: float, geometry: str) -> float:
    c = sum(unit_np(z) for z in zs.values()) / len(zs)
    return uniformity_np(c, tau, geometry)


def unialign_np(zs, anchor, lu, la, lv, tau, tau_ctr, geometry) -> float:  # noqa: ANN001
    tau_ctr = tau if tau_ctr is None else tau_ctr
    uni = np.sum([uniformity_np(z, tau, geometry) for z in zs.values()])  # Eq. 13 sums over the modalities
    return (
        lu * uni
        + la * alignment_np(zs, anchor, geometry)
        + lv * (volume_np(zs) + centroid_uniformity_np(zs, tau_ctr, geometry))
    )


@pytest.mark.parametrize("geometry", ["euclidean", "geodesic"])
@pytest.mark.parametrize(
    ("anchor", "lu", "la", "lv", "tau", "tau_ctr"),
    [
        ("image", 1.0, 1.0, 1.0, 0.07, None),
        ("image", 0.7, 1.3, 0.4, 0.2, 0.5),
        ("text", 0.0, 2.0, 0.5, 0.3, 0.1),
        ("audio", 1.5, 0.0, 0.0, 0.3, None),
        ("image", 0.0, 0.0, 1.0, 0.3, 0.05),
    ],
)
def test_unialign_equals_numpy_composition(geometry, anchor, lu, la, lv, tau, tau_ctr):
    zs = batch(b=5, d=4, seed=8)
    got = unialign_loss(
        tensors(zs),
        anchor=anchor,
        lambda_uni=lu,
        lambda_align=la,
        lambda_vol=lv,
        tau=tau,
        tau_ctr=tau_ctr,
        geometry=geometry,
    )
    assert got.ndim == 0
    expected = unialign_np(zs, anchor, lu, la, lv, tau, tau_ctr, geometry)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_unialign_two_modalities():
    zs = batch(b=4, d=3, seed=9, mods=("image", "text"))
    got = unialign_loss(tensors(zs), tau=0.25)
    assert got.item() == pytest.approx(unialign_np(zs, "image", 1, 1, 0.1, 0.25, None, "euclidean"), rel=1e-9)


@pytest.mark.parametrize("geometry", ["euclidean", "geodesic"])
def test_unialign_terms_match_numpy(geometry):
    zs = batch(b=5, d=4, seed=10)
    terms = unialign_terms(tensors(zs), anchor="text", tau=0.2, tau_ctr=0.4, geometry=geometry)
    per_modality = {f"uniformity/{m}" for m in zs}
    assert set(terms) == {"uniformity", "alignment", "volume", "centroid_uniformity", *per_modality}
    expected = {
        "uniformity": np.sum([uniformity_np(z, 0.2, geometry) for z in zs.values()]),
        **{f"uniformity/{m}": uniformity_np(z, 0.2, geometry) for m, z in zs.items()},
        "alignment": alignment_np(zs, "text", geometry),
        "volume": volume_np(zs),
        "centroid_uniformity": centroid_uniformity_np(zs, 0.4, geometry),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-9), name
    only_align = unialign_terms(tensors(zs), anchor="text", lambda_uni=0, lambda_vol=0, geometry=geometry)
    assert set(only_align) == {"alignment"}


# ----------------------------------------------------------------------------- UniAlign: the anchor's gradient


@pytest.mark.parametrize("geometry", ["euclidean", "geodesic"])
def test_unialign_anchor_gets_no_gradient_from_alignment(geometry):
    xs = tensors(batch(b=5, d=4, seed=11), grad=True)
    unialign_loss(xs, anchor="image", lambda_uni=0.0, lambda_align=1.0, lambda_vol=0.0, geometry=geometry).backward()
    g = xs["image"].grad
    assert g is None or bool((g == 0).all())
    for m in ("text", "audio"):
        assert xs[m].grad.abs().max() > 1e-3


def centroid_uniformity_torch_reference(zs: dict[str, torch.Tensor], tau: float) -> torch.Tensor:
    """Eq. 11 written directly in torch (uniform weights, Euclidean), independent of the package."""
    units = [z / z.norm(dim=1, keepdim=True) for z in zs.values()]
    c = sum(units) / len(units)
    c = c / c.norm(dim=1, keepdim=True)
    b = len(c)
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    off = ~torch.eye(b, dtype=torch.bool)
    kernel = torch.exp(-d2 / (2 * tau * tau)) * off
    return torch.log(kernel.sum(dim=1) / (b - 1)).mean()


@pytest.mark.parametrize("geometry", ["euclidean", "geodesic"])
def test_unialign_anchor_gradient_comes_only_from_centroid_uniformity(geometry):
    zs = batch(b=5, d=4, seed=12)
    lv, tau, tau_ctr = 0.6, 0.2, 0.35
    xs = tensors(zs, grad=True)
    unialign_loss(
        xs,
        anchor="image",
        lambda_uni=0.0,
        lambda_align=1.0,
        lambda_vol=lv,
        tau=tau,
        tau_ctr=tau_ctr,
        geometry=geometry,
    ).backward()
    ref = tensors(zs, grad=True)
    (lv * centroid_uniformity(ref, tau=tau_ctr, kernel=geometry)).backward()
    assert xs["image"].grad is not None and xs["image"].grad.abs().max() > 1e-4
    torch.testing.assert_close(xs["image"].grad, ref["image"].grad, rtol=1e-9, atol=1e-12)
    # Non-anchor modalities do get the volume/alignment gradient on top, so they differ.
    assert (xs["text"].grad - ref["text"].grad).abs().max() > 1e-4
    if geometry == "euclidean":
        ind = tensors(zs, grad=True)
        (lv * centroid_uniformity_torch_reference(ind, tau_ctr)).backward()
        torch.testing.assert_close(xs["image"].grad, ind["image"].grad, rtol=1e-9, atol=1e-12)


def test_unialign_anchor_gradient_with_uniformity_is_its_own_uniformity():
    """λ_vol = 0: the anchor's gradient is exactly λ_uni · ∂U(Z_anchor) (Eq. 13 sums U over the modalities)."""
    zs = batch(b=5, d=4, seed=13)
    xs = tensors(zs, grad=True)
    unialign_loss(xs, anchor="image", lambda_uni=0.8, lambda_align=1.0, lambda_vol=0.0, tau=0.3).backward()
    a = torch.tensor(zs["image"], requires_grad=True)
    u = a / a.norm(dim=1, keepdim=True)
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    off = ~torch.eye(5, dtype=torch.bool)
    (0.8 * torch.log((torch.exp(-d2 / (2 * 0.3**2)) * off).sum(dim=1) / 4).mean()).backward()
    torch.testing.assert_close(xs["image"].grad, a.grad, rtol=1e-9, atol=1e-12)


def test_unialign_gradient_matches_finite_differences():
    """For the non-anchor modalities the gradient is the true derivative of the loss (the anchor is held
    fixed here: its stop-gradient makes autograd differ from finite differences on purpose)."""
    zs = batch(b=3, d=3, seed=14)
    anchor = torch.tensor(zs["image"])
    xs = (torch.tensor(zs["text"], requires_grad=True), torch.tensor(zs["audio"], requires_grad=True))

    def f(b, c):
        return unialign_loss({"image": anchor, "text": b, "audio": c}, tau=0.5, lambda_vol=0.7)

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6)
