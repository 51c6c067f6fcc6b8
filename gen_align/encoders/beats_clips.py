"""Clip embeddings from BEATs that do not depend on batch-mates.

Each window gets its own fbank at its true length (no zero-padded waveform enters the fbank); padding is done
at token level by time patch, so a clip's result is the same alone or in any batch. Long clips are split into
windows (default 10 s, as BEATs was trained) and the per-window results are averaged, weighted by tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor
from tqdm.auto import tqdm

from gen_align.encoders.beats import (
    NUM_MEL_BINS,
    SAMPLE_RATE,
    BEATs,
    compute_fbank,
    load_beats,
    num_frames,
)
from gen_align.errors import ConfigError, InputDataError

Waveforms = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]


class BEATsEncoder:
    """Frozen BEATs for clip-level audio embeddings (puts ``model`` in eval mode).

    ``embed`` gives (B, D) masked time-means of the last layer's tokens; ``predict`` gives (B, C) class
    probabilities of a fine-tuned checkpoint; ``encode_tokens`` gives one clip's (N, D) tokens in one window.
    """

    def __init__(
        self, model: BEATs, *, window_seconds: float = 10.0, batch_size: int = 8, progress: bool = False
    ) -> None:
        self.model = model.eval()
        self.window = round(window_seconds * SAMPLE_RATE)
        if self.window < model.min_samples:
            raise ConfigError(
                f"window_seconds={window_seconds} is shorter than one BEATs patch; use at least "
                f"{model.min_samples / SAMPLE_RATE:.3f} s (10 s is what BEATs was trained on)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.progress = batch_size, progress

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, map_location: Any = "cpu", attention: str = "sdpa", **kwargs: Any
    ) -> BEATsEncoder:
        """:func:`load_beats` then wrap; ``kwargs`` go to the constructor."""
        return cls(load_beats(path, map_location, attention=attention), **kwargs)

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def device(self) -> torch.device:
        return self.model.patch_embedding.weight.device

    def windows(self, num_samples: int) -> list[tuple[int, int]]:
        """Consecutive (start, end) windows; a tail shorter than one patch is merged into the window before it."""
        bounds = [(s, min(s + self.window, num_samples)) for s in range(0, num_samples, self.window)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.model.min_samples:
            bounds[-2:] = [(bounds[-2][0], num_samples)]
        return bounds

    @torch.inference_mode()
    def encode_tokens(self, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """One clip (T,) -> (N, D) last-layer tokens at its true length, in one window (no splitting)."""
        (clip,) = self._clips(waveform, None, sample_rate, allow_batch=False)
        features, _ = self._forward([clip])
        return features[0]

    def embed(
        self, waveforms: Waveforms, lengths: Sequence[int] | None = None, sample_rate: int = SAMPLE_RATE
    ) -> Tensor:
        """Clips -> (B, D) embeddings: the mean of the unpadded last-layer tokens (per window, then averaged).

        Runs under ``inference_mode`` while the model is frozen; with trainable parameters (end-to-end
        training) it keeps the autograd graph."""

        def token_mean(features: Tensor, mask: Tensor) -> Tensor:
            keep = (~mask).unsqueeze(-1).to(features.dtype)
            return (features * keep).sum(1) / keep.sum(1)

        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        with torch.inference_mode(not trainable):
            return self._pooled(self._clips(waveforms, lengths, sample_rate), token_mean)

    @torch.inference_mode()
    def predict(
        self, waveforms: Waveforms, lengths: Sequence[int] | None = None, sample_rate: int = SAMPLE_RATE
    ) -> Tensor:
        """Clips -> (B, C) class probabilities of a fine-tuned checkpoint (per window, then averaged)."""
        self.model.require_predictor()
        return self._pooled(self._clips(waveforms, lengths, sample_rate), self.model.predict_proba)

    def _pooled(self, clips: list[Tensor], head: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Run all windows of all clips in batches (longest first), pool each with ``head``, average per clip."""
        items = [(i, clip[s:e]) for i, clip in enumerate(clips) for s, e in self.windows(clip.numel())]
        order = sorted(range(len(items)), key=lambda j: -items[j][1].numel())
        clip_ids = torch.tensor([items[j][0] for j in order], device=self.device)
        outs, weights = [], []
        for start in tqdm(range(0, len(order), self.batch_size), desc="BEATs", unit="batch", disable=not self.progress):
            batch = [items[j][1] for j in order[start : start + self.batch_size]]
            features, mask = self._forward(batch)
            outs.append(head(features, mask))
            weights.append((~mask).sum(1))
        out, weight = torch.cat(outs).float(), torch.cat(weights).float().unsqueeze(1)
        total = torch.zeros(len(clips), out.size(1), device=out.device).index_add_(0, clip_ids, out * weight)
        return total / torch.zeros(len(clips), 1, device=out.device).index_add_(0, clip_ids, weight)

    def _forward(self, waves: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Windows -> (B, N, D) tokens and (B, N) mask (True = padded), padded by time patch at token level."""
        p, freq = self.model.input_patch_size, self.model.freq_patches
        patches = [num_frames(w.numel()) // p for w in waves]
        fbank = torch.zeros(len(waves), max(patches) * p, NUM_MEL_BINS, device=self.device)
        for i, (w, n) in enumerate(zip(waves, patches, strict=True)):
            fbank[i, : n * p] = compute_fbank(w.to(self.device))[: n * p]
        steps = torch.arange(max(patches), device=self.device).repeat_interleave(freq)
        mask = steps[None, :] >= torch.tensor(patches, device=self.device)[:, None]
        return self.model.encode_fbank(fbank, mask if mask.any() else None), mask

    def _clips(
        self, waveforms: Waveforms, lengths: Sequence[int] | None, rate: int, allow_batch: bool = True
    ) -> list[Tensor]:
        """Validate input into a list of 1-D float32 clips at 16 kHz."""
        if isinstance(waveforms, (Tensor, np.ndarray)):
            wav = torch.as_tensor(waveforms)
            if wav.dim() not in ((1, 2) if allow_batch else (1,)):
                shapes = "(T,) or (B, T)" if allow_batch else "(T,)"
                raise InputDataError(f"expected a waveform of shape {shapes}, got {tuple(wav.shape)}; downmix to mono")
            clips = list(wav) if wav.dim() == 2 else [wav]
        else:
            clips = [torch.as_tensor(w) for w in waveforms]
        if lengths is not None:
            if len(lengths) != len(clips):
                raise InputDataError(f"got {len(lengths)} lengths for {len(clips)} clips")
            for i, (c, n) in enumerate(zip(clips, lengths, strict=True)):
                if not 0 < int(n) <= c.shape[-1]:
                    raise InputDataError(f"lengths[{i}]={int(n)} is outside 1..{c.shape[-1]} (the clip's samples)")
            clips = [c[..., : int(n)] for c, n in zip(clips, lengths, strict=True)]
        if not clips:
            raise InputDataError("no clips given")
        return [self._check(i, c, rate) for i, c in enumerate(clips)]

    def _check(self, i: int, clip: Tensor, rate: int) -> Tensor:
        if clip.dim() != 1:
            raise InputDataError(f"clip {i}: expected a 1-D mono waveform, got shape {tuple(clip.shape)}")
        if not clip.is_floating_point():
            raise InputDataError(
                f"clip {i}: expected a float waveform in [-1, 1], got {clip.dtype}; divide int16 PCM by 32768"
            )
        if clip.numel() == 0:
            raise InputDataError(f"clip {i} is empty")
        if not torch.isfinite(clip).all():
            raise InputDataError(f"clip {i} contains NaN or infinite samples")
        clip = clip.float()
        if not isinstance(rate, int) or rate < 1:
            raise InputDataError(f"sample_rate must be a positive int, got {rate!r}")
        if rate != SAMPLE_RATE:
            clip = torchaudio.functional.resample(clip, rate, SAMPLE_RATE)
        if clip.numel() < self.model.min_samples:
            raise InputDataError(
                f"clip {i} is too short for BEATs: {clip.numel()} samples ({clip.numel() / SAMPLE_RATE:.3f} s); "
                f"the minimum is {self.model.min_samples} samples ({self.model.min_samples / SAMPLE_RATE:.3f} s at "
                f"16 kHz), one 16-frame patch. Pad or skip shorter clips."
            )
        return clip
