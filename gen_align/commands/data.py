"""`gen-align data`: prepare datasets (decode clips into frames, 16 kHz audio and manifests). One sub-command per
dataset: ``gen-align data vggsound ...``."""

from __future__ import annotations

import argparse
from typing import Any

DATASETS = ("vggsound",)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "vggsound":
        return _run_vggsound(args)
    raise AssertionError(f"unhandled dataset {args.dataset!r}")  # argparse only accepts DATASETS


def _run_vggsound(args: argparse.Namespace) -> int:
    from gen_align.data.vggsound import DEFAULT_TEMPLATE, prepare_vggsound
    from gen_align.errors import ConfigError

    if args.template is not None and not args.label_captions:
        raise ConfigError("--template is only used with --label-captions; add --label-captions or drop --template.")
    summary = prepare_vggsound(
        args.csv,
        args.clips,
        args.out,
        captions=args.captions,
        label_captions=args.label_captions,
        template=args.template or DEFAULT_TEMPLATE,
        frames=args.frames,
        frame_span=args.frame_span,
        image_format=args.image_format,
        seconds=args.seconds,
        test_size=args.test_size,
        test_ids=args.test_ids,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines of a ``prepare_vggsound`` summary."""
    splits, excluded, test = summary["splits"], summary["excluded"], summary["test_selection"]
    lines = [
        f"VGGSound -> {summary['out']}: {summary['csv_ids']} CSV ids, {summary['clips_folder']['matched']} clips found",
        f"  train: {splits['train']['items']} items" + (" -> train.jsonl" if splits["train"]["manifest"] else ""),
        f"  test:  {splits['test']['items']} of {test['selected']} selected "
        + ("(given list)" if test["rule"] == "given test-id list" else "(first by sha256 of the id)")
        + (" -> test.jsonl" if splits["test"]["manifest"] else ""),
        f"  decoded now: {summary['decoded_now']}, reused: {summary['reused']}",
    ]
    if test["selected"] < test["requested"]:
        lines.append(
            f"  note: only {test['selected']} test ids in the CSV, fewer than the {test['requested']} requested"
        )
    reasons = ", ".join(f"{reason} {n}" for reason, n in excluded["by_reason"].items())
    lines.append(f"  excluded: {excluded['total']}" + (f" ({reasons}) -> excluded.tsv" if reasons else ""))
    short = summary["short_audio"]
    if short["count"]:
        lines.append(f"  short audio (< {short['below_seconds']} s, kept): {short['count']}; listed in summary.json")
    lines.append(f"  summary: {summary['out']}/summary.json")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="prepare datasets: frames, 16 kHz audio and manifests from downloaded clips",
        description="Prepare a dataset for `gen-align encode` and training. One sub-command per dataset.",
    )
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    v = datasets.add_parser(
        "vggsound",
        help="VGGSound: official CSV + clip folder (+ captions) -> frames/, audio/, train.jsonl, test.jsonl",
        description="Decode VGGSound clips: the middle frame and the first 10 s of 16 kHz mono audio per clip; "
        "write train/test manifests (test = the first N official test ids by sha256 of the id), summary.json and "
        "excluded.tsv. Re-running resumes.",
    )
    v.add_argument("--csv", required=True, help="the official vggsound.csv (ytid,start,label,split; no header)")
    v.add_argument("--clips", required=True, help="folder of clips {ytid}_{start:06d}.mp4 (.mkv/.webm; subfolders ok)")
    v.add_argument("--out", required=True, help="output folder (frames/, audio/, manifests, summary)")
    v.add_argument("--captions", help="captions: CSV with header id,caption or JSONL {id, caption}; then required")
    v.add_argument("--label-captions", action="store_true", help="caption items without one from the class label")
    v.add_argument("--template", help='label caption template (default: "the sound of {label}")')
    v.add_argument("--frames", type=int, default=1, help="frames averaged around the middle (default 1)")
    v.add_argument("--frame-span", type=float, default=1.0, help="seconds the --frames are spread over (default 1)")
    v.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format (default jpg, q=95)")
    v.add_argument("--seconds", type=float, default=10.0, help="audio kept from the clip start (default 10)")
    v.add_argument("--test-size", type=int, default=1024, help="test items (default 1024, as in the paper)")
    v.add_argument("--test-ids", help="file of test ids (one per line) instead of the sha256 selection rule")
    v.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    v.add_argument("--overwrite", action="store_true", help="decode everything again (needed after changing settings)")
    v.set_defaults(func=run)
