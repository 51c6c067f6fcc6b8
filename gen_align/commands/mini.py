"""`gen-align mini`: the offline mini world — ``build`` the dataset, ``train`` every model, ``eval`` the table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_WORK = "results/mini"


def run(args: argparse.Namespace) -> int:
    return {"build": _build, "train": _train, "eval": _eval, "check": _check}[args.action](args)


def _build(args: argparse.Namespace) -> int:
    from gen_align.mini.world.dataset import build_world

    out = build_world(args.out, seed=args.seed, train=args.train, test=args.test, progress=not args.quiet)
    print(f"mini world (seed {args.seed}): {args.train} train + {args.test} test items in {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from gen_align.mini.recipes.build import STAGES, MiniBuild, ship
    from gen_align.mini.recipes.recipe import FULL, smoke_recipe
    from gen_align.mini.shipped import MINI_WEIGHTS

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = smoke_recipe(args.seed) if args.smoke else FULL
    if not args.smoke and args.seed != FULL.seed:
        from dataclasses import replace

        recipe = replace(FULL, seed=args.seed)
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        from gen_align.errors import ConfigError

        raise ConfigError(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}.")
    started = time.perf_counter()
    if args.reuse_shipped:
        from gen_align.mini.recipes.build import seed_from_shipped

        if recipe != FULL:
            from gen_align.errors import ConfigError

            raise ConfigError(
                "--reuse-shipped takes the models the full recipe shipped (seed 0); drop --smoke/--seed, or drop "
                "--reuse-shipped to train every stage."
            )

        seeded = seed_from_shipped(args.work, recipe)
        print(f"mini train: {', '.join(seeded) or 'no stage'} taken from the shipped preset")
    build = MiniBuild(args.work, recipe, progress=not args.quiet, compile_decoder=not (args.smoke or args.no_compile))
    record = build.run(stages)
    print(f"mini train: {time.perf_counter() - started:.0f} s this run; stage seconds (when last run):")
    for stage in STAGES:
        if stage in record:
            print(f"  {stage:<11} {record[stage]['seconds']:>8.1f}")
    if args.ship:
        target = ship(build, Path(args.ship_to) if args.ship_to else MINI_WEIGHTS)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"shipped the mini preset to {target} ({size / 2**20:.2f} MiB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from gen_align.mini.evaluate import EvalOptions, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    options = EvalOptions(
        work=Path(args.work),
        out=Path(args.out),
        items=args.items,
        steps=args.steps,
        guidance=args.guidance,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        ablations=args.ablations,
        progress=not args.quiet,
    )
    started = time.perf_counter()
    evaluate(options)
    print(f"mini eval: {time.perf_counter() - started:.0f} s; wrote {args.out}/mini.md, mini.json, mini_samples.png")
    return 0


def _check(args: argparse.Namespace) -> int:
    import torch

    from gen_align.mini.user_check import check

    if args.threads:
        torch.set_num_threads(args.threads)
    record = check(args.out, items=args.items, steps=args.steps, guidance=args.guidance, progress=not args.quiet)
    for kind, acc in record["accuracy"].items():
        parts = ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items() if k not in ("mean", "all_correct"))
        print(f"{kind:>5} -> image: all four attributes right {100 * acc['all_correct']:.1f} % ({parts})")
    print(f"wrote {args.out}/mini_check.md, mini_check.json, mini_check.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mini",
        help="the offline mini world: build the dataset, train every model, evaluate the objectives",
        description="A procedural audio-image-text world with known attributes and tiny models of the real "
        "architectures: the shipped `mini` preset is trained with `gen-align mini train --ship`.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="{build,train,eval}")
    b = actions.add_parser("build", help="write the dataset (images, audio, captions, JSONL manifests)")
    b.add_argument("out", help="output folder (OUT/train/manifest.jsonl, OUT/test/manifest.jsonl, OUT/world.json)")
    b.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    b.add_argument("--train", type=int, default=20000, help="training items (default 20000)")
    b.add_argument("--test", type=int, default=1024, help="test items (default 1024, as the VGGSound protocol)")

    t = actions.add_parser("train", help="rebuild every mini model from scratch (resumable stages)")
    t.add_argument("--work", default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    t.add_argument(
        "--stages",
        help="comma-separated subset of world,towers,features,heads,ablations,autoencoder,decoder,classifier "
        "(default: all)",
    )
    t.add_argument("--smoke", action="store_true", help="a seconds-long miniature of every stage (for CI)")
    t.add_argument("--seed", type=int, default=0, help="world and model seed (default 0)")
    t.add_argument(
        "--ship", action="store_true", help="copy the UniAlign space, decoder and classifier into the package"
    )
    t.add_argument("--ship-to", help="ship into this folder instead of the package (for checks)")
    t.add_argument(
        "--no-compile",
        action="store_true",
        help="train the decoder eagerly instead of through torch.compile (which needs a C++ compiler; --smoke never "
        "compiles)",
    )
    t.add_argument(
        "--reuse-shipped",
        action="store_true",
        help="take the towers, decoder and classifier from the shipped preset (trained with this recipe) and "
        "train only the rest: the way to retrain the heads after a change to the objectives",
    )

    e = actions.add_parser("eval", help="the reproduction table: FID, attribute accuracy, R@1, gap, Hölder")
    e.add_argument("--work", default=DEFAULT_WORK, help=f"a finished `mini train` work folder (default {DEFAULT_WORK})")
    e.add_argument("--out", default="docs/results", help="where mini.md, mini.json, mini_samples.png go")
    e.add_argument(
        "--items",
        type=int,
        default=128,
        help="generate for the first N test items (default 128; the published table used 256)",
    )
    e.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    e.add_argument("--seeds", default="0,1,2", help="head-training seeds to evaluate (default 0,1,2)")
    e.add_argument(
        "--ablations",
        action="store_true",
        help="also the UniAlign ablations (the paper's Tables 2 and 5: U(C), L_vol, tau_ctr): R@1, gap, A2I FID / "
        "accuracy, beside the main table",
    )
    c = actions.add_parser("check", help="what a user of the shipped preset sees: attribute accuracy from text / audio")
    c.add_argument("--out", default="docs/results", help="where mini_check.md, .json and .png go")
    c.add_argument("--items", type=int, default=256, help="unseen world items, one image each per input (default 256)")
    c.add_argument("--steps", type=int, help="denoising steps (default: the decoder's, as `gen-align generate`)")
    for parser in (b, t, e, c):
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for parser in (t, e, c):
        parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    for parser in (e, c):
        parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: the decoder's)")
    p.set_defaults(func=run)
