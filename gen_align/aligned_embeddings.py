"""``gen-align embed``: a manifest's embeddings in the aligned space (tower features through the trained heads), with
the manifest ids, in one safetensors file that ``gen-align retrieve`` reads.

The tower features go through the resumable feature cache first (:func:`~gen_align.feature_extraction.encode_manifest`,
so a killed run resumes, bad items are skipped and listed, ``accelerate launch`` splits the work); then every item
that has all the requested modalities is mapped by :meth:`AlignedSpace.project` (the heads and the output norm; the
anchor passes unchanged). Rows are paired: row ``i`` of every tensor is the item ``ids[i]``. The ids, the space and the
modalities are stored in the file's metadata (:func:`read_embedding_ids`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gen_align.data.cache import FeatureCache
from gen_align.data.manifest import read_manifest
from gen_align.errors import ConfigError, InputFileError
from gen_align.feature_extraction import encode_manifest
from gen_align.io import write_json_atomic, write_safetensors_atomic
from gen_align.space import AlignedSpace

FORMAT = "gen-align-embeddings"


def embed_manifest(
    manifest: str | os.PathLike,
    space: str | os.PathLike,
    out: str | os.PathLike,
    *,
    modalities: list[str],
    cache_dir: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    **encode_options: Any,
) -> dict[str, Any]:
    """Write ``out`` (``{modality: (N, d)}`` + ids) and ``<out>.json`` (the summary); returns the summary.
    ``cache_dir`` holds the tower features (default ``<out without suffix>.features``); ``encode_options`` go to
    :func:`~gen_align.feature_extraction.encode_manifest` (batch_size, strict, max_audio_seconds, progress, ...)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors (the embeddings file `gen-align retrieve` reads).")
    cache_dir = Path(cache_dir) if cache_dir is not None else out.with_suffix(".features")
    encoded = encode_manifest(manifest, space, cache_dir, modalities=modalities, weights_dir=weights_dir,
                              **encode_options)  # fmt: skip
    cache = FeatureCache.load(cache_dir)
    cached = {m: set(cache.ids(m)) for m in modalities}
    data = read_manifest(manifest, modalities=modalities)
    ids = [item.id for item in data.items_with(modalities) if all(item.id in cached[m] for m in modalities)]
    if not ids:
        raise InputFileError(
            f"no item of {manifest} has every modality of {modalities} encoded (see {cache_dir}/encode_summary.json); "
            "pass fewer --modalities or fix the skipped inputs."
        )
    model = AlignedSpace.from_pretrained(space, modalities=[], heads=modalities, weights_dir=weights_dir)
    tensors = {m: model.project(m, cache.get(m, ids).float()).float().contiguous() for m in modalities}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ConfigError(f"the heads of {space} produced NaN/inf embeddings; check the space's weights.")
    metadata = {"format": FORMAT, "ids": json.dumps(ids), "space": str(space), "modalities": json.dumps(modalities)}
    write_safetensors_atomic(out, tensors, metadata)
    summary = {
        "out": str(out),
        "space": str(space),
        "rows": len(ids),
        "dims": {m: int(t.shape[1]) for m, t in tensors.items()},
        "features": str(cache_dir),
        "left_out": [item.id for item in data.items if item.id not in set(ids)],
        "skipped": encoded["skipped"],
    }
    write_json_atomic(out.with_suffix(".json"), summary)
    return summary


def read_embedding_ids(path: str | os.PathLike) -> list[str] | None:
    """The row ids a ``gen-align embed`` file records (None for a plain safetensors file of tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT or "ids" not in metadata:
        return None
    return list(json.loads(metadata["ids"]))
