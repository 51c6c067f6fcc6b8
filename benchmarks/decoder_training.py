"""The mini decoder's training step on CPU: eager vs ``torch.compile`` (channels-last), measured side by side.

    python benchmarks/decoder_training.py [--batch 64] [--steps 12] [--threads 2] [--token-levels 1]

Both runs train the recipe's latent UNet (``gen_align.mini.recipes.recipe.DECODER_UNET`` on 16 × 16 × 4 latents,
64-d embeddings) with the decoder's own loss (:func:`~gen_align.mini.recipes.decoder.make_loss`: v-prediction,
condition dropout) and AdamW, on random latents, from the same initial weights. Reported: the median seconds per
step after two warm-up steps, the ratio, and the compiled run's one-off compilation time (its first step).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from gen_align.mini.recipes.decoder import CompiledForward, build_unet, make_loss
from gen_align.mini.recipes.recipe import DECODER_UNET
from gen_align.pipelines.mini import mini_scheduler


def step_times(compiled: bool, args: argparse.Namespace) -> list[float]:
    from diffusers import DDPMScheduler

    unet_config = {**DECODER_UNET, "token_levels": tuple(args.token_levels)}
    unet = build_unet(64, in_channels=4, out_channels=4, sample_size=16, **unet_config)
    latents = torch.randn(args.batch * 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(len(latents), 64, generator=torch.Generator().manual_seed(1))
    noise = DDPMScheduler.from_config(mini_scheduler(clip_sample=False).config)
    loss_fn = make_loss(
        lambda indices, _: latents[indices],
        embeds,
        noise,
        cond_dropout=0.1,
        device=torch.device("cpu"),
        forward=CompiledForward(unet) if compiled else None,
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(2)
    times = []
    for step in range(args.steps + 2):
        indices = torch.arange(step * args.batch, (step + 1) * args.batch) % len(latents)
        start = time.perf_counter()
        loss = loss_fn(unet, indices, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--token-levels", type=int, nargs="*", default=list(DECODER_UNET["token_levels"]))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    eager = step_times(False, args)
    compiled = step_times(True, args)
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "token_levels": args.token_levels,
        "eager_s_per_step": statistics.median(eager[2:]),
        "compiled_s_per_step": statistics.median(compiled[2:]),
        "compile_first_step_s": compiled[0],
    }
    result["speedup"] = result["eager_s_per_step"] / result["compiled_s_per_step"]
    print(json.dumps(result, indent=2))
    print(
        f"eager {result['eager_s_per_step']:.3f} s/step, compiled {result['compiled_s_per_step']:.3f} s/step: "
        f"{result['speedup']:.2f}x (compilation {result['compile_first_step_s']:.0f} s, once per run)"
    )


if __name__ == "__main__":
    main()
