"""`gen-align data`: prepare datasets (decode clips into frames, 16 kHz audio and manifests). One sub-command per
dataset: ``gen-align data vggsound ...``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DATASETS = ("vggsound", "caption", "test-ids")
CAPTION_MODEL = "Salesforce/blip-image-captioning-large"  # gen_align.data.captioning.DEFAULT_CAPTION_MODEL (why: there)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "vggsound":
        return _run_vggsound(args)
    if args.dataset == "caption":
        return _run_caption(args)
    if args.dataset == "test-ids":
        return _run_test_ids(args)
    raise AssertionError(f"unhandled dataset {args.dataset!r}")  # argparse only accepts DATASETS


def _captioner(args: argparse.Namespace) -> Any:
    from gen_align.data.captioning import Captioner

    return Captioner(
        args.caption_model, device=args.device, weights_dir=args.weights_dir, prompt=args.caption_prompt,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
    )  # fmt: skip


def _run_caption(args: argparse.Namespace) -> int:
    from gen_align.data.captioning import caption_manifest

    summary = caption_manifest(
        args.manifest, _captioner(args), args.out, batch_size=args.batch_size, strict=args.strict
    )
    print(format_captions(summary))
    return 0


def format_captions(summary: dict[str, Any]) -> str:
    """What a captioning run did, with every skipped frame listed."""
    lines = [
        f"captions -> {summary['out']}: {summary['captioned_now']} new, {summary['already']} already there "
        f"({summary['captioner']['model']})"
    ]
    if summary["without_image"]:
        lines.append(f"  {len(summary['without_image'])} item(s) have no image to caption")
    if summary["skipped"]:
        lines.append(f"  skipped {len(summary['skipped'])} bad frame(s) (not captioned; fix them and run again):")
        lines += [f"    {s['id']}: {s['error']}" for s in summary["skipped"]]
    return "\n".join(lines)


def _run_test_ids(args: argparse.Namespace) -> int:
    from gen_align.data.vggsound_csv import SHIPPED_HEADER, read_vggsound_csv, write_test_ids

    path = write_test_ids(
        read_vggsound_csv(args.csv), args.out, args.n, header=SHIPPED_HEADER if args.n == 1024 else ""
    )
    print(f"wrote {path}: the first {args.n} test ids of {args.csv} by sha256 of the id")
    return 0


def _run_vggsound(args: argparse.Namespace) -> int:
    from gen_align.data.vggsound import DEFAULT_TEMPLATE, prepare_vggsound
    from gen_align.errors import ConfigError

    if args.template is not None and not args.label_captions:
        raise ConfigError("--template is only used with --label-captions; add --label-captions or drop --template.")
    if args.caption_model and args.captions:
        raise ConfigError("pass --captions (a file of captions) or --caption-model (caption the frames), not both.")
    captioner = _captioner(args) if args.caption_model else None  # loaded first: a missing model fails before decoding
    settings = {
        "csv_path": args.csv,
        "clips": args.clips,
        "out": args.out,
        "captions": args.captions,
        "label_captions": args.label_captions,
        "template": args.template or DEFAULT_TEMPLATE,
        "frames": args.frames,
        "frame_span": args.frame_span,
        "image_format": args.image_format,
        "seconds": args.seconds,
        "test_size": args.test_size,
        "test_ids": args.test_ids,
        "workers": args.workers,
        "overwrite": args.overwrite,
    }
    summary = prepare_vggsound(**settings)
    settings["overwrite"] = False
    print(format_summary(summary))
    if args.caption_model:
        from gen_align.data.captioning import caption_manifest

        out = Path(args.out)
        captions = out / "captions.jsonl"
        for split in ("test", "train"):
            if (out / f"{split}.jsonl").is_file():
                print(format_captions(caption_manifest(out / f"{split}.jsonl", captioner, captions,
                                                       batch_size=args.caption_batch_size)))  # fmt: skip
        summary = prepare_vggsound(**{**settings, "captions": captions})  # the manifests again, with the captions
        print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines of a ``prepare_vggsound`` summary."""
    from gen_align.data.vggsound_csv import GIVEN_RULE, SHIPPED_RULE

    splits, excluded, test = summary["splits"], summary["excluded"], summary["test_selection"]
    lines = [
        f"VGGSound -> {summary['out']}: {summary['csv_ids']} CSV ids, {summary['clips_folder']['matched']} clips found",
        f"  train: {splits['train']['items']} items" + (" -> train.jsonl" if splits["train"]["manifest"] else ""),
        f"  test:  {splits['test']['items']} of {test['selected']} selected "
        + {GIVEN_RULE: "(given list)", SHIPPED_RULE: "(the shipped selection)"}.get(
            test["rule"], "(first by sha256 of the id)"
        )
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
    v.add_argument("--caption-model", help="caption the frames with this captioning model (hub id or folder) into "
                   "OUT/captions.jsonl, then write the manifests with them; see `gen-align data caption`")  # fmt: skip
    v.add_argument("--caption-batch-size", type=int, default=16, help="frames per captioning batch (default 16)")
    _caption_options(v)
    v.set_defaults(func=run)

    c = datasets.add_parser(
        "caption",
        help="caption a manifest's images with a transformers captioning model -> id/caption JSONL",
        description="Caption every item's image (for VGGSound, the clip's middle frame) with an image-captioning model "
        "(BLIP, BLIP-2, GIT, Florence-2 through transformers' AutoModelForImageTextToText), batched, on the GPU when "
        "there is one (accelerate launch splits the items over processes), resumable (finished ids are skipped; a "
        "killed run loses at most a batch). Missing, corrupt or tiny frames are listed and skipped. The output is "
        "what `gen-align data vggsound --captions` reads.",
    )
    c.add_argument("manifest", help="JSONL manifest ({id, image, ...} per line)")
    c.add_argument("--out", required=True, help="captions JSONL ({id, caption} per line; appended to when resuming)")
    c.add_argument("--model", dest="caption_model", default=CAPTION_MODEL, help="captioning model: hub id or folder "
                   "(default Salesforce/blip-image-captioning-large)")  # fmt: skip
    c.add_argument("--batch-size", type=int, default=16, help="frames per batch (default 16)")
    c.add_argument("--strict", action="store_true", help="stop at the first bad frame instead of listing it")
    _caption_options(c)
    c.set_defaults(func=run)

    t = datasets.add_parser(
        "test-ids",
        help="the VGGSound test selection from an official list (the rule of the shipped 1024 ids)",
        description="Write the first N official test ids ranked by sha256 of the id: with N = 1024 and the official "
        "test list this is the selection gen-align ships (gen_align/data/vggsound_test_1024.txt).",
    )
    t.add_argument("--csv", required=True, help="vggsound.csv (ytid,start,label,split) or the test list test.csv")
    t.add_argument("--out", required=True, help="the id list to write (one id per line)")
    t.add_argument("--n", type=int, default=1024, help="how many ids (default 1024)")
    t.set_defaults(func=run)


def _caption_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--caption-prompt", help='text prompt for the captioner (Florence-2: "<CAPTION>"; default none)')
    p.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default 30)")
    p.add_argument("--num-beams", type=int, default=3, help="beam search width (default 3)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: the GPU when there is one)")
    p.add_argument("--weights-dir", help="local weights directory (default: $GEN_ALIGN_HOME or ~/.cache/gen-align)")
