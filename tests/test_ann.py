"""FAISS two-stage search: exact results for a flat index, persistence round trip, coverage C_K, re-ranking,
and clear errors for missing or corrupted index files."""

from __future__ import annotations

import json

import pytest
import torch

from gen_align.errors import ConfigError, EmbeddingError, InputFileError
from gen_align.objectives.gram import gram_similarity
from gen_align.retrieval.ann import (
    AnnIndex,
    cosine_rescorer,
    coverage,
    exact_search,
    gallery_sha256,
    two_stage_search,
    volume_rescorer,
)
from gen_align.retrieval.invgc import invgc


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(400, 16, generator=g)
    return {
        "gallery": latent + 0.5 * torch.randn(400, 16, generator=g),
        "video": latent + 0.5 * torch.randn(400, 16, generator=g),
        "queries": latent[:50] + 0.5 * torch.randn(50, 16, generator=g),
    }


def test_flat_index_equals_exact_search_and_round_trips(data, tmp_path):
    ids = [f"clip-{i}" for i in range(400)]
    index = AnnIndex.build(data["gallery"], ids=ids, modality="audio")
    scores, positions = index.search(data["queries"], 10)
    exact_scores, exact_positions = exact_search(data["queries"], data["gallery"], 10)
    assert torch.equal(positions, exact_positions)
    torch.testing.assert_close(scores, exact_scores)
    assert index.ids_of(positions[:1]) == [[ids[p] for p in exact_positions[0].tolist()]]

    index.save(tmp_path / "idx")
    loaded = AnnIndex.load(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["kind"] == "flat" and meta["dim"] == 16 and meta["count"] == 400 and meta["modality"] == "audio"
    assert meta["ids"] == ids and meta["gallery_sha256"] == gallery_sha256(data["gallery"])
    assert loaded.meta == index.meta
    reloaded_scores, reloaded_positions = loaded.search(data["queries"], 10)
    assert torch.equal(reloaded_positions, positions) and torch.equal(reloaded_scores, scores)
    assert coverage(loaded, data["queries"], candidates=10) == 1.0


def test_ivf_index_round_trip_and_coverage(data, tmp_path):
    index = AnnIndex.build(data["gallery"], kind="ivf", nlist=8, nprobe=2)
    scores, positions = index.search(data["queries"], 20)
    index.save(tmp_path / "ivf")
    loaded = AnnIndex.load(tmp_path / "ivf")
    assert loaded.meta["nlist"] == 8 and loaded.meta["nprobe"] == 2 and loaded.index.nprobe == 2
    again_scores, again_positions = loaded.search(data["queries"], 20)
    assert torch.equal(again_positions, positions) and torch.equal(again_scores, scores)
    partial = coverage(loaded, data["queries"], candidates=20, gallery=data["gallery"])
    assert 0.0 < partial <= 1.0
    loaded.index.nprobe = 8  # every cell visited: exact
    assert coverage(loaded, data["queries"], candidates=10) == 1.0
    torch.testing.assert_close(loaded.vectors(), data["gallery"] / data["gallery"].norm(dim=1, keepdim=True))


def test_default_nlist_keeps_39_points_per_cell(data):
    index = AnnIndex.build(data["gallery"], kind="ivf")
    assert index.meta["nlist"] == 400 // 39 and index.meta["nprobe"] == 2


def test_two_stage_rescoring_with_volume_and_invgc(data):
    index = AnnIndex.build(data["gallery"])
    # Candidates = the whole gallery: re-ranking must equal the exact ranking by the rescoring score.
    scores, positions = two_stage_search(
        index,
        data["queries"],
        k=5,
        candidates=400,
        rescore=volume_rescorer(data["queries"], [data["gallery"], data["video"]]),
    )
    expected = gram_similarity(data["queries"], [data["gallery"], data["video"]]).topk(5, dim=1)
    assert torch.equal(positions, expected.indices)
    torch.testing.assert_close(scores, expected.values, rtol=1e-5, atol=1e-5)

    processed = invgc(data["gallery"], data["video"][100:], data["gallery"][100:], 0.5, 0.5, "local", k_percent=5)
    _, positions = two_stage_search(
        index, data["queries"], k=5, candidates=400, rescore=cosine_rescorer(data["queries"], processed)
    )
    assert torch.equal(positions, exact_search(data["queries"], processed, 5)[1])

    # Plain two-stage (no rescoring) is the ANN top-k.
    _, positions = two_stage_search(index, data["queries"], k=5, candidates=50)
    assert torch.equal(positions, index.search(data["queries"], 5)[1])


def test_rescoring_skips_unfilled_ivf_slots():
    g = torch.Generator().manual_seed(1)
    gallery = torch.randn(80, 4, generator=g)
    index = AnnIndex.build(gallery, kind="ivf", nlist=2, nprobe=1)
    _, first = index.search(gallery[:10], 80)
    assert bool((first < 0).any())  # one probed cell cannot fill 80 slots
    seen = []

    def rescore(rows, cand):
        seen.append(int(cand.min()))
        return torch.zeros(cand.shape)

    _, positions = two_stage_search(index, gallery[:10], k=3, candidates=80, rescore=rescore)
    assert min(seen) >= 0 and bool((positions >= 0).all())


def test_missing_and_corrupted_index_files(data, tmp_path):
    with pytest.raises(InputFileError, match="index.json is missing"):
        AnnIndex.load(tmp_path / "nowhere")
    AnnIndex.build(data["gallery"]).save(tmp_path / "idx")
    raw = bytearray((tmp_path / "idx" / "index.faiss").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "idx" / "index.faiss").write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match="checksum"):
        AnnIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_text("{not json")
    with pytest.raises(InputFileError, match="JSON"):
        AnnIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").unlink()
    with pytest.raises(InputFileError, match="index.faiss is missing"):
        AnnIndex.load(tmp_path / "idx")


def test_bad_inputs(data):
    index = AnnIndex.build(data["gallery"])
    with pytest.raises(ConfigError, match="larger than the gallery"):
        index.search(data["queries"], 401)
    with pytest.raises(EmbeddingError, match="dimension"):
        index.search(torch.randn(3, 8), 5)
    with pytest.raises(EmbeddingError, match="NaN"):
        AnnIndex.build(torch.full((5, 4), float("nan")))
    with pytest.raises(ConfigError, match="nlist"):
        AnnIndex.build(data["gallery"], kind="ivf", nlist=401)
    with pytest.raises(ConfigError, match="nprobe"):
        AnnIndex.build(data["gallery"], kind="ivf", nlist=4, nprobe=5)
    with pytest.raises(ConfigError, match="index kind"):
        AnnIndex.build(data["gallery"], kind="hnsw")
    with pytest.raises(ConfigError, match="ids"):
        AnnIndex.build(data["gallery"], ids=["a", "b"])
    with pytest.raises(ConfigError, match="candidates"):
        two_stage_search(index, data["queries"], k=20, candidates=10)
    with pytest.raises(ConfigError, match="rescoring function returned shape"):
        two_stage_search(index, data["queries"], k=2, candidates=10, rescore=lambda rows, cand: torch.zeros(3))
    assert gallery_sha256(data["gallery"]) != gallery_sha256(data["gallery"] + 1e-3)
