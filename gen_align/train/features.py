"""Cached tower features held in memory and cut into deterministic batches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from gen_align.data.cache import FeatureCache
from gen_align.errors import ConfigError


class FeatureData:
    """All modalities' features aligned on the ids present in every one of them, split into a training
    and a validation part by a seeded permutation (the split depends only on the ids and the seed)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        modalities: list[str] | None,
        anchor: str,
        val_size: int,
        seed: int,
    ) -> None:
        cache = FeatureCache.load(cache_dir)
        self.modalities = list(modalities or cache.modalities)
        if anchor not in self.modalities:
            raise ConfigError(f"the anchor {anchor!r} is not among the cached modalities {self.modalities}.")
        if len(self.modalities) < 2:
            raise ConfigError(f"training needs the anchor and at least one other modality, got {self.modalities}.")
        self.anchor = anchor
        self.identity = cache.identity
        features = cache.to_dict(self.modalities)
        n = next(iter(features.values())).shape[0]
        if val_size >= n:
            raise ConfigError(f"val_size={val_size} leaves no training items ({n} cached); lower val_size.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val, train = order[:val_size].sort().values, order[val_size:].sort().values
        self.train = {m: f[train].float() for m, f in features.items()}
        self.val = {m: f[val].float() for m, f in features.items()}

    @property
    def num_train(self) -> int:
        return next(iter(self.train.values())).shape[0]

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(f.shape[1]) for m, f in self.train.items()}

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
