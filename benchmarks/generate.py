"""Seconds per image of the decoder adapters, batch 1 vs batch 4, next to the bare diffusers pipeline call.

    python benchmarks/generate.py [--steps 25] [--repeats 3] [--threads N] [--json FILE]
    python benchmarks/generate.py --real-size [--steps 25]      # needs a CUDA GPU

Default: the tiny test pipelines (tests/tiny_models.py) on the CPU in fp32 — Stable UnCLIP at 32², Kandinsky 2.2
at 16². ``--real-size`` builds the real architectures from their configs with random weights (which time the
same as the released ones) in fp16 on the GPU: Stable UnCLIP 2.1-H (UNet 0.87B, SD VAE, OpenCLIP-H text
encoder) at 768², Kandinsky 2.2 (UNet 1.25B, MoVQ) at 512². Each timing is one call (after a warm-up call);
the adapter and the bare pipeline are interleaved so that drift in machine load affects both alike; the median
of the repeats is reported. Ratios: adapter / bare pipeline (the adapter's overhead) and per-image time at
batch 4 / batch 1 (what batching buys).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models

from gen_align.pipelines.kandinsky import KandinskyDecoder  # noqa: E402
from gen_align.pipelines.stable_unclip import StableUnCLIPDecoder  # noqa: E402

BATCHES = (1, 4)


# ------------------------------------------------------------------------------------ real-size builders
def real_stable_unclip(device):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from tiny_models import tiny_image_processor, tiny_tokenizer, tiny_vision
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            attention_head_dim=(5, 10, 20, 20),
            layers_per_block=2,
            cross_attention_dim=1024,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2048,
            upcast_attention=True,
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=768,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=1024,
            )
        )
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=1024)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=tiny_image_processor(),
        image_encoder=tiny_vision(projection_dim=1024),  # unused with image_embeds (only its dtype is read)
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tiny_tokenizer(),
        text_encoder=text,
        unet=unet,
        scheduler=DDIMScheduler(prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=vae,
    )


def real_kandinsky(device):
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=8,
            addition_embed_type="image",
            addition_embed_type_num_heads=64,
            attention_head_dim=64,
            block_out_channels=(384, 768, 1152, 1536),
            cross_attention_dim=768,
            down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            encoder_hid_dim=1280,
            encoder_hid_dim_type="image_proj",
            layers_per_block=3,
            resnet_time_scale_shift="scale_shift",
        )
        movq = VQModel(
            block_out_channels=(128, 256, 256, 512),
            down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            layers_per_block=2,
            norm_type="spatial",
            num_vq_embeddings=16384,
            vq_embed_dim=4,
        )
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


# -------------------------------------------------------------------------------------------- timing
def decoders(real: bool, device: str):
    """(name, adapter, bare call(embeds, generators, steps)) for both decoders."""
    from tiny_models import tiny_kandinsky_decoder_pipeline, tiny_stable_unclip_pipeline

    if real:
        sd, kd = real_stable_unclip(device).to(dtype=torch.float16), real_kandinsky(device).to(dtype=torch.float16)
    else:
        sd, kd = tiny_stable_unclip_pipeline(), tiny_kandinsky_decoder_pipeline()
    sd_decoder = StableUnCLIPDecoder(sd, device=device, progress=False)
    negative = torch.randn(1, kd.unet.config.encoder_hid_dim)
    kd_decoder = KandinskyDecoder(kd, device=device, negative_embed=negative, progress=False)

    def bare_sd(z, generators, steps):
        return sd(image_embeds=z, prompt=[""] * len(z), num_inference_steps=steps, generator=generators).images

    def bare_kd(z, generators, steps):
        negative = kd_decoder.negative_embed.to(z.device, z.dtype).expand(len(z), -1)
        size = kd_decoder.native_size
        return kd(
            image_embeds=z,
            negative_image_embeds=negative,
            num_inference_steps=steps,
            generator=generators,
            height=size,
            width=size,
        ).images

    return [("stable-unclip", sd_decoder, bare_sd), ("kandinsky-2.2", kd_decoder, bare_kd)]


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-size", action="store_true", help="real architectures, fp16 on a CUDA GPU")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.real_size and not torch.cuda.is_available():
        sys.exit("--real-size builds 0.9B/1.25B-parameter UNets in fp16 and needs a CUDA GPU; none is visible.")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.real_size else "cpu"
    torch.manual_seed(0)
    results = {}
    for name, decoder, bare in decoders(args.real_size, device):
        dim = decoder.embedding_dim
        for batch in BATCHES:
            z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch)) * 20
            zd = z.to(device, decoder.dtype)

            def run_adapter(z=z, decoder=decoder):
                return decoder(z, seed=0, steps=args.steps)

            def run_bare(zd=zd, batch=batch, bare=bare):
                return bare(zd, [torch.Generator().manual_seed(i) for i in range(batch)], args.steps)

            run_adapter(), run_bare()  # warm-up
            times = {"adapter": [], "adapter_cpu": [], "pipeline": [], "pipeline_cpu": []}
            for _ in range(args.repeats):
                for key, fn in (("adapter", run_adapter), ("pipeline", run_bare)):
                    wall, cpu = timed(fn, device)
                    times[key].append(wall)
                    times[f"{key}_cpu"].append(cpu)
            results[f"{name} batch {batch}"] = {k: statistics.median(v) / batch for k, v in times.items()}
    size = {"stable-unclip": "768²" if args.real_size else "32²", "kandinsky-2.2": "512²" if args.real_size else "16²"}
    where = torch.cuda.get_device_name() if args.real_size else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# seconds per image, {args.steps} steps, {'fp16 real-size' if args.real_size else 'fp32 tiny'}, {where}")
    print("(wall-clock medians; CPU = process CPU seconds, which machine load inflates less)")
    header = ("decoder", "size", "batch", "adapter s/img", "pipeline s/img", "ratio", "adapter CPU s/img")
    print(f"{header[0]:16s} {header[1]:>5s} {header[2]:>5s} " + " ".join(f"{h:>15s}" for h in header[3:]))
    for key, v in results.items():
        name, _, batch = key.partition(" batch ")
        cells = (v["adapter"], v["pipeline"], v["adapter"] / v["pipeline"], v["adapter_cpu"])
        print(f"{name:16s} {size[name]:>5s} {batch:>5s} " + " ".join(f"{c:15.4f}" for c in cells))
    for name in size:
        gain = results[f"{name} batch 4"]["adapter"] / results[f"{name} batch 1"]["adapter"]
        print(f"{name}: per-image time at batch 4 / batch 1 = {gain:.2f}")
    if args.json:
        meta = {"steps": args.steps, "real_size": args.real_size, "device": where, "python": platform.python_version()}
        Path(args.json).write_text(json.dumps({"meta": meta, "seconds_per_image": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
