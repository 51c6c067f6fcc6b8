"""Geometric-alignment metrics against brute-force NumPy / sklearn references; corruptions; robustness curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from gen_align.diagnostics import mmd
from gen_align.errors import ConfigError, EmbeddingError, InputDataError
from gen_align.retrieval.corruptions import add_gaussian_noise, gaussian_blur, get_corruption, word_dropout
from gen_align.retrieval.geometry_metrics import (
    cluster_metrics,
    geometric_alignment,
    knn_graph_mismatch,
    knn_indices,
    masking_curve,
    robustness_curve,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny arrays: one thread is faster than several fighting over shared cores (torch, BLAS, OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def brute_knn(z: np.ndarray, k: int) -> list[list[int]]:
    """k most cosine-similar other rows of each row, by sorting every row's similarities."""
    zu = unit_rows(z)
    out = []
    for i in range(len(z)):
        sims = [(float(zu[i] @ zu[j]), j) for j in range(len(z)) if j != i]
        out.append([j for _, j in sorted(sims, reverse=True)[:k]])
    return out


def brute_r1(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """R@1 of cosine retrieval, query i ↔ gallery i, ties counted against the query (a tie is a miss)."""
    q, g = unit_rows(queries.double().numpy()), unit_rows(gallery.double().numpy())
    hits = 0
    for i in range(len(q)):
        scores = g @ q[i]
        hits += int(all(scores[i] > scores[j] for j in range(len(g)) if j != i))
    return hits / len(q)


def paired(seed: int = 0, n: int = 40, d: int = 6, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, x + noise * rng.standard_normal((n, d))


def test_knn_indices_match_sklearn():
    from sklearn.neighbors import NearestNeighbors

    x, _ = paired()
    ours = knn_indices(x, 5, block_size=7).numpy()
    _, theirs = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    assert np.array_equal(ours, theirs[:, 1:])
    assert ours.tolist() == brute_knn(x, 5)


@pytest.mark.parametrize("k", [1, 4])
def test_knn_graph_mismatch_matches_loops(k):
    x, y = paired(seed=1, d=5)
    y = np.concatenate([y, np.random.default_rng(2).standard_normal((len(y), 2))], axis=1)  # other dimension
    nx, ny = brute_knn(x, k), brute_knn(y, k)
    xu, yu = unit_rows(x), unit_rows(y)
    jaccard, hausdorff = [], []
    for i in range(len(x)):
        a, b = set(nx[i]), set(ny[i])
        jaccard.append(1 - len(a & b) / len(a | b))
        in_x = max(min(1 - xu[j] @ xu[m] for m in nx[i]) for j in ny[i])  # Y's neighbours vs X's, in X
        in_y = max(min(1 - yu[j] @ yu[m] for m in ny[i]) for j in nx[i])  # X's neighbours vs Y's, in Y
        hausdorff.append(max(in_x, in_y, 0.0))
    out = knn_graph_mismatch(x, y, k=k, block_size=9, per_item=True)
    np.testing.assert_allclose(out["jaccard_per_item"], jaccard, atol=1e-12)
    np.testing.assert_allclose(out["hausdorff_per_item"], hausdorff, atol=1e-12)
    assert out["jaccard"] == pytest.approx(np.mean(jaccard)) and out["hausdorff"] == pytest.approx(np.mean(hausdorff))
    assert 0 < out["jaccard"] < 1 and out["k"] == k


def test_identical_graphs_have_zero_mismatch():
    x, _ = paired(seed=3)
    rotation = np.linalg.qr(np.random.default_rng(4).standard_normal((6, 6)))[0]
    out = knn_graph_mismatch(torch.from_numpy(x), torch.from_numpy(3.0 * x @ rotation), k=5)  # same cosine geometry
    assert out["jaccard"] == 0.0 and out["hausdorff"] == pytest.approx(0.0, abs=1e-12)


def brute_silhouette(z: np.ndarray, labels: np.ndarray) -> float:
    zu = unit_rows(z)
    values = []
    for i in range(len(z)):
        dist = {c: [1 - zu[i] @ zu[j] for j in range(len(z)) if labels[j] == c and j != i] for c in set(labels)}
        if not dist[labels[i]]:
            values.append(0.0)
            continue
        a = np.mean(dist[labels[i]])
        b = min(np.mean(v) for c, v in dist.items() if c != labels[i])
        values.append((b - a) / max(a, b))
    return float(np.mean(values))


def brute_nmi(u: np.ndarray, v: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies (sklearn's default normalisation)."""
    n = len(u)
    mi = 0.0
    for a in set(u):
        for b in set(v):
            joint = np.sum((u == a) & (v == b)) / n
            if joint > 0:
                mi += joint * math.log(joint / (np.mean(u == a) * np.mean(v == b)))

    def entropy(w):
        return -sum(np.mean(w == c) * math.log(np.mean(w == c)) for c in set(w))

    return mi / ((entropy(u) + entropy(v)) / 2)


def test_cluster_metrics_match_brute_force():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 12)
    centers = 3 * rng.standard_normal((3, 5))
    z = centers[labels] + rng.standard_normal((36, 5))
    out = cluster_metrics(z, labels, seed=1)
    assert out["silhouette"] == pytest.approx(brute_silhouette(z, labels), abs=1e-9)
    predicted = KMeans(n_clusters=3, n_init=10, random_state=1).fit_predict(unit_rows(z))
    assert out["nmi"] == pytest.approx(brute_nmi(labels, predicted), abs=1e-9)
    separated = cluster_metrics(centers[labels] + 1e-3 * rng.standard_normal((36, 5)), labels)
    assert separated["nmi"] == pytest.approx(1.0) and separated["silhouette"] > 0.99


def test_geometric_alignment_report():
    x, y = paired(seed=6, n=30)
    labels = np.arange(30) % 3
    out = geometric_alignment(x, y, labels, k=4)
    assert out["mmd"] == pytest.approx(float(mmd(x, y)))
    assert out["jaccard"] == pytest.approx(knn_graph_mismatch(x, y, k=4)["jaccard"])
    xu, yu = unit_rows(x), unit_rows(y)
    assert out["gap"] == pytest.approx(np.linalg.norm(xu.mean(0) - yu.mean(0)))
    both = cluster_metrics(np.concatenate([x, y]), np.concatenate([labels, labels]))
    assert out["silhouette"] == pytest.approx(both["silhouette"]) and out["nmi"] == pytest.approx(both["nmi"])
    assert set(geometric_alignment(x, y, k=4)) == {"jaccard", "hausdorff", "mmd", "gap"}


def test_geometry_errors():
    x, y = paired(n=10)
    with pytest.raises(ConfigError, match="k ≤ 9"):
        knn_graph_mismatch(x, y, k=10)
    with pytest.raises(EmbeddingError, match="same number of rows"):
        knn_graph_mismatch(x, y[:9], k=3)
    with pytest.raises(EmbeddingError, match="shared space"):
        geometric_alignment(x, y[:, :5], k=3)
    with pytest.raises(InputDataError, match="distinct classes"):
        cluster_metrics(x, np.zeros(10))
    with pytest.raises(InputDataError, match="one class label per row"):
        cluster_metrics(x, np.arange(9) % 2)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(EmbeddingError, match="NaN"):
        knn_graph_mismatch(bad, y, k=3)


# ------------------------------------------------------------------------------------ corruptions
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-3)])
@pytest.mark.parametrize("snr_db", [20.0, 0.0, -5.0])
def test_gaussian_noise_hits_the_snr(dtype, tol, snr_db):
    t = np.arange(8000) / 16000
    wave = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 97 * t)]).astype(dtype)
    before = wave.copy()
    noisy = add_gaussian_noise(wave, snr_db, seed=3)
    assert noisy.dtype == wave.dtype and noisy.shape == wave.shape and np.array_equal(wave, before)
    noise = noisy.astype(np.float64) - wave.astype(np.float64)
    achieved = 10 * math.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2))
    assert achieved == pytest.approx(snr_db, abs=tol)
    assert abs(noise.mean()) < 0.05 * noise.std()  # zero-mean white noise
    assert np.array_equal(noisy, add_gaussian_noise(wave, snr_db, seed=3))
    assert not np.array_equal(noisy, add_gaussian_noise(wave, snr_db, seed=4))


