"""Resumable, checksummed feature cache: sharded safetensors plus a JSON index.

Layout of a cache directory::

    index.json            format version, identity, dtype, shard size, {modality: dim},
                          shards {name: {modality, rank, rows, sha256, ids}}
    index-rank{r}.json    the same, for process r's shards, while a multi-process run is going
    shards/{modality}-{rank:03d}-{n:06d}.safetensors
                          one (rows, d) tensor "features"; its ids are also in the metadata

Crash safety: a full shard goes to a temporary file that is fsynced and renamed, and only then is the index
rewritten (atomically too), so a killed run loses at most the rows not yet in a finished shard.

Verification: :meth:`FeatureCache.open` (the writer) hashes every listed shard *eagerly*, so that
:meth:`~FeatureCache.pending` is exact; a missing or corrupted shard is reported with a
:class:`CacheWarning`, dropped from the index and its ids become pending again. Orphans (temporary files,
shards that never made it into the index) are deleted. :meth:`FeatureCache.load` (the reader) hashes
*lazily*: each shard when it is first read; :meth:`~FeatureCache.verify` checks everything.

Multi-process (accelerate): pass ``rank``/``world_size``; each process writes only its own shards and
``index-rank{r}.json``; after ``accelerator.wait_for_everyone()`` the main process calls
:meth:`FeatureCache.merge_indexes`. :func:`encode_to_cache` gives process ``r`` the items ``items[r::world]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gen_align.data.manifest import MODALITIES, ManifestItem
from gen_align.errors import BAD_INPUT_ERRORS, ConfigError, EmbeddingError, GenAlignError, InputFileError, OutputError
from gen_align.io import FolderLock, write_bytes_atomic, write_text_atomic

FORMAT = "gen-align-feature-cache"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SHARD_DIR = "shards"
TENSOR_KEY = "features"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_MODALITY = re.compile(r"^[A-Za-z0-9_]+$")
_SHARD = re.compile(r"^(?P<modality>[A-Za-z0-9_]+)-(?P<rank>\d{3,})-(?P<n>\d{6,})\.safetensors$")
_SHARD_TMP = re.compile(r"^\.(?P<name>.+?\.safetensors)\..*\.tmp$")
_FRAGMENT = re.compile(r"^index-rank(?P<rank>\d+)\.json$")


class CacheWarning(UserWarning):
    """A shard was missing or corrupted and will be recomputed, or ids appear twice."""


class MissingFeaturesError(GenAlignError, LookupError):
    """The cache holds no features for some requested ids or modality."""


class FeatureCache:
    """Writer (:meth:`open`) or reader (:meth:`load`) of a feature-cache directory."""

    def __init__(self, out_dir: Path, header: dict[str, Any], *, writable: bool, rank: int, world_size: int):
        self.dir = out_dir
        self.identity: dict[str, Any] = header["identity"]
        self.dtype: torch.dtype = _DTYPES[header["dtype"]]
        self.shard_size: int = header["shard_size"]
        self.rank, self.world_size, self.writable = rank, world_size, writable
        self._dims: dict[str, int] = dict(header["modalities"])
        self._shards: dict[str, dict[str, Any]] = {}  # good shards: own and (multi-process) other processes'
        self._own: set[str] = set()  # shards listed in this writer's own index file
        self._where: dict[str, dict[str, tuple[str, int]]] = {}  # modality -> id -> (shard, row)
        self._next: dict[str, int] = {}
        self._buf_ids: dict[str, list[str]] = {}
        self._buf_rows: dict[str, list[torch.Tensor]] = {}
        self._verified: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        out_dir: str | os.PathLike,
        identity: dict[str, Any],
        shard_size: int = 1024,
        *,
        dtype: str | torch.dtype = "float32",
        rank: int = 0,
        world_size: int = 1,
        overwrite: bool = False,
    ) -> FeatureCache:
        """Create or resume a cache for writing.

        ``identity`` (e.g. ``{"preset": ..., "space_hash": ...}``) must equal the stored one; features are
        stored as ``dtype``. With ``world_size > 1`` this process writes ``index-rank{rank}.json`` only.
        ``overwrite`` discards an existing cache (single process only; otherwise call :meth:`clear` on
        the main process first).
        """
        out_dir = Path(out_dir)
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}.")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}.")
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"feature cache path {out_dir} is a file; choose a directory.")
        lock = FolderLock(out_dir, f"rank{rank}").acquire()  # before anything is cleared or resumed
        try:
            return cls._open_locked(out_dir, identity, shard_size, dtype, rank, world_size, overwrite, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(
        cls,
        out_dir: Path,
        identity: dict[str, Any],
        shard_size: int,
        dtype: str | torch.dtype,
        rank: int,
        world_size: int,
        overwrite: bool,
        lock: FolderLock,
    ) -> FeatureCache:
        if overwrite:
            if world_size > 1:
                raise ConfigError(
                    "overwrite=True is only safe in a single process; call FeatureCache.clear(out_dir) on the "
                    "main process, wait for everyone, then open without overwrite."
                )
            cls.clear(out_dir)
        header = _header(_normalise_identity(identity), _dtype_name(dtype), shard_size)
        parts = _read_parts(out_dir)
        if parts:
            existing = _union(out_dir, parts)
            _check_compatible(out_dir, existing, header)
            header["modalities"] = existing["modalities"]
        try:
            (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"could not create feature cache {out_dir}: {err.strerror or err}.") from err
        cache = cls(out_dir, header, writable=True, rank=rank, world_size=world_size)
        cache._lock = lock
        cache._resume(parts)
        return cache

    @classmethod
    def load(cls, out_dir: str | os.PathLike, *, identity: dict[str, Any] | None = None) -> FeatureCache:
        """Open a cache for reading (shards are verified lazily); check ``identity`` when given."""
        out_dir = Path(out_dir)
        parts = _read_parts(out_dir)
        if not parts:
            raise InputFileError(
                f"no feature cache in {out_dir} ({INDEX_NAME} not found). Extract features there first "
                "(FeatureCache.open + encode_to_cache)."
            )
        merged = _union(out_dir, parts)
        if identity is not None:
            _check_identity(out_dir, merged["identity"], _normalise_identity(identity))
        cache = cls(out_dir, merged, writable=False, rank=0, world_size=1)
        for name in sorted(merged["shards"]):
            cache._add_shard(name, merged["shards"][name], own=False)
        return cache

    @classmethod
    def clear(cls, out_dir: str | os.PathLike) -> None:
        """Delete the cache files in ``out_dir`` (index files and ``shards/``); other files are kept."""
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            return
        try:
            for path in out_dir.iterdir():
                if path.name == INDEX_NAME or _FRAGMENT.match(path.name) or _is_index_tmp(path.name):
                    path.unlink()
            if (out_dir / SHARD_DIR).exists():
                shutil.rmtree(out_dir / SHARD_DIR)
        except OSError as err:
            raise OutputError(f"could not clear feature cache {out_dir}: {err.strerror or err}.") from err

    @classmethod
    def merge_indexes(cls, out_dir: str | os.PathLike, *, verify: bool = True) -> Path:
        """Merge ``index-rank*.json`` fragments into ``index.json`` (main process, after all finished).

        With ``verify`` every shard is hashed; bad ones are dropped (with a :class:`CacheWarning`) and
        deleted. Fragments are removed once ``index.json`` is written. Returns the index path.
        """
        out_dir = Path(out_dir)
        parts = _read_parts(out_dir)
        if not parts:
            raise InputFileError(f"nothing to merge: no {INDEX_NAME} or index-rank*.json in {out_dir}.")
        merged = _union(out_dir, parts)
        if verify:
            for name, entry in sorted(merged["shards"].items()):
                problem = _shard_problem(out_dir, name, entry)
                if problem:
                    _warn_bad(out_dir, name, entry, problem)
                    del merged["shards"][name]
                    _unlink(out_dir / SHARD_DIR / name)
        _warn_duplicates(out_dir, merged["shards"])
        index_path = _write_index(out_dir / INDEX_NAME, merged)
        for path, _ in parts:
            if path.name != INDEX_NAME:
                _unlink(path)
        return index_path

    def _resume(self, parts: list[tuple[Path, dict[str, Any]]]) -> None:
        """Verify listed shards, adopt the good ones, delete orphans, write this writer's index file."""
        own_file = self._index_path().name
        listed: set[str] = set()
        for path, index in parts:
            mine = self.world_size == 1 or path.name == own_file
            for name, entry in sorted(index["shards"].items()):
                if name in listed:  # also in index.json (a merge was interrupted before removing fragments)
                    continue
                listed.add(name)
                problem = _shard_problem(self.dir, name, entry)
                if not problem:
                    self._add_shard(name, entry, own=mine)
                    continue
                _warn_bad(self.dir, name, entry, problem)
                if mine:  # other processes' index files are theirs to fix (merge_indexes drops it later)
                    listed.discard(name)
                    _unlink(self.dir / SHARD_DIR / name)
        self._delete_orphans(listed)
        for name in listed | {p.name for p in (self.dir / SHARD_DIR).iterdir()}:
            match = _SHARD.match(name)
            if match and int(match["rank"]) == self.rank:
                modality = match["modality"]
                self._next[modality] = max(self._next.get(modality, 0), int(match["n"]) + 1)
        self._write_own_index()
        if self.world_size == 1:  # fragments of an earlier multi-process run are now folded into index.json
            for path, _ in parts:
                if path.name != INDEX_NAME:
                    _unlink(path)

    def _delete_orphans(self, listed: set[str]) -> None:
        def owned(name: str) -> bool:
            match = _SHARD.match(name)
            return self.world_size == 1 or (match is not None and int(match["rank"]) == self.rank)

        for path in (self.dir / SHARD_DIR).iterdir():
            tmp = _SHARD_TMP.match(path.name)
            unlisted_shard = _SHARD.match(path.name) and path.name not in listed
            if (tmp and owned(tmp["name"])) or (unlisted_shard and owned(path.name)):
                _unlink(path)
        own_index = self._index_path().name
        for path in self.dir.iterdir():
            if _is_index_tmp(path.name) and (self.world_size == 1 or path.name.startswith(f".{own_index}.")):
                _unlink(path)

    # ------------------------------------------------------------------ writing
    def pending(self, ids: Iterable[str], modality: str) -> list[str]:
        """The ids (in the given order, without repeats) not yet written for ``modality``."""
        done = self._where.get(modality, {})
        buffered = set(self._buf_ids.get(modality, ()))
        out: list[str] = []
        seen: set[str] = set()
        for item_id in ids:
            if item_id not in done and item_id not in buffered and item_id not in seen:
                seen.add(item_id)
                out.append(item_id)
        return out

    def write(self, modality: str, ids: Sequence[str], tensor: torch.Tensor) -> None:
        """Buffer ``(len(ids), d)`` features; every full shard is written to disk at once.

        Features are checked (2-D float, finite, consistent dimension) and stored as the cache dtype.
        """
        ids = list(ids)
        self._write_checked(modality, ids, check_features(tensor, ids, modality, self._dims.get(modality), "write"))

    def flush(self, modality: str | None = None) -> None:
        """Write the buffered rows of ``modality`` (default: all) as a final, possibly partial shard."""
        self._require_writable()
        for m in [modality] if modality is not None else list(self._buf_ids):
            while self._buf_ids.get(m):
                self._flush_shard(m, min(len(self._buf_ids[m]), self.shard_size))

    def close(self) -> None:
        """Flush every partial shard, write the index and let the next writer in."""
        try:
            self.flush()
            self._write_own_index()
        finally:
            self._release()

    def _release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Close on success; on an exception the buffered rows are dropped, as a kill would (the lock is let go)."""
        if exc_type is None and self.writable:
            self.close()
        else:
            self._release()

    def _write_checked(self, modality: str, ids: list[str], tensor: torch.Tensor) -> None:
        self._require_writable()
        if not _MODALITY.match(modality):
            raise ConfigError(f"modality {modality!r} must be letters, digits or '_' (it names shard files).")
        if not ids:
            return
        if not all(isinstance(i, str) and i for i in ids):
            raise ConfigError("ids must be non-empty strings.")
        if len(self.pending(ids, modality)) != len(ids):
            seen: set[str] = set()
            done = set(self._where.get(modality, ())) | set(self._buf_ids.get(modality, ()))
            again = [i for i in ids if i in done or i in seen or seen.add(i)][:5]
            raise ConfigError(
                f"ids {again} are repeated or already in the {modality} cache; write each id once "
                "(filter with cache.pending(ids, modality))."
            )
        self._dims.setdefault(modality, tensor.shape[1])
        self._buf_ids.setdefault(modality, []).extend(ids)
        self._buf_rows.setdefault(modality, []).append(tensor.detach().to(device="cpu", dtype=self.dtype, copy=True))
        while len(self._buf_ids[modality]) >= self.shard_size:
            self._flush_shard(modality, self.shard_size)

    def _flush_shard(self, modality: str, rows: int) -> None:
        from safetensors.torch import save

        ids = self._buf_ids[modality][:rows]
        buffered = torch.cat(self._buf_rows[modality])
        features = buffered[:rows].contiguous()
        n = self._next.get(modality, 0)
        name = f"{modality}-{self.rank:03d}-{n:06d}.safetensors"
        data = save({TENSOR_KEY: features}, metadata={"format": FORMAT, "modality": modality, "ids": json.dumps(ids)})
        path = self.dir / SHARD_DIR / name
        write_bytes_atomic(
            path,
            data,
            what=f"feature shard {path}",
            hint="Free disk space (or choose another directory) and rerun: finished shards are kept.",
        )
        entry = {"modality": modality, "rank": self.rank, "rows": rows, "sha256": hashlib.sha256(data).hexdigest()}
        self._add_shard(name, {**entry, "ids": ids}, own=True)
        self._verified.add(name)
        try:
            self._write_own_index()
        except OutputError:
            self._remove_shard(name)
            _unlink(path)
            raise
        self._next[modality] = n + 1
        self._buf_ids[modality] = self._buf_ids[modality][rows:]
        self._buf_rows[modality] = [buffered[rows:].clone()] if self._buf_ids[modality] else []

    def _add_shard(self, name: str, entry: dict[str, Any], *, own: bool) -> None:
        self._shards[name] = entry
        if own:
            self._own.add(name)
        where = self._where.setdefault(entry["modality"], {})
        for row, item_id in enumerate(entry["ids"]):
            where.setdefault(item_id, (name, row))

    def _remove_shard(self, name: str) -> None:
        entry = self._shards.pop(name)
        self._own.discard(name)
        self._verified.discard(name)
        where = self._where[entry["modality"]]
        for item_id in entry["ids"]:
            if where.get(item_id, ("",))[0] == name:
                del where[item_id]

    def _index_path(self) -> Path:
        return self.dir / (INDEX_NAME if self.world_size == 1 else f"index-rank{self.rank}.json")

    def _write_own_index(self) -> None:
        self._require_writable()
        header = _header(self.identity, _dtype_name(self.dtype), self.shard_size)
        header["modalities"] = dict(sorted(self._dims.items()))
        header["shards"] = {name: self._shards[name] for name in sorted(self._own)}
        _write_index(self._index_path(), header)

    def _require_writable(self) -> None:
        if not self.writable:
            raise ConfigError(f"feature cache {self.dir} was opened with load() for reading; use FeatureCache.open.")

    # ------------------------------------------------------------------ reading
    @property
    def modalities(self) -> list[str]:
        """Modalities that have at least one stored row."""
        return sorted(m for m, where in self._where.items() if where)

    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def ids(self, modality: str) -> list[str]:
        """The stored ids of ``modality`` in storage order (shard name, then row)."""
        return list(self._where.get(modality, {}))

    def common_ids(self, modalities: Iterable[str]) -> list[str]:
        """Sorted ids that have features for every one of ``modalities``."""
        modalities = list(modalities)
        for m in modalities:
            self._require_modality(m)
        common = set.intersection(*(set(self._where[m]) for m in modalities)) if modalities else set()
        return sorted(common)

    def get(self, modality: str, ids: Sequence[str]) -> torch.Tensor:
        """Features of ``ids`` as an ``(len(ids), d)`` tensor in the given order (verified on first read)."""
        where = self._require_modality(modality)
        missing = [i for i in ids if i not in where]
        if missing:
            raise MissingFeaturesError(
                f"{len(missing)} of {len(ids)} ids have no {modality} features in {self.dir}, e.g. {missing[:5]}. "
                "Run the extraction for them (it resumes), or pick ids from cache.ids()/common_ids()."
            )
        out = torch.empty(len(ids), self._dims[modality], dtype=self.dtype)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for position, item_id in enumerate(ids):
            name, row = where[item_id]
            targets, rows = by_shard.setdefault(name, ([], []))
            targets.append(position)
            rows.append(row)
        for name, (targets, rows) in by_shard.items():
            out[torch.tensor(targets)] = self._read_shard(name)[torch.tensor(rows)]
        return out

    def to_dict(self, modalities: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """``{modality: (N, d)}`` aligned row by row on :meth:`common_ids` (default: all modalities)."""
        modalities = self.modalities if modalities is None else list(modalities)
        ids = self.common_ids(modalities)
        if not ids:
            raise MissingFeaturesError(f"no id in {self.dir} has features for all of {modalities}.")
        return {m: self.get(m, ids) for m in modalities}

    def verify(self) -> list[str]:
        """Check every shard (file, sha256, tensor shape, ids) and the directory; return the problems."""
        problems = []
        for name, entry in sorted(self._shards.items()):
            problem = _shard_problem(self.dir, name, entry, deep=True, dim=self._dims.get(entry["modality"]))
            if problem:
                problems.append(f"shard {name}: {problem}")
        for modality in self._where:
            count = sum(e["rows"] for e in self._shards.values() if e["modality"] == modality)
            if count != len(self._where[modality]):
                problems.append(f"{modality}: {count - len(self._where[modality])} ids are stored more than once")
        listed = set(self._shards)
        shard_dir = self.dir / SHARD_DIR
        for path in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
            if path.name not in listed:
                problems.append(f"{SHARD_DIR}/{path.name}: not listed in the index (left by an interrupted run)")
        for path in sorted(self.dir.glob("index-rank*.json")):
            problems.append(f"{path.name}: not merged; run FeatureCache.merge_indexes({str(self.dir)!r})")
        return problems

    def _require_modality(self, modality: str) -> dict[str, tuple[str, int]]:
        where = self._where.get(modality)
        if not where:
            raise MissingFeaturesError(
                f"feature cache {self.dir} holds no {modality!r} features; it has {self.modalities or 'none'}."
            )
        return where

    def _read_shard(self, name: str) -> torch.Tensor:
        from safetensors.torch import load

        entry, path = self._shards[name], self.dir / SHARD_DIR / name
        fix = "Reopen the cache with FeatureCache.open (rerun the extraction into the same directory) to redo it."
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputFileError(f"feature shard {path} cannot be read ({err.strerror or err}). {fix}") from err
        if name not in self._verified and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise InputFileError(f"feature shard {path} is corrupted (sha256 differs from the index). {fix}")
        tensor = load(data).get(TENSOR_KEY)
        if tensor is None or tuple(tensor.shape) != (entry["rows"], self._dims[entry["modality"]]):
            raise InputFileError(f"feature shard {path} does not hold the ({entry['rows']}, d) tensor indexed. {fix}")
        self._verified.add(name)
        return tensor


def encode_to_cache(
    items: Sequence[Any],
    modality: str,
    encode_fn: Callable[[list[Any]], torch.Tensor],
    cache: FeatureCache,
    batch_size: int,
    progress: bool = True,
    skipped: list[dict[str, str]] | None = None,
) -> int:
    """Encode this process's share ``items[rank::world_size]`` of the items not yet cached.

    ``encode_fn(list_of_items)`` must return an ``(n, d)`` float tensor; its output is checked (shape,
    dtype, finite values; errors name the ids) and written. The final partial shard is flushed.
    Items need an ``id`` attribute (e.g. :class:`~gen_align.data.manifest.ManifestItem`). Returns how
    many items were encoded.

    ``skipped``: without it, the first bad item stops the run (its error is raised). With a list, a bad item —
    an input the encoder refuses (:class:`InputFileError`, :class:`InputDataError`: a missing, corrupt, silent or
    too long file, an empty text) or one whose features are NaN/inf — is left out and appended as ``{"id",
    "modality", "error"}``; the rest of its batch is encoded one item at a time and written. A skipped item stays
    pending, so a rerun tries it again. Errors of the encoder itself (wrong shape, dtype or dimension) still stop.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    mine = list(items)[cache.rank :: cache.world_size]
    by_id: dict[str, Any] = {}
    for item in mine:
        if item.id in by_id:
            raise ConfigError(f"item id {item.id!r} appears twice; ids must be unique.")
        by_id[item.id] = item
    lacking = [item.id for item in mine if _lacks(item, modality)]
    if lacking:
        raise ConfigError(
            f"{len(lacking)} items have no {modality}, e.g. {lacking[:5]}; pass manifest.items_with([{modality!r}])."
        )
    todo = cache.pending(by_id, modality)
    desc = f"{modality} features" + (f" [rank {cache.rank}/{cache.world_size}]" if cache.world_size > 1 else "")
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="item", disable=not progress) as bar:
        encoded = 0
        for start in range(0, len(todo), batch_size):
            batch_ids = todo[start : start + batch_size]
            if skipped is None:
                output = encode_fn([by_id[i] for i in batch_ids])
                checked = check_features(output, batch_ids, modality, cache.dims.get(modality), "encode_fn")
            else:
                batch_ids, checked = _encode_skipping(encode_fn, by_id, batch_ids, modality, cache, skipped)
            cache._write_checked(modality, batch_ids, checked)
            encoded += len(batch_ids)
            bar.update(len(todo[start : start + batch_size]))
    cache.flush(modality)
    return encoded


