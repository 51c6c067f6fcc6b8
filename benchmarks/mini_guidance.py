"""The shipped mini decoder's attribute accuracy against its sampling settings, side by side in one run.

    python benchmarks/mini_guidance.py [--items 512] [--settings 10,2 10,4 25,2 25,4] [--threads N]

Decodes the true image embeddings of the first ``--items`` test items of world seed 0 (the shipped CLIP image
tower's; seed = item index, 64 images per call) at each ``steps,guidance`` setting and judges the images with the
shipped attribute classifier against the items' ground truth (docs/mini.md, session 9, has the table this printed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--settings", nargs="+", default=["10,2", "10,3", "10,4", "10,6", "25,2", "25,4"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from gen_align.mini.recipes.classifier import AttributeClassifier, attribute_accuracy
    from gen_align.mini.shipped import MINI_CLASSIFIER
    from gen_align.mini.world.attributes import index_tensor
    from gen_align.mini.world.dataset import make_item
    from gen_align.pipelines.pipeline import GenAlignPipeline

    items = [make_item(0, "test", i) for i in range(args.items)]
    pipe = GenAlignPipeline.from_pretrained("mini", modalities=["image"], device="cpu", progress=False)
    z = pipe.space.encode_image([item["image"] for item in items])
    truth = index_tensor([item["attributes"] for item in items])
    classifier = AttributeClassifier.from_pretrained(MINI_CLASSIFIER)
    print(f"{args.items} items, CPU threads={torch.get_num_threads()}")
    print(f"{'steps':>5s} {'guidance':>8s} {'shape':>6s} {'colour':>6s} {'size':>6s} {'bg':>6s} {'all4':>6s} {'s':>6s}")
    for setting in args.settings:
        steps, guidance = int(setting.split(",")[0]), float(setting.split(",")[1])
        start, images = time.perf_counter(), []
        for i in range(0, len(z), 64):
            seeds = list(range(i, min(i + 64, len(z))))
            images += pipe.decode(z[i : i + 64], seed=seeds, steps=steps, guidance=guidance)
        pixels = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
        acc = attribute_accuracy(classifier, pixels.contiguous(), truth)
        row = [acc[k] * 100 for k in ("shape", "colour", "size", "background", "all_correct")]
        seconds = time.perf_counter() - start
        print(f"{steps:5d} {guidance:8g} " + " ".join(f"{v:6.1f}" for v in row) + f" {seconds:6.0f}")
        print(json.dumps({"steps": steps, "guidance": guidance, **acc}), flush=True)


if __name__ == "__main__":
    main()