def test_gaussian_noise_on_tensors_and_errors():
    wave = torch.sin(torch.linspace(0, 100, 4000))
    noisy = add_gaussian_noise(wave, 10.0, seed=0)
    assert isinstance(noisy, torch.Tensor) and noisy.dtype == torch.float32 and noisy.shape == wave.shape
    with pytest.raises(InputDataError, match="silent"):
        add_gaussian_noise(np.zeros(100), 10.0)
    with pytest.raises(InputDataError, match="int16"):
        add_gaussian_noise(np.ones(100, dtype=np.int16), 10.0)
    with pytest.raises(ConfigError, match="snr_db"):
        add_gaussian_noise(np.ones(100), float("inf"))
    with pytest.raises(InputDataError, match="NumPy array or torch tensor"):
        add_gaussian_noise([0.1, 0.2], 10.0)


def test_blur_is_deterministic_and_smooths():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    before = image.tobytes()
    blurred = gaussian_blur(image, 2.0)
    assert blurred.size == image.size and blurred.mode == image.mode and image.tobytes() == before
    assert blurred.tobytes() == gaussian_blur(image, 2.0).tobytes() and blurred.tobytes() != before

    def roughness(img):
        a = np.asarray(img, dtype=np.float64)
        return np.abs(np.diff(a, axis=1)).mean()

    assert roughness(blurred) < 0.5 * roughness(image)
    assert roughness(gaussian_blur(image, 4.0)) < roughness(blurred)
    copy = gaussian_blur(image, 0)
    assert copy is not image and copy.tobytes() == before
    with pytest.raises(InputDataError, match="fromarray"):
        gaussian_blur(np.zeros((4, 4, 3), dtype=np.uint8), 1.0)
    with pytest.raises(ConfigError, match="radius"):
        gaussian_blur(image, -1.0)