def _encode_skipping(
    encode_fn: Callable[[list[Any]], torch.Tensor],
    by_id: dict[str, Any],
    batch_ids: list[str],
    modality: str,
    cache: FeatureCache,
    skipped: list[dict[str, str]],
) -> tuple[list[str], torch.Tensor]:
    """One batch's (ids, features) without its bad items, which are appended to ``skipped``."""
    try:
        rows = [(batch_ids, encode_fn([by_id[i] for i in batch_ids]))]
    except BAD_INPUT_ERRORS:  # find the culprits: one item at a time
        rows = []
        for i in batch_ids:
            try:
                rows.append(([i], encode_fn([by_id[i]])))
            except BAD_INPUT_ERRORS as err:
                skipped.append({"id": i, "modality": modality, "error": str(err)})
    ids = [i for part, _ in rows for i in part]
    dim = cache.dims.get(modality)
    tensors = [check_features(out, part, modality, dim, "encode_fn", finite=False) for part, out in rows]
    if not tensors:
        return [], torch.empty(0, dim or 1)
    features = torch.cat(tensors)
    finite = torch.isfinite(features.detach()).all(dim=1)
    for index in torch.nonzero(~finite).flatten().tolist():
        skipped.append({"id": ids[index], "modality": modality, "error": "the encoder gave NaN/inf features"})
    keep = finite.tolist()
    return [i for i, ok in zip(ids, keep, strict=True) if ok], features[finite]


