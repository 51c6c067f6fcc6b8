"""Diagnostics against independent references: float64 loops with np.exp, scipy and sklearn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import cosine_similarity

from gen_align.diagnostics import (
    conflict_metrics,
    degeneration_score,
    holder_divergence,
    mean_sim_at_k,
    mmd,
    modality_gap,
)
from gen_align.errors import ConfigError, EmbeddingError


def normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gaussians(rng, n, d, mean, scale=1.0):
    return np.asarray(mean) + scale * rng.standard_normal((n, d))


# ---------------------------------------------------------------- Hölder divergence (Eqs. 21–24)


def holder_reference(zs, tau, loo, anchor_average, anchor=0, log_shift=0.0):
    """Eqs. 22–24 with plain loops and np.exp, κ = exp(−‖x − y‖²/(2τ²)) (Eq. 21 without its constant);
    kernels are multiplied by exp(log_shift), which cancels."""
    zs = [normalize(z) for z in zs]
    M = len(zs)

    def kde(m, x, skip=None):
        total, count = 0.0, 0
        for j, y in enumerate(zs[m]):
            if j != skip:
                total += np.exp(-np.sum((x - y) ** 2) / (2 * tau**2) + log_shift)
                count += 1
        return total / count

    C = []
    for a in range(M):
        values = []
        for x in zs[a]:
            prod = 1.0
            for m in range(M):
                if m != a:
                    prod *= kde(m, x)
            values.append(prod)
        C.append(np.mean(values))
    S = []
    for m in range(M):
        S.append(np.mean([kde(m, x, skip=i if loo else None) ** (M - 1) for i, x in enumerate(zs[m])]))
    c_hat = np.mean(C) if anchor_average else C[anchor]
    with np.errstate(divide="ignore"):
        return -np.log(c_hat) + np.mean(np.log(S))


@pytest.mark.parametrize("loo, anchor_average", list(itertools.product([True, False], repeat=2)))
def test_holder_matches_bruteforce(loo, anchor_average):
    # τ = 0.3: 2τ² = 0.18 ≠ τ, so the paper's kernel exp(−δ²/(2τ²)) is told apart from exp(−δ²/τ)
    # (at τ = 0.5 the two coincide).
    tau = 0.3
    rng = np.random.default_rng(0)
    zs = [gaussians(rng, n, 4, [1.0 + 0.3 * k, 0.5, 0.0, 0.0]) for k, n in enumerate([6, 7, 8])]
    z_dict = dict(zip(["image", "text", "audio"], zs, strict=True))
    for anchor_idx, anchor in enumerate(["image", "text", "audio"]):
        kwargs = {} if anchor_average else {"anchor": anchor}
        got = holder_divergence(z_dict, tau=tau, loo=loo, anchor_average=anchor_average, **kwargs)
        want = holder_reference(zs, tau, loo, anchor_average, anchor=anchor_idx)
        assert got.dim() == 0
        assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-10)
        if anchor_average:
            break
    if not anchor_average:  # the default anchor is the first key
        got = holder_divergence(z_dict, tau=tau, loo=loo, anchor_average=False)
        assert float(got) == pytest.approx(holder_reference(zs, tau, loo, False, anchor=0), rel=1e-9)


def test_holder_defaults_are_eq24_plug_in_at_first_key():
    # Defaults: no leave-one-out, no anchor averaging, anchor = the first key of the dict (Eq. 22–24 as printed).
    rng = np.random.default_rng(16)
    zs = [gaussians(rng, n, 3, [0.5 * k, 1.0, 0.0]) for k, n in enumerate([5, 9, 6])]
    z_dict = dict(zip(["audio", "image", "text"], zs, strict=True))
    want = holder_reference(zs, 0.2, loo=False, anchor_average=False, anchor=0)
    assert float(holder_divergence(z_dict, tau=0.2)) == pytest.approx(want, rel=1e-9)
    assert float(holder_divergence(z_dict, tau=0.2, anchor="audio")) == pytest.approx(want, rel=1e-9)


def test_holder_near_zero_for_one_distribution():
    d = 16
    mean = np.zeros(d)
    mean[0] = 2.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        z = {"a": gaussians(rng, 1000, d, mean), "b": gaussians(rng, 1000, d, mean)}
        # the leave-one-out estimator is nearly unbiased here: measured |D| < 0.002 on seeds 0..4
        assert abs(float(holder_divergence(z, tau=0.5, loo=True))) < 0.01
        # the plug-in default (Eq. 22 keeps k = i, whose kernel is 1) is biased upwards: measured 0.014–0.017
        assert 0.0 < float(holder_divergence(z, tau=0.5)) < 0.03


def test_holder_grows_with_mean_shift():
    d = 16
    base = np.zeros(d)
    base[0] = 2.0
    values, values_loo = [], []
    for angle in [0.0, 0.25, 0.5, 1.0, 2.0]:
        rng = np.random.default_rng(1)
        shifted = np.zeros(d)
        shifted[:2] = 2.0 * np.cos(angle), 2.0 * np.sin(angle)
        z = {"a": gaussians(rng, 500, d, base), "b": gaussians(rng, 500, d, shifted)}
        values.append(float(holder_divergence(z, tau=0.5)))
        values_loo.append(float(holder_divergence(z, tau=0.5, loo=True)))
    # measured: plug-in 0.027, 0.051, 0.117, 0.366, 1.109; leave-one-out −0.003, 0.020, 0.086, 0.335, 1.078
    assert abs(values_loo[0]) < 0.01
    assert 0.0 < values[0] < 0.05  # the plug-in bias at N = 500
    for series in (values, values_loo):
        assert all(later > earlier for earlier, later in itertools.pairwise(series)), series
        assert series[-1] > 0.5


def test_holder_log_domain_where_naive_underflows():
    # M = 5 modalities around the vertices of a simplex (pairwise cosine −1/4), d = 1024, τ = 0.07.
    rng = np.random.default_rng(2)
    M, n, d, tau = 5, 24, 1024, 0.07
    vertices = normalize(np.eye(M) - 1.0 / M)
    centres = np.zeros((M, d))
    centres[:, :M] = vertices
    zs = [normalize(centres[m] + rng.standard_normal((n, d)) / math.sqrt(d)) for m in range(M)]
    # The naive formula: float32 cross-modal kernels are exactly 0 (log κ ≈ −211 … −246), and even in
    # float64 every product of the M − 1 cross-modal KDEs underflows, so −log Ĉ = inf.
    log_k = -np.sum((zs[0][:, None] - zs[1][None]) ** 2, axis=-1) / (2 * tau**2)
    assert np.all(np.exp(log_k.astype(np.float32)) == 0.0)
    for loo, anchor_average in itertools.product([False, True], repeat=2):
        assert np.isinf(holder_reference(zs, tau, loo=loo, anchor_average=anchor_average))
    z = {f"m{m}": torch.tensor(zs[m], requires_grad=True) for m in range(M)}
    got = holder_divergence(z, tau=tau)
    assert torch.isfinite(got) and float(got.detach()) > 0
    # The kernel constant cancels: a float64 loop with kernels rescaled by e^160 is the exact reference.
    want = holder_reference(zs, tau, False, False, log_shift=160.0)
    assert float(got.detach()) == pytest.approx(want, rel=1e-9)
    got.backward()
    assert all(torch.isfinite(v.grad).all() for v in z.values())
    # the appendix options stay finite and exact too
    both = holder_divergence({k: v.detach() for k, v in z.items()}, tau=tau, loo=True, anchor_average=True)
    assert float(both) == pytest.approx(holder_reference(zs, tau, True, True, log_shift=160.0), rel=1e-9)
    # float32 input also stays finite (computed in float64 after normalisation, returned as float32)
    got32 = holder_divergence({k: v.detach().float() for k, v in z.items()}, tau=tau)
    assert got32.dtype == torch.float32 and float(got32) == pytest.approx(want, rel=1e-4)


def test_holder_gradient_finite_and_nonzero():
    rng = np.random.default_rng(3)
    z = {k: torch.tensor(rng.standard_normal((32, 8)), requires_grad=True) for k in ("image", "audio")}
    holder_divergence(z, tau=0.07).backward()
    for v in z.values():
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_holder_bad_inputs():
    rng = np.random.default_rng(4)
    good = rng.standard_normal((5, 4))
    nan = good.copy()
    nan[2] = np.nan
    with pytest.raises(EmbeddingError, match="NaN/inf or all zero"):
        holder_divergence({"a": good, "b": nan})
    with pytest.raises(EmbeddingError, match=r"expected shape \(B, d\)"):
        holder_divergence({"a": good, "b": good[None]})
    with pytest.raises(EmbeddingError, match="share the embedding dimension"):
        holder_divergence({"a": good, "b": good[:, :3]})
    with pytest.raises(EmbeddingError, match="at least 2 items"):
        holder_divergence({"a": good, "b": good[:1]}, loo=True)  # leave-one-out needs another sample
    holder_divergence({"a": good, "b": good[:1]})  # one sample is fine without leave-one-out (the default)
    with pytest.raises(EmbeddingError, match="at least 2"):
        holder_divergence({"a": good})
    for tau in (0.0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ConfigError, match="tau must be a positive finite number"):
            holder_divergence({"a": good, "b": good}, tau=tau)
    with pytest.raises(ConfigError, match="not in the batch"):
        holder_divergence({"a": good, "b": good}, anchor="image")
    with pytest.raises(ConfigError, match="anchor_average=False"):
        holder_divergence({"a": good, "b": good}, anchor="a", anchor_average=True)


# ---------------------------------------------------------------- conflict metrics ζ, χ (Eq. 4), Corollary 2 (Eq. 7)

CONFLICT_KEYS = {"zeta", "chi", "chi_bound", "mu_bar"}


def conflict_reference(z, anchor, tau, weights=None):
    """Eq. 3–4 and Eq. 7 row by row with plain loops: V_i = Σ_{n≠a} (w_n/τ) z_i^n,
    Φ_i = Σ_{n≠a} (w_n/τ) Σ_k softmax_k(⟨z_i^a, z_k^n⟩/τ) z_k^n."""
    z = {k: normalize(v) for k, v in z.items()}
    others = [k for k in z if k != anchor]
    w = {n: 1.0 if weights is None else float(weights.get(n, 0.0)) for n in others}
    a = z[anchor]
    B, d = a.shape
    total = sum(w[n] / tau for n in others)
    cosines, chis = [], []
    for i in range(B):
        pull, push = np.zeros(d), np.zeros(d)
        for n in others:
            pull += (w[n] / tau) * z[n][i]
            logits = np.array([a[i] @ z[n][k] / tau for k in range(B)])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            for k in range(B):
                push += (w[n] / tau) * p[k] * z[n][k]
        if np.linalg.norm(pull) > 0 and np.linalg.norm(push) > 0:
            cosines.append(pull @ push / (np.linalg.norm(pull) * np.linalg.norm(push)))
        chis.append(1.0 - np.linalg.norm(pull) / total)
    M = len(z)
    if M == 2:
        mu_bar, chi_bound = float("nan"), 0.0
    else:
        mu_bar = np.mean([z[m][i] @ z[n][i] for i in range(B) for m in others for n in others if m != n])
        chi_bound = 1.0 - np.sqrt((1.0 + (M - 2) * mu_bar) / (M - 1))
    return {"zeta": np.mean(cosines), "chi": np.mean(chis), "chi_bound": chi_bound, "mu_bar": mu_bar}


def assert_conflicts_match(got, want, rel=1e-10):
    assert set(got) == CONFLICT_KEYS
    for key in CONFLICT_KEYS:
        if np.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12), key


def shared_latent(rng, B, d, M, noise):
    latent = rng.standard_normal((B, d))
    return [latent + noise * rng.standard_normal((B, d)) for _ in range(M)]


def equiangular_rows(rng, B, d, k, mu):
    """k unit positives per row with ⟨z_i^m, z_i^n⟩ = μ exactly for every row and pair (u_n = √μ e_0 +
    √(1−μ) e_n, coordinates permuted per row): μ̄ = μ and ‖V_i‖ is the same for every row."""
    base = np.zeros((k, d))
    base[:, 0] = np.sqrt(mu)
    base[np.arange(k), np.arange(1, k + 1)] = np.sqrt(1.0 - mu)
    perms = [rng.permutation(d) for _ in range(B)]
    return [np.stack([base[n][perm] for perm in perms]) for n in range(k)]


def test_conflict_matches_bruteforce():
    rng = np.random.default_rng(5)
    views = shared_latent(rng, 12, 6, 4, noise=0.7)
    z = {"image": views[0], "text": views[1], "audio": torch.tensor(views[2]), "video": views[3]}
    z_np = {k: np.asarray(v) for k, v in z.items()}
    for anchor in ("image", "text"):
        assert_conflicts_match(conflict_metrics(z, anchor=anchor, tau=0.2), conflict_reference(z_np, anchor, 0.2))
    # default anchor "image", τ = 0.07
    assert_conflicts_match(conflict_metrics(z), conflict_reference(z_np, "image", 0.07))
    # pair weights w_an (a zero weight drops that positive from V and Φ; μ̄ still counts every non-anchor pair)
    weights = {"text": 2.0, "audio": 0.5, "video": 0.0}
    got = conflict_metrics(z, anchor="image", tau=0.2, pair_weights=weights)
    assert_conflicts_match(got, conflict_reference(z_np, "image", 0.2, weights))
    partial = conflict_metrics(z, anchor="image", tau=0.2, pair_weights={"text": 1.0})  # missing keys weigh 0
    assert_conflicts_match(partial, conflict_reference(z_np, "image", 0.2, {"text": 1.0}))
    assert partial["chi"] == pytest.approx(0.0, abs=1e-12)  # one positive left: no cancellation
    # M = 2: μ̄ has no pair (NaN), the bound is 0
    pair = {"image": z_np["image"], "text": z_np["text"]}
    assert_conflicts_match(conflict_metrics(pair, tau=0.2), conflict_reference(pair, "image", 0.2))


def test_corollary2_bound():
    rng = np.random.default_rng(6)
    B, d, M = 256, 16, 5
    positives = [normalize(v) for v in shared_latent(rng, B, d, M - 1, noise=0.8)]
    keys = ["text", "audio", "video", "depth"]
    pull = np.sum(positives, axis=0)  # V_i with w_n/τ = 1 (χ does not depend on the common scale w/τ)
    pairs = [(p, q) for p in range(M - 1) for q in range(M - 1) if p != q]
    mu_bar = np.mean([positives[p][i] @ positives[q][i] for i in range(B) for p, q in pairs])
    # On one batch, mean_i ‖V_i‖² = (M − 1)(1 + (M − 2) μ̄) exactly, so Jensen gives mean χ ≥ chi_bound exactly.
    assert np.mean(np.sum(pull**2, axis=1)) == pytest.approx((M - 1) * (1 + (M - 2) * mu_bar), rel=1e-12)
    closed_form = 1.0 - np.sqrt((1 + (M - 2) * mu_bar) / (M - 1))
    chi = np.mean(1.0 - np.linalg.norm(pull, axis=1) / (M - 1))
    anchors = {
        "random": rng.standard_normal((B, d)),
        "noisy": positives[0] + 0.5 * rng.standard_normal((B, d)),
        "mean": pull,
    }
    for anchor in anchors.values():
        for tau in (0.07, 0.5):
            out = conflict_metrics({"image": anchor, **dict(zip(keys, positives, strict=True))}, tau=tau)
            assert set(out) == CONFLICT_KEYS
            # χ, μ̄ and the bound depend on the positives only, not on the anchor or τ
            assert out["mu_bar"] == pytest.approx(mu_bar, rel=1e-10)
            assert out["chi_bound"] == pytest.approx(closed_form, rel=1e-10)
            assert out["chi"] == pytest.approx(chi, rel=1e-10)
            assert 0.0 <= out["chi_bound"] <= out["chi"] <= 1.0
            assert out["chi"] > out["chi_bound"] + 1e-3  # ‖V_i‖ varies over the rows: Jensen is strict
            assert -1.0 <= out["zeta"] <= 1.0
    for i in range(4):  # a single row: ‖V‖ = sqrt(mean ‖V‖²), so the bound is attained
        single = {k: p[i : i + 1] for k, p in zip(keys, positives, strict=True)}
        single["image"] = anchors["noisy"][i : i + 1]
        out = conflict_metrics(single)
        assert out["chi"] == pytest.approx(out["chi_bound"], rel=1e-10, abs=1e-12)


def test_chi_bound_tight_and_growing_with_modalities_at_fixed_mu():
    rng = np.random.default_rng(7)
    B, d, mu = 64, 16, 0.4
    positives = equiangular_rows(rng, B, d, 5, mu)
    anchor = rng.standard_normal((B, d))
    bounds = []
    for M in range(2, 7):
        z = {"image": anchor, **{f"m{k}": positives[k] for k in range(M - 1)}}
        out = conflict_metrics(z, tau=0.1)
        if M == 2:  # one positive: V = (w/τ) z^n has its full norm, nothing cancels
            assert out["chi"] == pytest.approx(0.0, abs=1e-12)
            assert out["chi_bound"] == 0.0
            assert math.isnan(out["mu_bar"])
        else:
            assert out["mu_bar"] == pytest.approx(mu, rel=1e-12)
            assert out["chi_bound"] == pytest.approx(1.0 - math.sqrt((1 + (M - 2) * mu) / (M - 1)), rel=1e-12)
            assert out["chi"] == pytest.approx(out["chi_bound"], rel=1e-12)  # ‖V_i‖ is the same on every row
        bounds.append(out["chi_bound"])
    assert all(later > earlier for earlier, later in itertools.pairwise(bounds)), bounds
    assert bounds[-1] < 1.0 - math.sqrt(mu)  # Eq. 8: the limit 1 − sqrt(μ̄) is approached from below


def test_conflicts_grow_with_modalities():
    rng = np.random.default_rng(7)
    views = shared_latent(rng, 512, 16, 6, noise=0.8)
    bounds, chis, zetas = [], [], []
    for M in range(2, 7):
        z = {"image": views[0], **{f"m{k}": views[k] for k in range(1, M)}}
        out = conflict_metrics(z, tau=0.1)
        bounds.append(out["chi_bound"])
        chis.append(out["chi"])
        zetas.append(out["zeta"])
        assert out["chi"] >= out["chi_bound"] - 1e-12
        assert -1.0 <= out["zeta"] <= 1.0
        if M == 2:
            assert out["chi"] == pytest.approx(0.0, abs=1e-12)
            assert out["chi_bound"] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(bounds)), bounds
    assert all(later > earlier for earlier, later in itertools.pairwise(chis)), chis
    assert all(later > earlier for earlier, later in itertools.pairwise(zetas)), zetas


def test_zeta_grows_with_modalities():
    rng = np.random.default_rng(8)
    latent = rng.standard_normal((256, 32))
    views = [latent + 1.0 * rng.standard_normal(latent.shape) for _ in range(5)]
    zetas = [
        conflict_metrics({"image": views[0], **{f"m{k}": views[k] for k in range(1, M)}})["zeta"] for M in (2, 3, 4, 5)
    ]
    assert all(later > earlier for earlier, later in itertools.pairwise(zetas)), zetas


def test_conflict_bad_inputs():
    rng = np.random.default_rng(9)
    good = rng.standard_normal((6, 4))
    with pytest.raises(EmbeddingError, match="anchor modality 'image' is missing"):
        conflict_metrics({"text": good, "audio": good})
    with pytest.raises(EmbeddingError, match="share batch size and dimension"):
        conflict_metrics({"image": good, "audio": good[:5]})
    with pytest.raises(EmbeddingError, match="at least 2 modalities"):
        conflict_metrics({"image": good})
    with pytest.raises(ConfigError, match="tau must be"):
        conflict_metrics({"image": good, "audio": good}, tau=0)
    bad = good.copy()
    bad[0] = 0.0
    with pytest.raises(EmbeddingError, match="NaN/inf or all zero"):
        conflict_metrics({"image": good, "audio": bad})
    three = {"image": good, "text": good[::-1].copy(), "audio": good}
    with pytest.raises(ConfigError, match=r"unknown modalities \['video'\]"):
        conflict_metrics(three, pair_weights={"video": 1.0})
    with pytest.raises(ConfigError, match=r"unknown modalities \['image'\]"):  # the anchor has no w_aa
        conflict_metrics(three, pair_weights={"image": 1.0, "text": 1.0})
    for weights in ({"text": 0.0, "audio": 0.0}, {"text": -1.0, "audio": 1.0}, {"text": float("nan")}):
        with pytest.raises(ConfigError, match="pair_weights must be finite, non-negative and not all 0"):
            conflict_metrics(three, pair_weights=weights)


# ---------------------------------------------------------------- modality gap


def test_modality_gap():
    rng = np.random.default_rng(10)
    z = {
        "image": rng.standard_normal((20, 5)) + 1,
        "text": rng.standard_normal((13, 5)),
        "audio": rng.random((7, 5)),
    }
    gaps = modality_gap({k: torch.tensor(v, dtype=torch.float32) if k == "text" else v for k, v in z.items()})
    assert list(gaps) == ["image-text", "image-audio", "text-audio"]
    for key, value in gaps.items():
        m, n = key.split("-")
        want = np.linalg.norm(normalize(z[m]).mean(0) - normalize(z[n]).mean(0))
        assert value == pytest.approx(want, rel=1e-6)
    assert modality_gap({"a": z["image"], "b": z["image"]})["a-b"] == 0.0
    with pytest.raises(EmbeddingError, match="share the embedding dimension"):
        modality_gap({"a": z["image"], "b": z["image"][:, :4]})


# ---------------------------------------------------------------- Δ_deg and MeanSim@k


def topk_reference(x, k, reference=None):
    sims = cosine_similarity(x, x if reference is None else reference)
    if reference is None:
        np.fill_diagonal(sims, -np.inf)
    return np.mean(-np.sort(-sims, axis=1)[:, :k])


def test_degeneration_and_mean_sim():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((57, 12))
    ref = rng.standard_normal((31, 12))
    assert degeneration_score(x) == pytest.approx(topk_reference(x, 1), rel=1e-6)
    assert degeneration_score(x, reference=ref) == pytest.approx(topk_reference(x, 1, ref), rel=1e-6)
    for k in (1, 5, 56):
        assert mean_sim_at_k(x, k) == pytest.approx(topk_reference(x, k), rel=1e-6)
        assert mean_sim_at_k(x, k, block_size=7) == pytest.approx(mean_sim_at_k(x, k), rel=1e-6)
    assert mean_sim_at_k(x, 31, reference=ref) == pytest.approx(topk_reference(x, 31, ref), rel=1e-6)
    assert mean_sim_at_k(x, 1) == pytest.approx(degeneration_score(x), rel=1e-12)
    assert degeneration_score(x, block_size=1) == pytest.approx(degeneration_score(x), rel=1e-6)
    assert degeneration_score(x, ref, block_size=10) == pytest.approx(degeneration_score(x, ref), rel=1e-6)
    # a duplicated row is another item: its copy is its nearest neighbour (cosine 1)
    dup = np.vstack([x[:1], x[:1]])
    assert degeneration_score(dup) == pytest.approx(1.0, rel=1e-6)


def test_degeneration_bad_inputs():
    x = np.random.default_rng(12).standard_normal((10, 4))
    with pytest.raises(ConfigError, match="exceeds the 9 neighbours"):
        mean_sim_at_k(x, 10)
    with pytest.raises(ConfigError, match="exceeds the 3 neighbours"):
        mean_sim_at_k(x, 4, reference=x[:3])
    with pytest.raises(ConfigError, match="k must be an integer"):
        mean_sim_at_k(x, 0)
    with pytest.raises(ConfigError, match="block_size must be an integer"):
        degeneration_score(x, block_size=0)
    with pytest.raises(ConfigError, match="exceeds the 0 neighbours"):
        degeneration_score(x[:1])
    with pytest.raises(EmbeddingError, match="share the embedding dimension"):
        degeneration_score(x, reference=x[:, :3])
    with pytest.raises(EmbeddingError, match=r"expected shape \(B, d\)"):
        degeneration_score(x[0])


# ---------------------------------------------------------------- MMD


def mmd_reference(x, y, sigma=None):
    x, y = normalize(x), normalize(y)
    if sigma is None:
        sigma = np.median(pdist(np.vstack([x, y])))

    def k(u, v):
        return np.exp(-np.sum((u - v) ** 2) / (2 * sigma**2))

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_bruteforce():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((14, 5)) + 0.5
    y = rng.standard_normal((11, 5))
    assert float(mmd(x, y)) == pytest.approx(mmd_reference(x, y), rel=1e-9)
    assert float(mmd(x, y, bandwidth=0.3)) == pytest.approx(mmd_reference(x, y, 0.3), rel=1e-9)
    assert float(mmd(x, y[:10])) == pytest.approx(mmd_reference(x, y[:10]), rel=1e-9)  # even pair count
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    out = mmd(xt, torch.tensor(y, dtype=torch.float32))
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


def test_mmd_same_vs_shifted():
    rng = np.random.default_rng(14)
    d = 8
    mean = np.zeros(d)
    mean[0] = 1.5
    same = float(mmd(gaussians(rng, 400, d, mean), gaussians(rng, 400, d, mean)))
    shifted_mean = np.roll(mean, 1)
    shifted = float(mmd(gaussians(rng, 400, d, mean), gaussians(rng, 400, d, shifted_mean)))
    assert abs(same) < 0.005
    assert shifted > 0.1


def test_mmd_bad_inputs():
    x = np.random.default_rng(15).standard_normal((6, 3))
    with pytest.raises(ConfigError, match="bandwidth must be a positive finite number"):
        mmd(x, x, bandwidth=-1.0)
    with pytest.raises(EmbeddingError, match="at least 2 items"):
        mmd(x, x[:1])
    with pytest.raises(EmbeddingError, match="share the embedding dimension"):
        mmd(x, x[:, :2])
    with pytest.raises(EmbeddingError, match="median heuristic gives no bandwidth"):
        mmd(np.ones((5, 3)), np.ones((4, 3)))
