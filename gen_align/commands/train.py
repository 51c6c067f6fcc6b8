"""`gen-align train`: heads over cached features with any registered objective."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from gen_align.train.config import load_config
    from gen_align.train.trainer import Trainer

    overrides = list(args.set or [])
    for key in ("features", "out", "objective"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    summary = Trainer(config).fit(resume=args.resume or False)
    last = summary["history"][-1]["validation"]
    print(json.dumps({"steps": summary["steps"], "validation": last}, indent=2))
    print(f"trained space: {config.out}/space  summary: {config.out}/train_summary.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train projection heads over cached features (UniAlign or a baseline objective)",
        description="Train heads over a feature cache from `gen-align encode`. Multi-GPU: "
        "accelerate launch -m gen_align train ... . Writes OUT/space (an AlignedSpace), OUT/train_summary.json, "
        "TensorBoard logs and checkpoints under OUT.",
    )
    p.add_argument("--config", help="YAML or TOML file with training settings")
    p.add_argument("--features", help="feature-cache directory (overrides the config)")
    p.add_argument("--out", help="output directory (overrides the config)")
    p.add_argument("--objective", help="unialign, unialign-geodesic, infonce, gram or geo-ot")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set lr=1e-4 --set head.kind=linear; objective hyperparameters also at the "
        "top level: --set tau=0.05 --set task=retrieval --set weights.text=0.5 --set pair_weights.text->image=2",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        help="continue from the latest checkpoint under OUT (or from the given checkpoint directory)",
    )
    p.set_defaults(func=run)