def check_features(
    tensor: object,
    ids: Sequence[str],
    modality: str,
    dim: int | None = None,
    source: str = "features",
    *,
    finite: bool = True,
) -> torch.Tensor:
    """Return ``tensor`` if it is a ``(len(ids), dim)`` float tensor (and finite unless ``finite`` is False), else
    raise EmbeddingError."""
    n = len(ids)
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingError(
            f"{source} gave {type(tensor).__name__} for {n} {modality} items; expected a Tensor (n, d)."
        )
    if tensor.ndim != 2 or tensor.shape[0] != n or tensor.shape[1] == 0:
        raise EmbeddingError(
            f"{source} gave shape {tuple(tensor.shape)} for {n} {modality} items; expected ({n}, d), one row per item."
        )
    if not tensor.is_floating_point():
        raise EmbeddingError(f"{source} gave a {tensor.dtype} tensor for {modality}; expected floating point features.")
    if dim is not None and tensor.shape[1] != dim:
        raise EmbeddingError(
            f"{source} gave {modality} features of dimension {tensor.shape[1]}, but the cache holds dimension {dim}; "
            "use the same encoder, or a new cache directory."
        )
    bad = ~torch.isfinite(tensor.detach()).all(dim=1)
    if finite and bool(bad.any()):
        bad_ids = [ids[i] for i in torch.nonzero(bad).flatten()[:5].tolist()]
        raise EmbeddingError(
            f"{source} gave NaN/inf {modality} features for {int(bad.sum())} item(s), e.g. {bad_ids}. Check those "
            "inputs (silent or corrupt files) and the encoder's precision (try float32)."
        )
    return tensor


