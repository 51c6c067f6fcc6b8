"""`gen-align retrieve train-head`: a GARE or GraviAlign head trained on the paired rows of an embeddings file,
saved as a head directory (resumable: the training state is written there after every epoch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from gen_align.commands._embedding_files import modality

HEADS = ("gare", "gravi")


def _overrides(pairs: list[str], config_class: type) -> dict:
    """``--set key=value`` pairs as config fields (values read as JSON where they parse: 4, 0.1, true, null)."""
    from gen_align.errors import ConfigError

    fields = {f.name for f in dataclasses.fields(config_class)}
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(fields)}.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def build_head(kind: str, query: object, gallery: object, names: tuple[str, str], args: argparse.Namespace) -> object:
    """A fresh head for (N, d_q) queries and (N, d_g) gallery rows, from the command's settings."""
    from gen_align.errors import ConfigError, EmbeddingError
    from gen_align.retrieval.gare import GAREConfig, GAREHead
    from gen_align.retrieval.gravi_head import GraviAlignConfig, GraviAlignHead

    modalities = {"query_modality": names[0], "gallery_modality": names[1]}
    if kind == "gare":
        if query.shape[-1] != gallery.shape[-1]:
            raise EmbeddingError(
                f"GARE adds increments to one side of each pair, so both need one dimension: {names[0]} is "
                f"{query.shape[-1]}-d, {names[1]} {gallery.shape[-1]}-d; use aligned embeddings (`gen-align embed`)."
            )
        settings = {"dim": int(query.shape[-1]), "delta_side": args.delta_side, **modalities}
        config_class, head_class = GAREConfig, GAREHead
    else:
        settings = {"query_dim": int(query.shape[-1]), "gallery_dim": int(gallery.shape[-1]), **modalities}
        config_class, head_class = GraviAlignConfig, GraviAlignHead
    settings |= _overrides(args.set, config_class)
    try:
        config = config_class(**settings)
    except TypeError as err:
        raise ConfigError(f"--set: {err}") from err
    return head_class(config)


def run_train_head(args: argparse.Namespace) -> int:
    import torch

    from gen_align.checks import integer
    from gen_align.errors import ConfigError
    from gen_align.io import FolderLock, load_embeddings, write_json_atomic
    from gen_align.module_checkpoint import CONFIG_NAME
    from gen_align.retrieval.head_training import STATE_FILE, train_head

    out = Path(args.out)
    if (out / CONFIG_NAME).is_file() and not (out / STATE_FILE).is_file() and not args.overwrite:
        raise ConfigError(f"{out} already holds a trained head; pass --overwrite to train a new one there.")
    embeddings = load_embeddings(args.embeddings)
    query = modality(embeddings, args.query, args.embeddings)
    gallery = modality(embeddings, args.gallery, args.embeddings)
    integer(args.seed, "--seed", low=0, high=2**63 - 1)
    with FolderLock(out, "train-head"):
        torch.manual_seed(args.seed)  # the initial weights
        head = build_head(args.head, query, gallery, (args.query, args.gallery), args)
        if args.step_size_diagnostics:
            if args.head != "gare":
                raise ConfigError("--step-size-diagnostics is GARE's (the rebuttal's |η − α|); drop it for gravi.")
            head.step_size_diagnostics = True
        history = train_head(
            head,
            {args.query: query, args.gallery: gallery},
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            device=args.device,
            checkpoint_dir=out,
        )
        head.save_pretrained(out)
        write_json_atomic(out / "training.json", {"embeddings": str(args.embeddings), **history.to_dict()})
        (out / STATE_FILE).unlink(missing_ok=True)  # finished: the head files are the result
    final = {k: round(v, 4) for k, v in history.terms[-1].items()} if history.terms else {}
    print(f"trained a {head.kind} head ({history.steps} steps, {history.seconds:.1f} s; last epoch {final}) into {out}")
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, choices=HEADS, help="GARE (increments, re-ranking) or GraviAlign")
    p.add_argument("--embeddings", required=True, help="train embeddings: safetensors of {modality: (N, d)}, paired")
    p.add_argument("--query", required=True, help="query modality, e.g. text")
    p.add_argument("--gallery", required=True, help="gallery modality, e.g. image")
    p.add_argument("--out", required=True, help="head directory (config.json + model.safetensors)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the pairs (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="pairs per step (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffles (default 0)")
    p.add_argument("--device", help="e.g. cuda (default cpu)")
    p.add_argument("--delta-side", choices=("query", "gallery"), default="query", help="GARE: the side Δ is added to")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a head config field, e.g. beta=0.1 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a finished head in --out")
    p.add_argument(
        "--step-size-diagnostics",
        action="store_true",
        help="GARE: log the rebuttal's step-size error |η − α| per epoch",
    )
