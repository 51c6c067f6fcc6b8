"""Tiny versions of the real architectures, built from configs (no network), for tests.

The layouts mirror the hub repositories the presets name, so the same loading code paths are exercised:
``image_encoder/`` + ``feature_extractor/`` (Stable UnCLIP), ``image_encoder/`` + ``image_processor/`` +
``text_encoder/`` + ``tokenizer/`` (Kandinsky 2.2 prior).
"""

from __future__ import annotations

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

HIDDEN = 32
CONTEXT = 77


def tiny_tokenizer() -> CLIPTokenizer:
    """Character-level CLIP BPE tokenizer: the 256 byte symbols (+ end-of-word forms), no merges."""
    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for s in symbols:
            vocab.setdefault(s + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CONTEXT)


def tiny_text_config(projection_dim: int = HIDDEN) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_vision(projection_dim: int = HIDDEN, seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(config).eval()


def tiny_text(projection_dim: int = HIDDEN, seed: int = 1) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(tiny_text_config(projection_dim)).eval()


def tiny_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_stable_unclip_pipeline():
    """A complete StableUnCLIPImg2ImgPipeline at toy size (diffusers' own test dimensions)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=HIDDEN * 2,
        cross_attention_dim=HIDDEN,
        layers_per_block=1,
        upcast_attention=True,
        use_linear_projection=True,
    )
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=tiny_image_processor(),
        image_encoder=tiny_vision(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=HIDDEN),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tiny_tokenizer(),
        text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        unet=unet,
        scheduler=DDIMScheduler(prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=AutoencoderKL(block_out_channels=(32,), latent_channels=4, norm_num_groups=32),
    )


def tiny_kandinsky_prior_pipeline():
    """A complete KandinskyV22PriorPipeline at toy size."""
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler

    torch.manual_seed(3)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=HIDDEN, num_layers=1)
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=tiny_vision(seed=4),
        text_encoder=tiny_text(seed=5),
        tokenizer=tiny_tokenizer(),
        scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample=True, clip_sample_range=10.0
        ),
        image_processor=tiny_image_processor(),
    )


def tiny_space(directory, output_norm=None):
    """A saved AlignedSpace checkpoint with tiny CLIP towers inside it (no heads)."""
    from gen_align.encoders.clip import CLIPTextTower, CLIPVisionTower
    from gen_align.space import AlignedSpace

    config = {
        "format": "gen-align-space",
        "anchor": "image",
        "embedding_dim": HIDDEN,
        "towers": {"image": {"kind": "clip-vision"}, "text": {"kind": "clip-text"}},
        "heads": {},
        "output_norm": output_norm,
    }
    towers = {
        "image": CLIPVisionTower(tiny_vision(), tiny_image_processor()),
        "text": CLIPTextTower(tiny_text(), tiny_tokenizer()),
    }
    return AlignedSpace(config, towers, {}).save_pretrained(directory, save_towers=True)