# ---------------------------------------------------------------------- index files
def _header(identity: dict[str, Any], dtype: str, shard_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "dtype": dtype,
        "shard_size": shard_size,
        "modalities": {},
        "shards": {},
    }


def _write_index(path: Path, index: dict[str, Any]) -> Path:
    """Indented header, one compact line per shard (the index grows with every shard)."""
    head = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in index.items() if k != "shards"]
    shards = [
        f"    {json.dumps(name)}: {json.dumps(entry, ensure_ascii=False, separators=(',', ':'))}"
        for name, entry in sorted(index["shards"].items())
    ]
    body = ",\n".join(shards)
    return write_text_atomic(
        path, "{\n" + "\n".join(head) + '\n  "shards": {' + (f"\n{body}\n  " if body else "") + "}\n}\n"
    )


def _read_parts(out_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``index.json`` (if any) then the fragments in rank order, each validated."""
    if not out_dir.is_dir():
        return []
    fragments = sorted((int(m["rank"]), p) for p in out_dir.iterdir() if (m := _FRAGMENT.match(p.name)))
    paths = ([out_dir / INDEX_NAME] if (out_dir / INDEX_NAME).is_file() else []) + [p for _, p in fragments]
    return [(p, _read_index(p)) for p in paths]


def _read_index(path: Path) -> dict[str, Any]:
    def bad(what: str) -> InputFileError:
        return InputFileError(
            f"{path} is not a valid feature-cache index ({what}). Delete {path.parent} or open it with "
            "overwrite=True (--overwrite) to rebuild the cache."
        )

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(str(err)) from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise bad(f'"format" is not {FORMAT!r}')
    if index.get("format_version") != FORMAT_VERSION:
        raise bad(f"format version {index.get('format_version')!r}, this gen-align reads {FORMAT_VERSION}")
    if not isinstance(index.get("identity"), dict) or index.get("dtype") not in _DTYPES:
        raise bad("identity or dtype")
    if not isinstance(index.get("shard_size"), int) or not isinstance(index.get("modalities"), dict):
        raise bad("shard_size or modalities")
    if not all(isinstance(d, int) and d > 0 for d in index["modalities"].values()):
        raise bad("modality dimensions")
    shards = index.get("shards")
    if not isinstance(shards, dict):
        raise bad("shards")
    for name, entry in shards.items():
        match = _SHARD.match(name)
        ok = (
            match is not None
            and isinstance(entry, dict)
            and entry.get("modality") == match["modality"]
            and match["modality"] in index["modalities"]
            and isinstance(entry.get("rows"), int)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("ids"), list)
            and len(entry["ids"]) == entry["rows"]
            and all(isinstance(i, str) for i in entry["ids"])
        )
        if not ok:
            raise bad(f"entry of shard {name!r}")
    return index


def _union(out_dir: Path, parts: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """One index holding the shards of all parts; they must agree on identity, dtype and dimensions."""
    first_path, first = parts[0]
    merged = {**first, "modalities": dict(first["modalities"]), "shards": dict(first["shards"])}
    for path, index in parts[1:]:
        if index["identity"] != first["identity"] or index["dtype"] != first["dtype"]:
            raise ConfigError(
                f"{path.name} and {first_path.name} in {out_dir} disagree on identity or dtype (files of two "
                "different runs). Use a new output directory or --overwrite."
            )
        for modality, dim in index["modalities"].items():
            if merged["modalities"].setdefault(modality, dim) != dim:
                raise ConfigError(
                    f"{path.name} stores {modality} features of dimension {dim}, another index a different one."
                )
        for name, entry in index["shards"].items():
            if merged["shards"].setdefault(name, entry) != entry:
                raise InputFileError(
                    f"shard {name} has two different index entries in {out_dir}; delete it and extract again."
                )
    return merged


def _check_compatible(out_dir: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    _check_identity(out_dir, existing["identity"], wanted["identity"])
    if existing["dtype"] != wanted["dtype"]:
        raise ConfigError(
            f"feature cache {out_dir} stores {existing['dtype']} features, not {wanted['dtype']}. Open it with "
            f"dtype={existing['dtype']!r}, or use a new output directory or --overwrite."
        )


def _check_identity(out_dir: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    if existing == wanted:
        return
    differ = sorted(k for k in set(existing) | set(wanted) if existing.get(k, ...) != wanted.get(k, ...))
    raise ConfigError(
        f"feature cache {out_dir} was built for {json.dumps(existing, sort_keys=True)}, not "
        f"{json.dumps(wanted, sort_keys=True)} (differs in: {', '.join(differ)}). Its features would not match: "
        "use a new output directory, or pass --overwrite (overwrite=True) to discard them."
    )


def _normalise_identity(identity: object) -> dict[str, Any]:
    if not isinstance(identity, dict):
        raise ConfigError(f"identity must be a dict such as {{'preset': ..., 'space_hash': ...}}, got {identity!r}.")
    try:
        return json.loads(json.dumps(identity, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"identity must be JSON-serialisable (strings, numbers, lists, dicts): {err}.") from err


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(f"unsupported cache dtype {dtype!r}; choose from {', '.join(_DTYPES)}.")
    return name


# ---------------------------------------------------------------------- shard files
def _shard_problem(
    out_dir: Path, name: str, entry: dict[str, Any], *, deep: bool = False, dim: int | None = None
) -> str | None:
    """Why the shard is unusable (missing, sha256 mismatch; with ``deep`` also its contents), or None."""
    path = out_dir / SHARD_DIR / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return "corrupted (sha256 differs from the index)"
    if deep:
        from safetensors.torch import load

        try:
            tensor = load(data)[TENSOR_KEY]
            metadata = _safetensors_metadata(data)
        except Exception as err:  # noqa: BLE001 - any parse failure is a problem to report
            return f"not a readable safetensors file ({err})"
        if tuple(tensor.shape) != (entry["rows"], dim):
            return f"holds shape {tuple(tensor.shape)}, the index says ({entry['rows']}, {dim})"
        if "ids" in metadata and json.loads(metadata["ids"]) != entry["ids"]:
            return "its ids differ from the index"
    return None


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}


def _warn_bad(out_dir: Path, name: str, entry: dict[str, Any], problem: str) -> None:
    warnings.warn(
        f"feature cache {out_dir}: shard {name} is {problem}; dropped from the index, its {entry['rows']} "
        f"{entry['modality']} items will be encoded again.",
        CacheWarning,
        stacklevel=3,
    )


def _warn_duplicates(out_dir: Path, shards: dict[str, dict[str, Any]]) -> None:
    seen: set[tuple[str, str]] = set()
    repeated = []
    for name in sorted(shards):
        for item_id in shards[name]["ids"]:
            key = (shards[name]["modality"], item_id)
            if key in seen:
                repeated.append(key)
            seen.add(key)
    if repeated:
        warnings.warn(
            f"feature cache {out_dir}: {len(repeated)} ids are stored more than once, e.g. {repeated[:3]}; the first "
            "copy is used. Did the processes get different item lists?",
            CacheWarning,
            stacklevel=3,
        )


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"could not delete {path}: {err.strerror or err}.") from err


def _is_index_tmp(name: str) -> bool:
    return name.startswith(".index") and name.endswith(".tmp")


def _lacks(item: object, modality: str) -> bool:
    return isinstance(item, ManifestItem) and modality in MODALITIES and not item.has(modality)
