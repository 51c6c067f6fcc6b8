"""Blend maths against independent NumPy references: slerp closed form, endpoints, Karcher mean (symmetric
configurations and the first-order condition), lerp, weight validation, antipodal inputs, calibration norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_align.errors import ConfigError, EmbeddingError
from gen_align.pipelines.blend import blend, interpolate, karcher_mean, orthogonal_direction
from gen_align.pipelines.calibration import rescale
from gen_align.pipelines.decoders import EmbeddingStats


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_slerp(a, b, t):
    a, b = unit(a), unit(b)
    theta = np.arccos(np.clip(a @ b, -1, 1))
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def np_log(x, y):
    """Log map by the textbook formula (θ / sin θ)(y − cos θ x)."""
    cos = np.clip(x @ y, -1, 1)
    theta = np.arccos(cos)
    return np.zeros_like(x) if theta < 1e-12 else theta / np.sin(theta) * (y - cos * x)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return [rng.normal(size=24) * scale for scale in (0.5, 7.0, 30.0, 2.0)]


def test_slerp_matches_closed_form_and_ignores_norms(vectors):
    a, b = vectors[0], vectors[1]
    for t in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        got = blend({"a": torch.tensor(a), "b": torch.tensor(b)}, {"a": 1 - t, "b": t}).numpy()
        np.testing.assert_allclose(got[0], np_slerp(a, b, t), atol=1e-12)
    # Raw norms never leak into the blend: rescaling an input changes nothing.
    z = {"a": torch.tensor(a, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}
    big = {"a": 100 * z["a"], "b": z["b"]}
    torch.testing.assert_close(blend(z, {"a": 1, "b": 3}), blend(big, {"a": 1, "b": 3}), rtol=0, atol=1e-6)
    assert blend(z).dtype == torch.float32 and blend(z).shape == (1, 24)


def test_interpolate_endpoints_spacing_and_closed_form(vectors):
    a, b = torch.tensor(vectors[2]), torch.tensor(vectors[3])
    frames = interpolate(a, b, steps=7).numpy()
    assert frames.shape == (7, 24)
    np.testing.assert_array_equal(frames[0], unit(vectors[2]))
    np.testing.assert_array_equal(frames[-1], unit(vectors[3]))
    for k, t in enumerate(np.linspace(0, 1, 7)):
        np.testing.assert_allclose(frames[k], np_slerp(vectors[2], vectors[3], t), atol=1e-12)
    steps = np.arccos(np.clip(np.sum(frames[1:] * frames[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(steps, steps[0], atol=1e-9)  # constant angular speed
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, atol=1e-12)


def test_lerp_is_the_normalised_weighted_sum_of_directions(vectors):
    z = {k: torch.tensor(v) for k, v in zip("abc", vectors, strict=False)}
    w = {"a": 0.2, "b": 0.3, "c": 0.5}
    expected = unit(sum(w[k] * unit(v) for k, v in zip("abc", vectors, strict=False)))
    np.testing.assert_allclose(blend(z, w, mode="lerp").numpy()[0], expected, atol=1e-12)
    lerp_frames = interpolate(z["a"], z["b"], steps=3, mode="lerp").numpy()
    np.testing.assert_allclose(lerp_frames[1], unit(unit(vectors[0]) + unit(vectors[1])), atol=1e-12)


def test_karcher_mean_of_symmetric_configurations_is_the_normalised_mean():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))  # random rotation
    # Orthonormal triple with equal weights; and a cone of 5 points around an axis.
    triple = q[:, :3].T
    axis = q[:, 3]
    ring = np.array([np.cos(2 * np.pi * k / 5) * q[:, 4] + np.sin(2 * np.pi * k / 5) * q[:, 5] for k in range(5)])
    cone = np.cos(0.9) * axis + np.sin(0.9) * ring
    for points in (triple, cone):
        z = {f"p{i}": torch.tensor(p) for i, p in enumerate(points)}
        got = blend(z).numpy()[0]
        np.testing.assert_allclose(got, unit(points.mean(0)), atol=1e-10)
    np.testing.assert_allclose(
        blend({f"p{i}": torch.tensor(p) for i, p in enumerate(cone)}).numpy()[0], axis, atol=1e-10
    )
    # A pair of opposite points plus a third orthogonal one: the mean is the third.
    e = np.eye(8)
    got = blend({"x": torch.tensor(e[0]), "y": torch.tensor(-e[0]), "z": torch.tensor(e[1])}).numpy()[0]
    np.testing.assert_allclose(got, e[1], atol=1e-10)


def test_karcher_mean_satisfies_the_first_order_condition_and_minimises(vectors):
    rng = np.random.default_rng(2)
    w = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    z = {k: torch.tensor(v) for k, v in zip("abcd", vectors, strict=True)}
    x = blend(z, w).numpy()[0]
    assert abs(np.linalg.norm(x) - 1) < 1e-12
    residual = sum(w[k] * np_log(x, unit(v)) for k, v in zip("abcd", vectors, strict=True))
    assert np.linalg.norm(residual) < 1e-9

    def objective(y):
        return sum(w[k] * np.arccos(np.clip(y @ unit(v), -1, 1)) ** 2 for k, v in zip("abcd", vectors, strict=True))

    for _ in range(20):
        assert objective(x) <= objective(unit(x + 0.05 * rng.normal(size=x.shape))) + 1e-12
    # Widely spread points (whole 3-sphere), random weights: still a stationary point.
    for trial in range(10):
        pts = unit(rng.normal(size=(5, 3)))
        ws = rng.random(5)
        ws /= ws.sum()
        x = karcher_mean(torch.tensor(pts).unsqueeze(1), torch.tensor(ws)).numpy()[0]
        assert np.linalg.norm(sum(wi * np_log(x, p) for wi, p in zip(ws, pts, strict=True))) < 1e-9, trial


def test_karcher_mean_warns_when_it_has_not_converged():
    pts = torch.tensor(unit(np.random.default_rng(3).normal(size=(4, 1, 6))))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        karcher_mean(pts, torch.full((4,), 0.25, dtype=torch.float64), max_iter=1)


def test_two_input_karcher_is_slerp_and_batches_blend_row_by_row(vectors):
    a, b = torch.tensor(vectors[0]), torch.tensor(vectors[1])
    pts = torch.stack([a / a.norm(), b / b.norm()]).unsqueeze(1)
    got = karcher_mean(pts, torch.tensor([0.3, 0.7], dtype=torch.float64))
    np.testing.assert_allclose(got.numpy()[0], np_slerp(vectors[0], vectors[1], 0.7), atol=1e-10)
    rows = torch.stack([a, b, a + b])
    batched = blend({"x": rows, "y": torch.tensor(vectors[2])}, {"x": 1, "y": 1})
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], blend({"x": rows[i], "y": torch.tensor(vectors[2])}))


def test_weights_are_validated_and_normalised(vectors):
    z = {"text": torch.tensor(vectors[0]), "audio": torch.tensor(vectors[1])}
    torch.testing.assert_close(blend(z, {"text": 2, "audio": 6}), blend(z, {"text": 0.25, "audio": 0.75}))
    torch.testing.assert_close(blend(z, {"text": 0, "audio": 5}), torch.tensor(unit(vectors[1]))[None])
    cases = [
        ({"text": -1, "audio": 1}, ">= 0"),
        ({"text": float("nan"), "audio": 1}, ">= 0"),
        ({"text": 0, "audio": 0.0}, "all weights are zero"),
        ({"text": 1}, "missing: ['audio']"),
        ({"text": 1, "audio": 1, "image": 1}, "unknown: ['image']"),
        ({"text": "1", "audio": 1}, "finite number"),
        ({"text": True, "audio": 1}, "finite number"),
    ]
    for weights, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            blend(z, weights)
    with pytest.raises(ConfigError, match="blend mode"):
        blend(z, mode="average")


def test_bad_embeddings_are_refused(vectors):
    nan = torch.tensor(vectors[0])
    nan[3] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        blend({"a": nan, "b": torch.tensor(vectors[1])})
    with pytest.raises(EmbeddingError, match="all-zero"):
        blend({"a": torch.zeros(24), "b": torch.tensor(vectors[1])})
    with pytest.raises(EmbeddingError, match="one dimension"):
        blend({"a": torch.ones(24), "b": torch.ones(12)})
    with pytest.raises(EmbeddingError, match="non-empty dict"):
        blend({})
    with pytest.raises(EmbeddingError, match="two single embeddings"):
        interpolate(torch.ones(2, 24), torch.ones(24), steps=3)
    with pytest.raises(ConfigError, match="steps must be an integer >= 2"):
        interpolate(torch.ones(24), torch.ones(24), steps=1)


def test_antipodal_inputs_are_handled_deterministically():
    a = np.array([0.6, -0.1, 0.05, 0.79, 0.0, 0.1])  # smallest |a_k| at k = 4
    a = unit(a)
    p = np.eye(6)[4] - a[4] * a  # documented construction, computed independently
    p = unit(p)
    za, zb = torch.tensor(a), torch.tensor(-a)
    mid = blend({"a": za, "b": zb}).numpy()[0]
    np.testing.assert_allclose(mid, p, atol=1e-12)
    np.testing.assert_array_equal(mid, blend({"a": za, "b": zb}).numpy()[0])
    frames = interpolate(za, zb, steps=5).numpy()
    np.testing.assert_allclose(frames[2], p, atol=1e-12)
    np.testing.assert_allclose(frames[1], np.cos(np.pi / 4) * a + np.sin(np.pi / 4) * p, atol=1e-12)
    np.testing.assert_allclose(frames[-1], -a, atol=1e-12)
    np.testing.assert_allclose(orthogonal_direction(za[None]).numpy()[0], p, atol=1e-12)
    with pytest.raises(EmbeddingError, match="cancel out"):
        blend({"a": za, "b": zb}, mode="lerp")
    # Ties in |a_k|: the first index wins.
    tie = torch.tensor(unit([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(orthogonal_direction(tie[None]).numpy()[0], [0, 1, 0, 0], atol=1e-12)


def test_rescale_gives_the_calibrated_norm():
    stats = EmbeddingStats(mean_norm=17.5, std_norm=1.0, count=10)
    directions = blend({"a": torch.randn(3, 24), "b": torch.randn(3, 24) * 9})
    torch.testing.assert_close(rescale(directions, stats).norm(dim=-1), torch.full((3,), 17.5))
    with pytest.raises(ConfigError, match="positive finite mean norm"):
        EmbeddingStats(mean_norm=float("nan"))
    with pytest.raises(EmbeddingError, match="NaN"):
        rescale(torch.full((1, 4), float("nan")), stats)
