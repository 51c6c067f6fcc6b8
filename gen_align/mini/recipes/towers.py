"""The mini world's frozen towers: a tiny CLIP (transformers configs) and a tiny BEATs, pretrained here.

* CLIP: the original CLIP's ModifiedResNet image tower (open_clip's, at width 16: four bottleneck stages and
  attention pooling, 32×32 → 64-d) and a causal text transformer (transformers) over a BPE vocabulary learned from
  the captions, trained contrastively on image–caption pairs (CLIP's symmetric InfoNCE with a learned
  temperature), each batch turned by a random multiple of 90° and mirrored half the time (every attribute of the
  world is invariant to both). Like the real CLIP it leaves a modality gap between its image and text embeddings.
  The earlier ViT (patch 4, 3 layers) held shape weakly: a linear probe on its embeddings found 69 % against 99 %
  for this tower (docs/mini.md).
* BEATs: the real implementation (:class:`gen_align.encoders.beats.BEATs`) at a small size, trained like the
  AudioSet-finetuned BEATs: a multi-label sigmoid head on the token-mean logits, here over the attribute values.
  The tower's clip embedding is the token mean (what :class:`BEATsEncoder` returns).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from gen_align.encoders.beats import BEATs, BEATsConfig, compute_fbank, num_frames
from gen_align.encoders.beats_tower import BEATsTower
from gen_align.encoders.clip import CLIPTextTower
from gen_align.encoders.open_clip_vision import OPENAI_MEAN, OPENAI_STD, OpenCLIPVisionTower
from gen_align.errors import InputDataError
from gen_align.mini.world.attributes import NUM_LABELS, multi_hot

from .loop import FitSettings, fit
from .recipe import CLIP_VISION
from .tokenizer import build_tokenizer

EMBEDDING_DIM = 64
IMAGE_SIZE = 32
CONTEXT = 32
BEATS_CONFIG = {
    "input_patch_size": 16,
    "embed_dim": 64,
    "encoder_layers": 2,
    "encoder_embed_dim": 96,
    "encoder_ffn_embed_dim": 192,
    "encoder_attention_heads": 4,
    "encoder_layerdrop": 0.0,
    "layer_wise_gradient_decay_ratio": 1.0,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "num_buckets": 32,
    "max_distance": 64,
    "finetuned_model": True,
    "predictor_class": NUM_LABELS,
    "predictor_dropout": 0.1,
}


PREPROCESS_CFG = {"size": IMAGE_SIZE, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic"}


def text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        projection_dim=EMBEDDING_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def turn_and_mirror(pixels: Tensor, generator: torch.Generator) -> Tensor:
    """The batch turned by a random multiple of 90° and mirrored with probability ½ (one draw for the batch)."""
    turned = torch.rot90(pixels, int(torch.randint(0, 4, (), generator=generator)), dims=(2, 3))
    return turned.flip(3) if bool(torch.rand((), generator=generator) < 0.5) else turned


class _CLIPPair(nn.Module):
    """Both CLIP towers and the learned logit scale (initialised to 1/0.07, as CLIP)."""

    def __init__(self, vision: nn.Module, text: CLIPTextModelWithProjection) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, pixels: Tensor, tokens: Tensor) -> Tensor:
        """CLIP's symmetric cross-entropy over the batch's image–text cosine logits."""
        image = F.normalize(self.vision(pixels), dim=-1)
        text = F.normalize(self.text(input_ids=tokens).text_embeds, dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * image @ text.T
        target = torch.arange(len(image))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pretrain_clip(
    images: Sequence,
    captions: Sequence[str],
    *,
    settings: FitSettings,
    vision_cfg: dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[OpenCLIPVisionTower, CLIPTextTower]:
    """Tokenizer + CLIP towers trained on ``images`` (PIL or paths) paired with ``captions``."""
    if len(images) != len(captions) or len(images) < 2:
        raise InputDataError(f"CLIP pretraining needs >= 2 image–caption pairs, got {len(images)} / {len(captions)}.")
    tokenizer = build_tokenizer(captions, max_length=CONTEXT)
    torch.manual_seed(settings.seed)
    vision_tower = OpenCLIPVisionTower.build(EMBEDDING_DIM, vision_cfg or CLIP_VISION, PREPROCESS_CFG)
    text_tower = CLIPTextTower(CLIPTextModelWithProjection(text_config(len(tokenizer))), tokenizer)
    chunks = range(0, len(images), 512)
    pixels = torch.cat(
        [vision_tower.preprocess(images[i : i + 512]) for i in tqdm(chunks, desc="CLIP inputs", disable=not progress)]
    )
    tokens = text_tower.tokenize(list(captions))
    pair = _CLIPPair(vision_tower.model, text_tower.model).requires_grad_(True)

    def loss_fn(model: _CLIPPair, idx: Tensor, generator: torch.Generator) -> Tensor:
        batch_tokens = tokens[idx]
        width = int((batch_tokens != tokenizer.pad_token_id).sum(1).max()) + 1  # up to the longest caption's end
        return model.loss(turn_and_mirror(pixels[idx], generator), batch_tokens[:, : min(width, tokens.shape[1])])

    fit(pair, loss_fn, len(images), settings, desc="CLIP", checkpoint_dir=checkpoint_dir, progress=progress)
    return OpenCLIPVisionTower(pair.vision, vision_tower.config), CLIPTextTower(pair.text, tokenizer)


def fbanks(waveforms: Sequence[np.ndarray | Tensor], *, progress: bool = True) -> Tensor:
    """``(N, frames, 128)`` normalised fbanks of equal-length 16 kHz clips, cut to whole BEATs patches."""
    lengths = {len(w) for w in waveforms}
    if len(lengths) != 1:
        raise InputDataError(f"BEATs pretraining expects clips of one length, got lengths {sorted(lengths)[:5]}.")
    frames = num_frames(lengths.pop()) // BEATS_CONFIG["input_patch_size"] * BEATS_CONFIG["input_patch_size"]
    if frames == 0:
        raise InputDataError("the clips are shorter than one BEATs patch (0.16 s at 16 kHz).")
    out = torch.empty(len(waveforms), frames, 128, dtype=torch.float16)
    for i, w in enumerate(tqdm(waveforms, desc="fbank", disable=not progress)):
        out[i] = compute_fbank(torch.as_tensor(w, dtype=torch.float32))[:frames].half()
    return out


def pretrain_beats(
    fbank: Tensor,
    attributes: Tensor,
    *,
    settings: FitSettings,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> BEATsTower:
    """A tiny BEATs trained to predict the attributes (multi-label BCE on token-mean logits) from ``fbank``."""
    if fbank.ndim != 3 or len(fbank) != len(attributes):
        raise InputDataError(f"expected (N, frames, 128) fbanks and N attribute rows, got {tuple(fbank.shape)}.")
    torch.manual_seed(settings.seed)
    model = BEATs(BEATsConfig.from_dict(BEATS_CONFIG))
    targets = multi_hot(attributes)

    def loss_fn(m: BEATs, idx: Tensor, _: torch.Generator) -> Tensor:
        tokens = m.encode_fbank(fbank[idx].float())
        logits = m.predictor(m.predictor_dropout(tokens)).mean(1)
        return F.binary_cross_entropy_with_logits(logits, targets[idx])

    model.train()
    fit(model, loss_fn, len(fbank), settings, desc="BEATs", checkpoint_dir=checkpoint_dir, progress=progress)
    return BEATsTower(model.eval())
