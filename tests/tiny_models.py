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


# ----------------------------------------------------------------------------- decoders (generation tests)
PRESET_PATHS = {
    "stable-unclip-h": ("stabilityai/stable-diffusion-2-1-unclip", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "kandinsky-2.2": ("kandinsky-community/kandinsky-2-2-decoder", "kandinsky-community/kandinsky-2-2-prior"),
}


def tiny_kandinsky_decoder_pipeline():
    """A complete KandinskyV22Pipeline at toy size (UNet with image_proj conditioning, MoVQ VQModel, DDPM)."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(6)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=8,  # mean and variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=HIDDEN,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )
    movq = VQModel(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


def tiny_weights_home(home, presets=("stable-unclip-h", "kandinsky-2.2")):
    """Tiny stand-ins saved at the presets' hub paths under ``home`` (a --weights-dir / $GEN_ALIGN_HOME)."""
    for preset in presets:
        decoder, other = PRESET_PATHS[preset]
        if preset == "stable-unclip-h":
            tiny_stable_unclip_pipeline().save_pretrained(home / decoder)
            tiny_text().save_pretrained(home / other)
            tiny_tokenizer().save_pretrained(home / other)
        else:
            tiny_kandinsky_decoder_pipeline().save_pretrained(home / decoder)
            tiny_kandinsky_prior_pipeline().save_pretrained(home / other)
    return home


def tiny_audio_space(directory, preset=None, output_norm=None, image_seed=0):
    """A saved AlignedSpace with tiny CLIP towers, the fixture's tiny BEATs and a linear audio head (towers
    inside the checkpoint); ``preset`` names the decoder it goes with."""
    from pathlib import Path

    from gen_align.encoders.beats_tower import BEATsTower, load_beats_source
    from gen_align.encoders.clip import CLIPTextTower, CLIPVisionTower
    from gen_align.heads import HeadConfig, ProjectionHead
    from gen_align.space import AlignedSpace

    torch.manual_seed(7)
    head = HeadConfig(in_dim=64, out_dim=HIDDEN, kind="linear")
    config = {
        "format": "gen-align-space",
        "preset": preset,
        "anchor": "image",
        "embedding_dim": HIDDEN,
        "towers": {"image": {"kind": "clip-vision"}, "text": {"kind": "clip-text"}, "audio": {"kind": "beats"}},
        "heads": {"audio": head.to_dict()},
        "output_norm": output_norm,
    }
    towers = {
        "image": CLIPVisionTower(tiny_vision(seed=image_seed), tiny_image_processor()),
        "text": CLIPTextTower(tiny_text(), tiny_tokenizer()),
        "audio": BEATsTower(load_beats_source(Path(__file__).parent / "fixtures" / "beats" / "beats_tiny.pt")),
    }
    space = AlignedSpace(config, towers, {"audio": ProjectionHead(head).eval()})
    return space.save_pretrained(directory, save_towers=True)


def tiny_captioner(directory):
    """A BLIP captioner at toy size (random weights: captions are strings of its 36-word vocabulary), saved with its
    processor in the layout of a hub captioning repository."""
    import string

    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "dog", "cat", "photo", "of", "the"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    layers = {"intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4, "hidden_size": HIDDEN}
    text = {**layers, "vocab_size": len(words), "encoder_hidden_size": HIDDEN, "max_position_embeddings": 64,
            "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0, "eos_token_id": 3}  # fmt: skip
    config = BlipConfig(
        text_config=text, vision_config={**layers, "image_size": 32, "patch_size": 16}, projection_dim=HIDDEN
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