def test_word_dropout_drops_the_stated_fraction():
    words = [f"w{i}" for i in range(20)]
    text = " ".join(words)
    for seed in range(5):
        out = word_dropout(text, 0.25, seed=seed).split()
        assert len(out) == 15
        assert out == [w for w in words if w in out]  # order kept
    assert word_dropout(text, 0.25, seed=1) == word_dropout(text, 0.25, seed=1)
    assert len({word_dropout(text, 0.5, seed=s) for s in range(5)}) > 1
    assert word_dropout("  a  b ", 0.0) == "  a  b "
    assert len(word_dropout(text, 1.0).split()) == 1
    assert word_dropout("solo", 0.9) == "solo"
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        word_dropout(text, 1.5)
    with pytest.raises(InputDataError, match="string"):
        word_dropout(["a", "b"], 0.5)


def test_get_corruption():
    noisy = get_corruption("audio-noise", snr_db=0.0)
    wave = np.sin(np.linspace(0, 50, 1000))
    out, rate = noisy((wave, 16000), 3)
    assert rate == 16000 and np.array_equal(out, add_gaussian_noise(wave, 0.0, seed=3))
    assert get_corruption("word-dropout", p=0.5)("a b c d", 2) == word_dropout("a b c d", 0.5, seed=2)
    with pytest.raises(ConfigError, match="unknown corruption"):
        get_corruption("jpeg", quality=10)
    with pytest.raises(ConfigError, match="radius"):
        get_corruption("image-blur", sigma=2)
    with pytest.raises(ConfigError, match="p must be"):
        get_corruption("word-dropout", p=2.0)


# ---------------------------------------------------------------------------------- robustness
def r1_metrics(queries: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    return {"R@1": brute_r1(queries, gallery)}


def test_masking_curve_replaces_rows_by_the_mean():
    x, y = paired(seed=7, n=50, d=8, noise=0.4)
    seen = []

    def capture(q, g):
        seen.append((q.clone(), g.clone()))
        return r1_metrics(q, g)

    curve = masking_curve(torch.from_numpy(x), torch.from_numpy(y), (0.0, 0.2, 0.5, 0.8), metrics_fn=capture, seed=1)
    assert [c["count"] for c in curve] == [0, 10, 25, 40] and [c["fraction"] for c in curve] == [0.0, 0.2, 0.5, 0.8]
    assert curve[0]["R@1"] == brute_r1(torch.from_numpy(x), torch.from_numpy(y))
    values = [c["R@1"] for c in curve]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)) and values[-1] < values[0] - 0.5
    mean = torch.from_numpy(x).mean(dim=0)
    masked_rows = [{i for i in range(50) if torch.equal(q[i], mean)} for q, _ in seen[1:]]  # seen[0]: the clean data
    assert [len(m) for m in masked_rows] == [0, 10, 25, 40]
    assert all(a <= b for a, b in zip(masked_rows, masked_rows[1:], strict=False))  # nested subsets
    assert all(torch.equal(g, torch.from_numpy(y)) for _, g in seen)
    gallery_side = masking_curve(x, y, (0.5,), side="gallery", metrics_fn=capture)
    assert gallery_side[0]["count"] == 25 and torch.equal(seen[-1][0], torch.from_numpy(x))


