"""Training data: cached tower features (heads mode) or cached anchor features + raw manifest inputs
(end-to-end mode), split by a seeded permutation and cut into deterministic batches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from gen_align.data.cache import FeatureCache
from gen_align.errors import ConfigError


class _SplitData:
    """A seeded train/validation split of ``n`` aligned items and deterministic full batches."""

    def _split(self, n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if val_size >= n:
            raise ConfigError(f"val_size={val_size} leaves no training items ({n} usable); lower val_size.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.split_rows = {"train": order[val_size:].sort().values, "val": order[:val_size].sort().values}
        return self.split_rows["train"], self.split_rows["val"]

    def size(self, split: str) -> int:
        return len(self.split_rows[split])

    @property
    def num_train(self) -> int:
        return self.size("train")

    def steps_per_epoch(self, batch_size: int) -> int:
        steps = self.num_train // batch_size
        if steps == 0:
            raise ConfigError(
                f"batch_size={batch_size} is larger than the {self.num_train} training items; lower batch_size."
            )
        return steps

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """Row indices of each full batch of ``epoch`` (a seeded shuffle per epoch; the last partial batch
        is dropped so every batch has ``batch_size`` items)."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_train, generator=generator)
        for i in range(self.steps_per_epoch(batch_size)):
            yield order[i * batch_size : (i + 1) * batch_size]


def _cached(cache_dir: str | os.PathLike, modalities: list[str] | None, anchor: str) -> tuple[FeatureCache, list]:
    cache = FeatureCache.load(cache_dir)
    chosen = list(modalities or cache.modalities)
    if anchor not in chosen:
        raise ConfigError(f"the anchor {anchor!r} is not among the modalities {chosen}.")
    if len(chosen) < 2:
        raise ConfigError(f"training needs the anchor and at least one other modality, got {chosen}.")
    return cache, chosen


class FeatureData(_SplitData):
    """All modalities' cached features, aligned on the ids present in every one of them."""

    def __init__(
        self, cache_dir: str | os.PathLike, modalities: list[str] | None, anchor: str, val_size: int, seed: int
    ) -> None:
        cache, self.modalities = _cached(cache_dir, modalities, anchor)
        self.anchor, self.identity = anchor, cache.identity
        features = {m: f.float() for m, f in cache.to_dict(self.modalities).items()}
        train, val = self._split(next(iter(features.values())).shape[0], val_size, seed)
        self.train = {m: f[train] for m, f in features.items()}
        self.val = {m: f[val] for m, f in features.items()}

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(f.shape[1]) for m, f in self.train.items()}

    def batch(self, split: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m: f[rows] for m, f in (self.train if split == "train" else self.val).items()}


class ManifestData(_SplitData):
    """Cached anchor features next to the raw inputs (text strings, audio paths) of the other modalities,
    for the items that have all of them."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        manifest: str | os.PathLike,
        modalities: list[str] | None,
        anchor: str,
        val_size: int,
        seed: int,
    ) -> None:
        from gen_align.data.manifest import read_manifest

        cache, chosen = _cached(cache_dir, modalities or None, anchor)
        self.modalities, self.anchor, self.identity = chosen, anchor, cache.identity
        raw = [m for m in chosen if m != anchor]
        items = {item.id: item for item in read_manifest(manifest, modalities=raw).items_with(raw)}
        ids = sorted(set(items) & set(cache.ids(anchor)))
        if not ids:
            raise ConfigError(f"no manifest item has {raw} and a cached {anchor} feature; check --manifest/--features.")
        self.anchor_features = cache.get(anchor, ids).float()
        self.inputs = {m: [items[i].get(m) for i in ids] for m in raw}
        self._split(len(ids), val_size, seed)

    def batch(self, split: str, rows: torch.Tensor) -> dict[str, object]:
        index = self.split_rows[split][rows]
        out: dict[str, object] = {self.anchor: self.anchor_features[index]}
        out.update({m: [values[i] for i in index.tolist()] for m, values in self.inputs.items()})
        return out
