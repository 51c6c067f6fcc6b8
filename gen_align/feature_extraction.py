"""``gen-align encode``: frozen tower features of a manifest into a resumable sharded cache.

The cache stores each tower's output before any head (CLIP image/text embeddings, BEATs clip embeddings):
the input that heads are trained on. Under ``accelerate launch`` each process encodes ``items[rank::world]``
into its own shards and the main process merges the index at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gen_align.checks import positive
from gen_align.data.cache import FeatureCache, encode_to_cache
from gen_align.data.manifest import read_manifest
from gen_align.encoders.audio_io import check_duration
from gen_align.errors import ConfigError
from gen_align.io import write_json_atomic
from gen_align.space import AlignedSpace

ENCODABLE = ("image", "text", "audio")


def _portable(tower: dict[str, Any], space: str | os.PathLike) -> dict[str, Any]:
    """A tower config whose local source (relative to a checkpoint directory) is made absolute, so a space
    trained on this cache can find the tower again."""
    local = Path(space) / str(tower.get("source", ""))
    return {**tower, "source": str(local.resolve())} if Path(space).is_dir() and local.exists() else dict(tower)


def encode_manifest(
    manifest: str | os.PathLike,
    space: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    modalities: list[str],
    batch_size: int = 32,
    shard_size: int = 1024,
    weights_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    strict: bool = False,
    max_audio_seconds: float | None = None,
) -> dict[str, Any]:
    """Encode every item of ``manifest`` that has the modality; returns (and writes) a summary.

    A bad item (a missing, corrupt, silent or too long file, an empty text, NaN features) is skipped and listed in
    the summary's ``skipped`` (``{"id", "modality", "error"}``; it stays pending for a rerun), unless ``strict``,
    which stops at the first one. ``max_audio_seconds`` refuses longer audio files from their header, before they
    are decoded (None: no limit)."""
    from accelerate import PartialState

    if max_audio_seconds is not None:
        positive(max_audio_seconds, "max_audio_seconds", "Use None for no limit.")

    bad = sorted(set(modalities) - set(ENCODABLE))
    if bad or not modalities:
        raise ConfigError(f"--modalities must be a subset of {ENCODABLE}, got {modalities}.")
    state = PartialState()
    data = read_manifest(manifest, modalities=modalities)
    model = AlignedSpace.from_pretrained(space, modalities=modalities, weights_dir=weights_dir, device=state.device)
    identity = {"space": str(space), "towers": {m: _portable(model.config["towers"][m], space) for m in modalities}}
    cache = FeatureCache.open(
        out_dir, identity, shard_size, rank=state.process_index, world_size=state.num_processes, overwrite=overwrite
    )
    encoded = {}
    skipped: list[dict[str, str]] | None = None if strict else []
    with cache:
        for modality in modalities:
            items = data.items_with([modality])

            def encode_batch(batch: list, modality: str = modality) -> Any:
                inputs = [item.get(modality) for item in batch]
                if modality == "audio" and max_audio_seconds is not None:
                    for path in inputs:
                        check_duration(path, max_audio_seconds, hint="raise --max-audio-seconds to accept it")
                return model.encode_features(modality, inputs, batch_size=len(batch))

            encoded[modality] = encode_to_cache(
                items, modality, encode_batch, cache, batch_size, progress=progress, skipped=skipped
            )
    state.wait_for_everyone()
    if skipped is not None and state.num_processes > 1:
        from accelerate.utils import gather_object

        skipped = gather_object(skipped)
    summary = {
        "manifest": data.summary(),
        "encoded_now": encoded,
        "lacking": data.lacking(modalities),
        "skipped": skipped or [],
    }
    if state.is_main_process:
        if state.num_processes > 1:
            FeatureCache.merge_indexes(out_dir)
        write_json_atomic(Path(out_dir) / "encode_summary.json", summary)
    return summary
