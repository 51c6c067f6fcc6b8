"""Reference FID statistics cache: hit / miss / corruption paths, key contents, atomic records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gen_align.data.manifest import read_manifest
from gen_align.errors import ConfigError, InputFileError, OutputError
from gen_align.eval.features import FeatureStatistics
from gen_align.eval.stats_cache import StatsCache, StatsCacheWarning, default_cache_dir, reference_statistics


class CountingExtractor(nn.Module):
    """uint8 (B, 3, H, W) → (B, 4) float64 features; counts the images it has seen."""

    num_features = 4

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, 12, dtype=torch.float64).reshape(4, 3) + bias)
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        pooled = torch.stack([x.double().mean(dim=(2, 3)), x.double().std(dim=(2, 3))], dim=0).sum(0) / 255.0
        return pooled @ self.weight.T


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(7):
        size = (10 + i, 12)
        high = int(rng.integers(20, 256))  # per-image contrast: features vary about as much as their mean
        Image.fromarray(rng.integers(0, high, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"img{i}", "image": f"{i}.png"}))
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_stats(extractor=None, **options):
    return FeatureStatistics(extractor or CountingExtractor(), image_size=8, batch_size=3, **options)


def test_miss_then_hit_skips_extraction(manifest, tmp_path):
    cache_dir = tmp_path / "cache"
    stats = make_stats()
    first = reference_statistics(manifest, stats, cache_dir=cache_dir)
    assert stats.extractor.images == 7 and first.n == 7
    records = list(cache_dir.glob("*.json"))
    assert len(records) == 1 and len(list(cache_dir.glob("*.safetensors"))) == 1
    record = json.loads(records[0].read_text())
    assert record["n"] == 7 and record["num_features"] == 4 and len(record["sha256"]) == 64
    assert record["fields"]["preprocessing"] == {"image_size": 8, "resize": "pil-bicubic", "antialias": None,
                                                 "input": "uint8"}  # fmt: skip
    assert record["fields"]["extractor"]["weights"].startswith("sha256:")

    again = make_stats()
    second = reference_statistics(read_manifest(manifest), again, cache_dir=cache_dir)
    assert again.extractor.images == 0
    assert second.n == 7 and torch.equal(second.mu, first.mu) and torch.equal(second.sigma, first.sigma)

    direct = make_stats()
    direct.update(sorted(manifest.parent.glob("*.png")))
    assert torch.allclose(direct.compute().sigma, first.sigma, rtol=1e-12, atol=1e-16)


def test_corrupted_entry_is_detected_and_recomputed(manifest, tmp_path):
    cache_dir = tmp_path / "cache"
    reference = reference_statistics(manifest, make_stats(), cache_dir=cache_dir)
    tensors = next(cache_dir.glob("*.safetensors"))
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0xFF
    tensors.write_bytes(bytes(data))
    stats = make_stats()
    with pytest.warns(StatsCacheWarning, match="does not match the sha256"):
        recomputed = reference_statistics(manifest, stats, cache_dir=cache_dir)
    assert stats.extractor.images == 7
    assert torch.allclose(recomputed.sigma, reference.sigma, rtol=1e-12, atol=1e-16)
    reused = make_stats()
    reference_statistics(manifest, reused, cache_dir=cache_dir)  # the rewritten entry is valid again
    assert reused.extractor.images == 0

    next(cache_dir.glob("*.json")).write_text("{not json")
    stats = make_stats()
    with pytest.warns(StatsCacheWarning, match="unreadable"):
        reference_statistics(manifest, stats, cache_dir=cache_dir)
    assert stats.extractor.images == 7

    tensors.unlink()
    stats = make_stats()
    with pytest.warns(StatsCacheWarning, match="unreadable"):
        reference_statistics(manifest, stats, cache_dir=cache_dir)
    assert stats.extractor.images == 7


def test_key_changes_with_extractor_preprocessing_and_manifest(manifest, tmp_path):
    cache_dir = tmp_path / "cache"
    reference_statistics(manifest, make_stats(), cache_dir=cache_dir)
    variants = [
        make_stats(CountingExtractor(bias=0.1)),
        FeatureStatistics(CountingExtractor(), image_size=9, batch_size=3),
        make_stats(resize="bilinear"),
        make_stats(extractor_name="another-name"),
    ]
    for stats in variants:
        reference_statistics(manifest, stats, cache_dir=cache_dir)
        assert stats.extractor.images == 7
    with manifest.open("a") as f:
        f.write(json.dumps({"id": "img0-copy", "image": "0.png"}) + "\n")
    stats = make_stats()
    assert reference_statistics(manifest, stats, cache_dir=cache_dir).n == 8 and stats.extractor.images == 8
    assert len(list(cache_dir.glob("*.json"))) == 6


def test_refresh_recomputes_and_default_dir_follows_gen_align_home(manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / "fid-stats"
    reference_statistics(manifest, make_stats())
    assert len(list((tmp_path / "home" / "fid-stats").glob("*.json"))) == 1
    stats = make_stats()
    reference_statistics(manifest, stats, refresh=True)
    assert stats.extractor.images == 7


def test_missing_images_are_refused_unless_skipped(manifest, tmp_path):
    (manifest.parent / "3.png").unlink()
    with pytest.raises(InputFileError, match="1 of 7 items .* have no image file.*skip_missing=True"):
        reference_statistics(manifest, make_stats(), cache_dir=tmp_path / "cache")
    stats = make_stats()
    assert reference_statistics(manifest, stats, cache_dir=tmp_path / "cache", skip_missing=True).n == 6
    record = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert len(record["fields"]["ids"]) == 64


def test_bad_setups_raise_clear_errors(manifest, tmp_path):
    with pytest.raises(ConfigError, match="needs an extractor"):
        reference_statistics(manifest, FeatureStatistics(None, num_features=4), cache_dir=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="could not write FID statistics.*cache_dir="):
        reference_statistics(manifest, make_stats(), cache_dir=blocker / "cache")


def test_cache_roundtrip_checks_recorded_fields(tmp_path):
    cache = StatsCache(tmp_path)
    stats = make_stats()
    stats.update(torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8))
    value = stats.compute()
    cache.save("k", value, {"manifest": "a"})
    loaded = cache.load("k", {"manifest": "a"})
    assert loaded.n == 5 and torch.equal(loaded.sigma, value.sigma)
    assert cache.load("missing") is None
    with pytest.warns(StatsCacheWarning, match="key fields differ"):
        assert cache.load("k", {"manifest": "b"}) is None


def test_ranks_split_the_images_and_rank_zero_writes(manifest, tmp_path, monkeypatch):
    """Emulate a 2-process run: each rank extracts its shard; the synced sums give the single-process result."""
    import gen_align.eval.stats_cache as stats_cache

    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(stats_cache, "_all_ranks_agree", lambda hit, device, world: hit)
    monkeypatch.setattr(stats_cache, "_rank_world", lambda: (1, 2))
    rank1 = make_stats(distributed_available_fn=lambda: False)
    reference_statistics(manifest, rank1, cache_dir=cache_dir)
    assert rank1.extractor.images == 3 and not cache_dir.exists()

    by_shape = {tuple(t.shape): t for t in (rank1.feature_sum, rank1.outer_sum, rank1.num_samples)}
    monkeypatch.setattr(stats_cache, "_rank_world", lambda: (0, 2))
    rank0 = make_stats(
        dist_sync_fn=lambda tensor, group=None: [tensor, by_shape[tuple(tensor.shape)]],
        distributed_available_fn=lambda: True,
    )
    synced = reference_statistics(manifest, rank0, cache_dir=cache_dir)
    assert rank0.extractor.images == 4 and synced.n == 7
    monkeypatch.setattr(stats_cache, "_rank_world", lambda: (0, 1))
    single = reference_statistics(manifest, make_stats(), cache_dir=tmp_path / "single")
    assert single.n == 7
    assert torch.allclose(synced.sigma, single.sigma, rtol=1e-12, atol=1e-16)
    assert len(list(cache_dir.glob("*.json"))) == 1


def test_rank_helpers_with_a_real_process_group(tmp_path):
    import torch.distributed as dist

    from gen_align.eval.stats_cache import _all_ranks_agree, _rank_world

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _rank_world() == (0, 1)
        assert _all_ranks_agree(True, torch.device("cpu"), world=2) is True  # the all_reduce path
        assert _all_ranks_agree(False, torch.device("cpu"), world=2) is False
    finally:
        dist.destroy_process_group()
    assert _rank_world() == (0, 1)
