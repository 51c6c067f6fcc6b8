"""Cache of reference FID statistics: (μ, Σ, n) of a manifest's images, so a second run skips the extraction.

An entry is ``<key>.safetensors`` (``mu`` float64 (F,), ``sigma`` float64 (F, F), ``n`` int64) plus ``<key>.json``
(what the key was made of, n, F, and the sha256 of the safetensors file), both written atomically, JSON last: a
crash between the two leaves no valid entry. The key hashes the manifest hash (and the ids used, when some images
were skipped), the extractor identity (name + weights hash) and the preprocessing (image size, PIL resize filter,
antialias, input dtype). An entry whose file does not match its sha256, or that cannot be read, is reported with a
:class:`StatsCacheWarning` and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gen_align.checks import integer
from gen_align.data.manifest import Manifest, read_manifest
from gen_align.data.manifest import manifest_hash as hash_manifest
from gen_align.errors import ConfigError, InputFileError
from gen_align.io import write_bytes_atomic, write_json_atomic
from gen_align.weights import weights_home

from .features import FeatureStatistics
from .fid import FeatureStats

FORMAT = "gen-align-fid-stats/1"


class StatsCacheWarning(UserWarning):
    """A cached statistics entry was corrupted or unreadable and is being recomputed."""


def default_cache_dir() -> Path:
    """``$GEN_ALIGN_HOME/fid-stats`` (``~/.cache/gen-align/fid-stats`` when unset)."""
    return weights_home() / "fid-stats"


def stats_key(fields: dict[str, Any]) -> str:
    """The cache key of ``fields`` (sha256 of their canonical JSON, first 32 hex digits)."""
    canonical = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class StatsCache:
    """A directory of cached :class:`FeatureStats` entries (default :func:`default_cache_dir`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def paths(self, key: str) -> tuple[Path, Path]:
        """The (safetensors, JSON) paths of ``key``."""
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str, fields: dict[str, Any] | None = None) -> FeatureStats | None:
        """The entry of ``key``, or None when absent; a corrupted entry warns and gives None (recompute it)."""
        tensors_path, meta_path = self.paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = tensors_path.read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return self._corrupt(key, f"unreadable ({err})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            return self._corrupt(key, "not a gen-align FID statistics record")
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return self._corrupt(key, f"{tensors_path.name} does not match the sha256 recorded in {meta_path.name}")
        if fields is not None and meta.get("fields") != json.loads(json.dumps(fields)):
            return self._corrupt(key, "the recorded key fields differ from the requested ones")
        try:
            from safetensors.torch import load

            tensors = load(data)
            stats = FeatureStats(tensors["mu"], tensors["sigma"], int(tensors["n"]))
        except Exception as err:  # noqa: BLE001 - any decoding failure of a cache file means "recompute"
            return self._corrupt(key, f"undecodable ({type(err).__name__}: {err})")
        dim = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
        if stats.mu.dtype != torch.float64 or tuple(stats.sigma.shape) != (dim, dim) or stats.n != meta.get("n"):
            return self._corrupt(key, "tensor shapes, dtypes or n do not match the record")
        return stats

    def save(self, key: str, stats: FeatureStats, fields: dict[str, Any], **extra: Any) -> Path:
        """Write ``stats`` under ``key`` (safetensors, then the JSON record with its sha256); returns the JSON."""
        from safetensors.torch import save

        mu = stats.mu.detach().to("cpu", torch.float64).contiguous()
        sigma = stats.sigma.detach().to("cpu", torch.float64).contiguous()
        data = save({"mu": mu, "sigma": sigma, "n": torch.tensor(int(stats.n), dtype=torch.int64)})
        tensors_path, meta_path = self.paths(key)
        hint = f"Free disk space, or set GEN_ALIGN_HOME / pass cache_dir= to a writable directory ({self.root})."
        write_bytes_atomic(tensors_path, data, what="FID statistics", hint=hint)
        record = {
            "format": FORMAT,
            "key": key,
            "fields": fields,
            "n": int(stats.n),
            "num_features": int(mu.shape[0]),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        }
        return write_json_atomic(meta_path, record)

    def _corrupt(self, key: str, why: str) -> None:
        warnings.warn(
            f"cached FID statistics {key} in {self.root} are {why}; recomputing them.", StatsCacheWarning, stacklevel=3
        )
        return None


def reference_statistics(
    manifest: str | os.PathLike | Manifest,
    statistics: FeatureStatistics | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    skip_missing: bool = False,
    batch_size: int | None = None,
) -> FeatureStats:
    """(μ, Σ, n) of the images of ``manifest``, from the cache when an entry matches, else extracted and stored.

    ``statistics`` gives the extractor and preprocessing (default: Inception, antialias=True); it is reset, and
    after a cache miss it holds the reference features. Items without an image file are an error unless
    ``skip_missing`` (the ids used then enter the key). ``refresh`` recomputes even on a hit. Under an initialised
    ``torch.distributed`` (e.g. ``accelerate launch``) the images are split across ranks, ``compute()`` sums the
    states, and rank 0 writes the entry. Images replaced in place under the same paths are not detected (the key
    hashes the manifest, not the files): pass ``refresh=True`` then.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, modalities=["image"])
    statistics = FeatureStatistics() if statistics is None else statistics
    if statistics.kind == "features":
        raise ConfigError("reference_statistics needs an extractor; the given FeatureStatistics has extractor=None.")
    items = manifest.items_with("image")
    lacking = manifest.lacking("image")
    if lacking and not skip_missing:
        shown = ", ".join(item_id for item_id, _ in lacking[:5])
        raise InputFileError(
            f"{len(lacking)} of {len(manifest)} items in {manifest.path} have no image file (e.g. {shown}); add the "
            "images, or pass skip_missing=True to compute the reference statistics without them."
        )
    if len(items) < 2:
        raise InputFileError(f"{manifest.path} has {len(items)} item(s) with an image; FID needs at least 2.")
    fields: dict[str, Any] = {"manifest": hash_manifest(manifest), "modality": "image", **statistics.fingerprint()}
    if lacking:
        ids = "\n".join(sorted(item.id for item in items))
        fields["ids"] = hashlib.sha256(ids.encode("utf-8")).hexdigest()
    key = stats_key(fields)
    cache = StatsCache(cache_dir)
    statistics.reset()
    rank, world = _rank_world()
    cached = None if refresh else cache.load(key, fields)
    if _all_ranks_agree(cached is not None, statistics.device, world):
        return cached
    step = integer(batch_size, "batch_size") if batch_size is not None else statistics.batch_size
    paths = [item.image for item in items][rank::world]
    for start in tqdm(range(0, len(paths), step), desc="reference FID features", unit="batch", disable=rank != 0):
        statistics.update(paths[start : start + step])
    stats = statistics.compute()
    if rank == 0:
        cache.save(key, stats, fields, manifest_path=str(manifest.path), items=len(items))
    return stats


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_ranks_agree(hit: bool, device: torch.device, world: int) -> bool:
    """True only if every rank found the entry (so that either all ranks extract, or none does)."""
    if world == 1:
        return hit
    flag = torch.tensor([int(hit)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
