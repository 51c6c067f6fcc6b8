"""Feature cache: bit-exact round trip, resume after a kill, corruption, identity, ranks, bad features, full disk."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest
import torch

import gen_align.data.cache as cache_module
from gen_align.data.cache import CacheWarning, FeatureCache, MissingFeaturesError, encode_to_cache
from gen_align.data.manifest import ManifestItem
from gen_align.errors import ConfigError, EmbeddingError, InputFileError, OutputError

IDENTITY = {"preset": "mini", "space_hash": "abc123"}
DIM = 6


def make_items(n):
    return [SimpleNamespace(id=f"id{i:03d}") for i in range(n)]


def features_of(items):
    """Deterministic per-id features, independent of batching."""
    rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(int(item.id[2:]))) for item in items]
    return torch.stack(rows)


class CountingEncoder:
    """encode_fn that counts how often each id is encoded and can die after some batches."""

    def __init__(self, die_after=None):
        self.calls = {}
        self.batches = 0
        self.die_after = die_after

    def __call__(self, batch):
        if self.die_after is not None and self.batches == self.die_after:
            raise KeyboardInterrupt
        self.batches += 1
        for item in batch:
            self.calls[item.id] = self.calls.get(item.id, 0) + 1
        return features_of(batch)


def reference(tmp_path, items, modality="audio"):
    with FeatureCache.open(tmp_path / "reference", IDENTITY, shard_size=8) as cache:
        encode_to_cache(items, modality, features_of, cache, batch_size=3, progress=False)
    return FeatureCache.load(tmp_path / "reference").to_dict([modality])[modality]


def shard_files(out_dir):
    return sorted(p.name for p in (out_dir / "shards").iterdir())


def test_roundtrip_is_bit_exact_and_index_is_complete(tmp_path):
    out = tmp_path / "cache"
    g = torch.Generator().manual_seed(0)
    audio, image = torch.randn(10, 4, generator=g), torch.randn(7, 3, generator=g, dtype=torch.float64)
    audio_ids, image_ids = [f"a{i}" for i in range(10)], [f"a{i}" for i in range(3, 10)]
    with FeatureCache.open(out, IDENTITY, shard_size=4, dtype=torch.float64) as cache:
        cache.write("audio", audio_ids[:5], audio[:5].double())
        cache.write("audio", audio_ids[5:], audio[5:].double())
        cache.write("image", image_ids, image)
        assert cache.pending(["a0", "x", "a1", "x"], "audio") == ["x"]
    assert shard_files(out) == [
        "audio-000-000000.safetensors",
        "audio-000-000001.safetensors",
        "audio-000-000002.safetensors",
        "image-000-000000.safetensors",
        "image-000-000001.safetensors",
    ]
    index = json.loads((out / "index.json").read_text())
    assert index["identity"] == IDENTITY and index["dtype"] == "float64" and index["shard_size"] == 4
    assert index["modalities"] == {"audio": 4, "image": 3} and index["format_version"] == 1
    assert [e["rows"] for e in index["shards"].values()] == [4, 4, 2, 4, 3]
    assert index["shards"]["audio-000-000002.safetensors"]["ids"] == ["a8", "a9"]

    loaded = FeatureCache.load(out, identity=IDENTITY)
    assert loaded.dtype == torch.float64 and loaded.dims == {"audio": 4, "image": 3}
    assert loaded.ids("audio") == audio_ids
    order = [9, 0, 4, 5, 1]
    assert torch.equal(loaded.get("audio", [audio_ids[i] for i in order]), audio.double()[order])
    aligned = loaded.to_dict(["audio", "image"])
    assert loaded.common_ids(["audio", "image"]) == sorted(image_ids)
    assert torch.equal(aligned["audio"], audio.double()[3:]) and torch.equal(aligned["image"], image)
    assert loaded.verify() == []


def test_missing_ids_and_modalities_are_clear_errors(tmp_path):
    with FeatureCache.open(tmp_path, IDENTITY) as cache:
        cache.write("audio", ["a", "b"], torch.zeros(2, 3))
    loaded = FeatureCache.load(tmp_path)
    with pytest.raises(MissingFeaturesError, match=r"2 of 3 ids have no audio features .*\['x', 'y'\]"):
        loaded.get("audio", ["a", "x", "y"])
    with pytest.raises(MissingFeaturesError, match="holds no 'image' features; it has \\['audio'\\]"):
        loaded.get("image", ["a"])
    with pytest.raises(InputFileError, match="no feature cache"):
        FeatureCache.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="opened with load"):
        loaded.write("audio", ["c"], torch.zeros(1, 3))


def test_resume_after_kill_writes_every_id_once(tmp_path):
    items = make_items(40)
    out = tmp_path / "cache"
    first = CountingEncoder(die_after=5)  # 15 items encoded: one full shard of 8 on disk, 7 rows in flight
    cache = FeatureCache.open(out, IDENTITY, shard_size=8)
    with pytest.raises(KeyboardInterrupt):
        with cache:
            encode_to_cache(items, "audio", first, cache, batch_size=3, progress=False)
    assert shard_files(out) == ["audio-000-000000.safetensors"]
    # A kill during the next shard's rename leaves a temp file and a shard missing from the index.
    (out / "shards" / ".audio-000-000001.safetensors.x1y2.tmp").write_bytes(b"partial")
    (out / "shards" / "audio-000-000001.safetensors").write_bytes(b"renamed but not indexed")
    (out / ".index.json.q9.tmp").write_text("{")

    second = CountingEncoder()
    with FeatureCache.open(out, IDENTITY, shard_size=8) as cache:
        assert len(cache.pending([i.id for i in items], "audio")) == 32
        assert shard_files(out) == ["audio-000-000000.safetensors"] and not (out / ".index.json.q9.tmp").exists()
        assert encode_to_cache(items, "audio", second, cache, batch_size=3, progress=False) == 32
    twice = {i for i in first.calls if i in second.calls}
    assert len(twice) == 7 and set(first.calls) | set(second.calls) == {i.id for i in items}

    loaded = FeatureCache.load(out)
    assert sorted(loaded.ids("audio")) == [i.id for i in items]  # each id stored exactly once
    assert torch.equal(loaded.to_dict(["audio"])["audio"], reference(tmp_path, items))
    assert loaded.verify() == []
    # Nothing left to do on a third run.
    with FeatureCache.open(out, IDENTITY, shard_size=8) as cache:
        assert encode_to_cache(items, "audio", CountingEncoder(die_after=0), cache, batch_size=3, progress=False) == 0


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_corrupted_or_missing_shard_is_detected_and_redone(tmp_path, damage):
    items = make_items(20)
    out = tmp_path / "cache"
    with FeatureCache.open(out, IDENTITY, shard_size=8) as cache:
        encode_to_cache(items, "audio", features_of, cache, batch_size=4, progress=False)
    shard = out / "shards" / "audio-000-000001.safetensors"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-5:] = bytes(b ^ 0xFF for b in data[-5:])
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()

    loaded = FeatureCache.load(out)
    assert loaded.verify() == [
        f"shard {shard.name}: {'corrupted (sha256 differs from the index)' if damage == 'flip' else 'missing'}"
    ]
    assert torch.equal(loaded.get("audio", ["id000"]), features_of(items[:1]))  # other shards still readable
    with pytest.raises(InputFileError, match="audio-000-000001.safetensors"):
        loaded.get("audio", ["id009"])

    with pytest.warns(CacheWarning, match="audio-000-000001.safetensors is .*8 audio items will be encoded again"):
        cache = FeatureCache.open(out, IDENTITY, shard_size=8)
    assert cache.pending([i.id for i in items], "audio") == [f"id{i:03d}" for i in range(8, 16)]
    with cache:
        assert encode_to_cache(items, "audio", features_of, cache, batch_size=4, progress=False) == 8
    loaded = FeatureCache.load(out)
    assert loaded.verify() == [] and "audio-000-000001.safetensors" not in shard_files(out)
    assert torch.equal(loaded.to_dict(["audio"])["audio"], reference(tmp_path, items))


def test_identity_and_dtype_mismatch(tmp_path):
    with FeatureCache.open(tmp_path, IDENTITY) as cache:
        cache.write("audio", ["a"], torch.ones(1, 2))
    other = {**IDENTITY, "space_hash": "zzz"}
    with pytest.raises(ConfigError, match=r"differs in: space_hash\).*new output directory.*--overwrite"):
        FeatureCache.open(tmp_path, other)
    with pytest.raises(ConfigError, match="differs in: space_hash"):
        FeatureCache.load(tmp_path, identity=other)
    with pytest.raises(ConfigError, match="stores float32 features, not float16"):
        FeatureCache.open(tmp_path, IDENTITY, dtype="float16")
    (tmp_path / "notes.txt").write_text("kept")
    with FeatureCache.open(tmp_path, other, overwrite=True) as cache:
        assert cache.pending(["a"], "audio") == ["a"]
    assert FeatureCache.load(tmp_path).identity == other and (tmp_path / "notes.txt").exists()
    with pytest.raises(ConfigError, match="FeatureCache.clear"):
        FeatureCache.open(tmp_path, other, rank=0, world_size=2, overwrite=True)


def test_ranks_write_their_own_shards_then_merge(tmp_path):
    items = make_items(21)
    out = tmp_path / "cache"
    encoders = {}
    for rank in (0, 1):  # two processes, simulated one after the other
        encoders[rank] = CountingEncoder()
        with FeatureCache.open(out, IDENTITY, shard_size=4, rank=rank, world_size=2) as cache:
            encode_to_cache(items, "audio", encoders[rank], cache, batch_size=3, progress=False)
    assert set(encoders[0].calls) == {i.id for i in items[0::2]}
    assert set(encoders[1].calls) == {i.id for i in items[1::2]}
    assert not (out / "index.json").exists()
    assert {p.name for p in out.glob("index-rank*.json")} == {"index-rank0.json", "index-rank1.json"}
    fragment = json.loads((out / "index-rank1.json").read_text())
    assert all(name.startswith("audio-001-") for name in fragment["shards"])

    assert FeatureCache.merge_indexes(out) == out / "index.json"
    assert not list(out.glob("index-rank*.json"))
    loaded = FeatureCache.load(out)
    assert loaded.verify() == [] and len(loaded.ids("audio")) == 21
    assert torch.equal(loaded.to_dict(["audio"])["audio"], reference(tmp_path, items))


def test_killed_rank_resumes_and_single_process_folds_fragments(tmp_path):
    items = make_items(12)
    out = tmp_path / "cache"
    with FeatureCache.open(out, IDENTITY, shard_size=2, rank=0, world_size=2) as cache:
        encode_to_cache(items, "audio", features_of, cache, batch_size=2, progress=False)
    cache = FeatureCache.open(out, IDENTITY, shard_size=2, rank=1, world_size=2)
    with pytest.raises(KeyboardInterrupt), cache:
        encode_to_cache(items, "audio", CountingEncoder(die_after=2), cache, batch_size=2, progress=False)
    # A later single-process run folds the fragments into index.json and does only what is missing.
    encoder = CountingEncoder()
    with FeatureCache.open(out, IDENTITY, shard_size=2) as cache:
        assert not list(out.glob("index-rank*.json"))
        encode_to_cache(items, "audio", encoder, cache, batch_size=2, progress=False)
    assert set(encoder.calls) == {i.id for i in items[1::2][4:]}  # 2 batches of 2 were saved
    assert torch.equal(FeatureCache.load(out).to_dict(["audio"])["audio"], reference(tmp_path, items))


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda b: features_of(b).index_fill(0, torch.tensor([1]), float("nan")), r"NaN/inf audio .*\['id001'\]"),
        (lambda b: features_of(b)[:-1], r"shape \(2, 6\) for 3 audio items"),
        (lambda b: features_of(b).long(), "expected floating point"),
        (lambda b: features_of(b)[:, :4], "dimension 4, but the cache holds dimension 6"),
        (lambda b: features_of(b).numpy(), "gave ndarray"),
    ],
)
def test_bad_encoder_output_is_refused_with_ids(tmp_path, output, message):
    items = make_items(6)
    with FeatureCache.open(tmp_path, IDENTITY) as cache:
        cache.write("audio", ["id005"], features_of(items[5:]))
        with pytest.raises(EmbeddingError, match=message):
            encode_to_cache(items, "audio", output, cache, batch_size=3, progress=False)
        assert cache.pending([i.id for i in items], "audio") == [f"id{i:03d}" for i in range(5)]


def test_write_refuses_repeated_ids_and_items_lacking_the_modality(tmp_path):
    with FeatureCache.open(tmp_path, IDENTITY) as cache:
        cache.write("audio", ["a"], torch.zeros(1, 2))
        with pytest.raises(ConfigError, match=r"\['a'\] are repeated or already"):
            cache.write("audio", ["a"], torch.zeros(1, 2))
        with pytest.raises(ConfigError, match=r"\['b'\] are repeated"):
            cache.write("audio", ["b", "b"], torch.zeros(2, 2))
        with pytest.raises(ConfigError, match="items_with"):
            encode_to_cache([ManifestItem(id="x", text="hi")], "audio", features_of, cache, batch_size=2)


def test_disk_full_raises_output_error_and_keeps_index_consistent(tmp_path, monkeypatch):
    items = make_items(20)
    out = tmp_path / "cache"
    cache = FeatureCache.open(out, IDENTITY, shard_size=4)
    encode_to_cache(items[:8], "audio", features_of, cache, batch_size=4, progress=False)  # two shards on disk

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)
        with pytest.raises(OutputError, match="No space left on device.*Free disk space"):
            encode_to_cache(items, "audio", features_of, cache, batch_size=4, progress=False)
    # The shard write failed: index.json still lists exactly the two good shards, no temp files remain.
    assert shard_files(out) == ["audio-000-000000.safetensors", "audio-000-000001.safetensors"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.startswith(".lock-")] == []
    assert FeatureCache.load(out).verify() == [] and len(FeatureCache.load(out).ids("audio")) == 8

    # The shard lands but the index update fails: the shard is removed again.
    def index_fails(path, text):
        raise OutputError(f"could not write {path}: No space left on device.")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "write_text_atomic", index_fails)
        with pytest.raises(OutputError):
            encode_to_cache(items, "audio", features_of, cache, batch_size=4, progress=False)
    assert len(shard_files(out)) == 2 and FeatureCache.load(out).verify() == []

    # With space again the same writer finishes the job without losing the buffered rows.
    encode_to_cache(items, "audio", features_of, cache, batch_size=4, progress=False)
    cache.close()
    assert torch.equal(FeatureCache.load(out).to_dict(["audio"])["audio"], reference(tmp_path, items))


def test_a_second_writer_is_refused_and_the_cache_stays_intact(tmp_path):
    """Two writers on one cache (two `gen-align encode` runs at once): the second is refused with the first's pid
    before it touches a file, even with overwrite; after the first closes (or dies) a writer gets in again."""
    import os
    import subprocess
    import sys
    import textwrap

    from gen_align.data.cache import FeatureCache
    from gen_align.errors import OutputError

    out = tmp_path / "cache"
    identity = {"space": "s"}
    first = FeatureCache.open(out, identity, 4)
    first.write("image", ["a", "b"], torch.ones(2, 3))
    with pytest.raises(OutputError, match=rf"being written by pid {os.getpid()} .*another folder"):
        FeatureCache.open(out, identity, 4, overwrite=True)
    first.close()
    assert torch.equal(FeatureCache.load(out).get("image", ["a", "b"]), torch.ones(2, 3))
    with FeatureCache.open(out, identity, 4) as second:  # the lock was let go
        second.write("image", ["c"], torch.zeros(1, 3))
    # a holder in another process: refused while it lives, free once it is killed (the kernel drops the lock)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from gen_align.data.cache import FeatureCache
            cache = FeatureCache.open({str(out)!r}, {identity!r}, 4)
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"being written by pid {holder.pid} "):
            FeatureCache.open(out, identity, 4)
    finally:
        holder.kill()
        holder.wait()
    FeatureCache.open(out, identity, 4).close()
    assert FeatureCache.load(out).get("image", ["c"]).shape == (1, 3)