def test_masking_curve_default_metrics():
    x, y = paired(seed=8, n=30, d=8, noise=0.5)
    clean, full = masking_curve(x, y, (0.0, 1.0))
    assert clean["R@1"] == pytest.approx(100 * brute_r1(torch.from_numpy(x), torch.from_numpy(y)))
    assert {"R@5", "R@10", "MdR", "MnR", "mAP"} <= set(clean)
    assert full["R@1"] == pytest.approx(100 / 30)  # every query is the mean: only the top item's query hits
    # degradation against the clean data, written out: R@1 falls (drop in %), the mean rank rises (rise in %)
    assert full["degradation_%"]["R@1"] == pytest.approx(100 * (clean["R@1"] - full["R@1"]) / clean["R@1"])
    assert full["degradation_%"]["MnR"] == pytest.approx(100 * (full["MnR"] - clean["MnR"]) / clean["MnR"])
    assert all(v == pytest.approx(0) for v in clean["degradation_%"].values())


def test_synonym_substitution_swaps_the_stated_fraction_of_known_words_within_their_groups():
    from gen_align.retrieval.corruptions import SYNONYMS, synonym_substitution

    text = "A small red dog, playing in the rain with a big cat."
    known = [w.rstrip(",.").lower() for w in text.split() if w.rstrip(",.").lower() in SYNONYMS]
    assert known == ["small", "red", "dog", "playing", "rain", "big", "cat"]
    for seed in range(5):
        out = synonym_substitution(text, 3 / 7, seed=seed).split()
        changed = [(a, b) for a, b in zip(text.split(), out, strict=True) if a != b]
        assert len(changed) == 3  # round(3/7 · 7) of the known words, exactly
        for before, after in changed:
            stem, punct = before.rstrip(",.").lower(), before[len(before.rstrip(",.")) :]
            assert after.rstrip(",.").lower() in SYNONYMS[stem] and after.endswith(punct)
            assert after[0].isupper() == before[0].isupper()
    assert synonym_substitution(text, 0.5, seed=4) == synonym_substitution(text, 0.5, seed=4)
    assert synonym_substitution("nothing known here", 1.0) == "nothing known here"
    assert get_corruption("synonyms", p=1.0)("a dog", 0).split()[1] in SYNONYMS["dog"]


def test_robustness_curve_on_noisy_audio_is_monotone():
    rng = np.random.default_rng(9)
    basis = np.linalg.qr(rng.standard_normal((64, 16)))[0].T  # 16 orthonormal "sounds" of 64 samples
    latents = rng.standard_normal((60, 16))
    waves = [latent @ basis for latent in latents]
    calls = []

    def embed(items):
        calls.append(len(items))
        return torch.from_numpy(np.stack([w @ basis.T for w in items]))

    reference = torch.from_numpy(latents + 0.3 * rng.standard_normal((60, 16)))
    corrupt_calls = []

    def corrupt(wave, seed):
        corrupt_calls.append(seed)
        return add_gaussian_noise(wave, -15.0, seed=seed)

    fractions = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    curve = robustness_curve(embed, waves, corrupt, fractions, reference=reference, metrics_fn=r1_metrics, seed=2)
    values = [c["R@1"] for c in curve]
    assert values[0] == 1.0 and values[-1] < 0.6
    assert all(a >= b - 0.05 for a, b in zip(values, values[1:], strict=False))  # monotone up to chance
    assert calls == [60, 60] and len(corrupt_calls) == 60 and len(set(corrupt_calls)) == 60
    again = robustness_curve(embed, waves, corrupt, fractions, reference=reference, metrics_fn=r1_metrics, seed=2)
    assert again == curve
    as_gallery = robustness_curve(
        embed,
        waves,
        get_corruption("audio-noise", snr_db=-15.0),
        (0.8,),
        reference=reference,
        side="gallery",
        metrics_fn=r1_metrics,
    )
    assert as_gallery[0]["R@1"] < 0.9


def test_robustness_curve_errors():
    waves = [np.ones(8)] * 4
    reference = torch.randn(4, 8)

    def embed(items):
        return torch.randn(len(items), 8)

    corrupt = get_corruption("audio-noise", snr_db=0.0)
    with pytest.raises(InputDataError, match="4 items but reference 3 rows"):
        robustness_curve(embed, waves, corrupt, reference=reference[:3])
    with pytest.raises(ConfigError, match="fractions"):
        robustness_curve(embed, waves, corrupt, (0.2, 1.5), reference=reference)
    with pytest.raises(EmbeddingError, match="3 rows for 4"):
        robustness_curve(lambda items: torch.randn(3, 8), waves, corrupt, reference=reference)
    with pytest.raises(EmbeddingError, match="same space"):
        robustness_curve(lambda items: torch.randn(len(items), 5), waves, corrupt, reference=reference)
    with pytest.raises(ConfigError, match="side"):
        robustness_curve(embed, waves, corrupt, reference=reference, side="both")
    with pytest.raises(EmbeddingError, match="paired row by row"):
        masking_curve(torch.randn(4, 3), torch.randn(5, 3))
