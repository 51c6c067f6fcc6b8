"""VGGSound: the official CSV, a local folder of clips and (optionally) captions → frames, 16 kHz audio, manifests.

Inputs

* The official ``vggsound.csv`` (no header; columns: YouTube id, start second, label, split ``train``/``test``). An
  item's id is ``{ytid}_{start:06d}``.
* A folder of clips, indexed once (recursively, e.g. ``video/`` or ``train/`` + ``test/``): ``.mp4``, ``.mkv`` or
  ``.webm`` files named ``{ytid}_{start:06d}``, ``{ytid}_{start}``, ``{ytid}_{start}_{end}`` (end − start ≤ 10 s,
  zero-padded or not) or ``{ytid}_{start·1000}_{end·1000}`` (milliseconds).
* Optionally captions (any captioner): CSV/TSV with a header holding ``id`` and ``caption`` (or ``text``), JSONL lines
  ``{"id": ..., "caption": ...}``, or a JSON object ``{id: caption}`` / list of such records. Ids are
  ``{ytid}_{start:06d}`` (the naming variants above are recognised too). With ``label_captions`` a missing caption is
  the class label put into a template (default ``"the sound of {label}"``).

The test set (the paper's protocol: 1024 test videos, the rest for training) is chosen by a rule that does not depend
on which clips were downloaded: **the ids of the official test split, ranked by the sha256 hex digest of the id
string** (``hashlib.sha256(id.encode("utf-8")).hexdigest()``, ties by id) — **the first 1024**
(:func:`select_test_ids`). Selected clips missing locally are reported, not replaced; every other available clip,
official test split included, goes to train. :func:`write_test_ids` writes the selection (one id per line) so it can
be shipped as package data; :func:`read_test_ids` / ``test_ids=`` use such a list instead of the rule.

Outputs in ``OUT``: ``frames/{id}.jpg`` (or png; the middle frame, see :mod:`gen_align.data.video_io`),
``audio/{id}.flac`` (the first 10 s, 16 kHz mono; shorter clips keep their length and are listed in the summary),
``train.jsonl`` / ``test.jsonl`` (manifests, paths relative to OUT; ``video`` only when the clip lies inside OUT,
otherwise ``extra["source"]``), ``summary.json``, ``excluded.tsv`` (id, split, reason, detail: duplicate CSV rows,
missing clips, missing captions, unreadable / video-only / audio-only / silent clips) and ``decode_settings.json``.
Re-running skips items whose frame and audio already exist and are readable (all writes are atomic).
``workers > 1`` decodes in spawned processes: call :func:`prepare_vggsound` from under ``if __name__ == "__main__":``
in a script (the ``gen-align`` command does).

This module prepares the dataset; its parts live beside it and are re-exported here: ``vggsound_csv`` (the official
list and the test selection), ``clip_index`` (the folder of clips), ``captions`` (caption files).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gen_align.checks import choice, integer, non_negative, positive
from gen_align.data.captions import DEFAULT_TEMPLATE, Captions, read_captions
from gen_align.data.clip_index import CLIP_SECONDS, VIDEO_SUFFIXES, ClipIndex, index_clips, parse_clip_name
from gen_align.data.manifest import ManifestItem, write_manifest
from gen_align.data.vggsound_csv import (
    CSV_HINT,
    GIVEN_RULE,
    SELECTION_RULE,
    SHIPPED_RULE,
    SHIPPED_TEST_IDS,
    SPLITS,
    TEST_SIZE,
    VGGSoundRow,
    clip_id,
    read_test_ids,
    read_vggsound_csv,
    select_test_ids,
    write_test_ids,
)
from gen_align.data.video_io import IMAGE_FORMATS, JPEG_QUALITY, ClipError, RenderedClip, try_render_clip
from gen_align.errors import ConfigError, InputFileError
from gen_align.io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = [
    "CLIP_SECONDS",
    "CSV_HINT",
    "DEFAULT_TEMPLATE",
    "EXCLUSION_REASONS",
    "SELECTION_RULE",
    "SPLITS",
    "TEST_SIZE",
    "VIDEO_SUFFIXES",
    "Captions",
    "ClipIndex",
    "VGGSoundRow",
    "clip_id",
    "index_clips",
    "parse_clip_name",
    "prepare_vggsound",
    "read_captions",
    "read_test_ids",
    "read_vggsound_csv",
    "select_test_ids",
    "write_test_ids",
]

SAMPLE_RATE = 16000
SHORT_TOLERANCE = 0.1  # seconds: audio shorter than `seconds` by more than this is listed as short
EXCLUSION_REASONS = (
    "duplicate_row",
    "missing_clip",
    "no_caption",
    "unreadable",
    "no_video",
    "no_audio",
    "silent_audio",
)
_SETTINGS_FILE = "decode_settings.json"


def prepare_vggsound(
    csv_path: str | os.PathLike,
    clips: str | os.PathLike,
    out: str | os.PathLike,
    *,
    captions: str | os.PathLike | None = None,
    label_captions: bool = False,
    template: str = DEFAULT_TEMPLATE,
    frames: int = 1,
    frame_span: float = 1.0,
    image_format: str = "jpg",
    seconds: float = CLIP_SECONDS,
    test_size: int = TEST_SIZE,
    test_ids: str | os.PathLike | Iterable[str] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode the VGGSound clips into ``out`` and write the manifests, ``excluded.tsv`` and ``summary.json``.

    Captions are required (an item without one is excluded) when ``captions`` is given, unless ``label_captions``
    fills the gaps with ``template``; with neither, items carry no text. ``test_ids`` (a file or list) replaces the
    sha256 selection rule. ``overwrite`` re-decodes everything (needed when decode settings change). Returns the
    summary written to ``summary.json``.
    """
    began = time.monotonic()
    settings = {
        "frames": integer(frames, "--frames", 1, "Use 1 for the single middle frame."),
        "frame_span": non_negative(frame_span, "--frame-span", "It is the window the frames are spread over."),
        "image_format": choice(image_format, "image format", IMAGE_FORMATS),
        "jpeg_quality": JPEG_QUALITY,
        "seconds": positive(seconds, "--seconds", "VGGSound clips are 10 s long."),
        "sample_rate": SAMPLE_RATE,
    }
    workers = integer(workers, "--workers", 1)
    if label_captions:
        _check_template(template)
    rows = read_vggsound_csv(csv_path)
    by_id: dict[str, VGGSoundRow] = {}
    repeats = []
    for row in rows:
        if row.id in by_id:
            repeats.append((row, by_id[row.id]))
        else:
            by_id[row.id] = row
    unique = list(by_id.values())
    selected, selection_rule = _test_selection(unique, by_id, test_size, test_ids)
    test_set = set(selected)
    caption_data = read_captions(captions, by_id) if captions is not None else None
    index = index_clips(clips, by_id)
    if not index.paths:
        raise InputFileError(_nothing_found(clips, index, len(by_id)))
    out = Path(out)
    _check_settings(out, settings, overwrite)

    split_of = {i: ("test" if i in test_set else "train") for i in by_id}
    excluded = [
        (row.id, split_of[row.id], "duplicate_row", f"CSV line {row.line} repeats the id of line {kept.line} (kept)")
        for row, kept in repeats
    ]
    texts: dict[str, tuple[str, str]] = {}
    candidates: list[str] = []
    for row in unique:
        if row.id not in index.paths:
            excluded.append((row.id, split_of[row.id], "missing_clip", _missing_detail(row, index.root)))
            continue
        text = _caption_for(row, caption_data, label_captions, template)
        if text is None and caption_data is not None:
            detail = f"no caption for {row.id} in {caption_data.path}; add one or pass --label-captions"
            excluded.append((row.id, split_of[row.id], "no_caption", detail))
            continue
        if text is not None:
            texts[row.id] = text
        candidates.append(row.id)

    fmt = settings["image_format"]
    frame_of = {i: out / "frames" / f"{i}.{fmt}" for i in candidates}
    audio_of = {i: out / "audio" / f"{i}.flac" for i in candidates}
    seconds_of: dict[str, float] = {}
    jobs = []
    for item in candidates:
        existing = None if overwrite else _existing_seconds(frame_of[item], audio_of[item])
        if existing is None:
            jobs.append(item)
        else:
            seconds_of[item] = existing
    options = {k: settings[k] for k in ("frames", "frame_span", "seconds", "sample_rate", "image_format")}
    options["threads"] = 0 if workers == 1 else 1
    for item, result in _render_all([index.paths[i] for i in jobs], jobs, options, workers, progress):
        if isinstance(result, ClipError):
            excluded.append((item, split_of[item], result.reason, str(result)))
            continue
        write_bytes_atomic(audio_of[item], result.audio, what=f"audio of {item}")
        write_bytes_atomic(frame_of[item], result.image, what=f"frame of {item}")
        seconds_of[item] = result.audio_seconds

    root = out.resolve()
    manifests: dict[str, list[ManifestItem]] = {s: [] for s in SPLITS}
    for item in candidates:
        if item in seconds_of:
            manifests[split_of[item]].append(
                _manifest_item(by_id[item], split_of[item], index.paths[item], root, fmt, texts, seconds_of[item])
            )
    for split, items in manifests.items():
        if items:
            write_manifest(out / f"{split}.jsonl", items)
        else:
            (out / f"{split}.jsonl").unlink(missing_ok=True)  # never leave a stale manifest of an earlier run
    _write_excluded(out / "excluded.tsv", excluded)
    summary = _summary(
        csv_path=csv_path,
        clips=clips,
        out=out,
        settings=settings,
        rows=rows,
        by_id=by_id,
        index=index,
        captions=caption_data,
        label_captions=label_captions,
        template=template,
        selected=selected,
        test_size=test_size,
        custom_test_ids=test_ids is not None,
        selection_rule=selection_rule,
        manifests=manifests,
        excluded=excluded,
        decoded=sum(1 for i in jobs if i in seconds_of),
        reused=len(candidates) - len(jobs),
        seconds_of=seconds_of,
        elapsed=time.monotonic() - began,
    )
    write_json_atomic(out / "summary.json", summary)
    if not any(manifests.values()):
        raise InputFileError(
            f"no VGGSound clip could be prepared: every one of the {len(by_id)} CSV items was excluded "
            f"({_reason_text(summary['excluded']['by_reason'])}); see {out / 'excluded.tsv'} for each clip's reason."
        )
    return summary


def _check_template(template: object) -> None:
    hint = 'Use a template with one {label} field, e.g. "the sound of {label}".'
    if not isinstance(template, str) or "{label}" not in template:
        raise ConfigError(f"caption template {template!r} has no {{label}} field. {hint}")
    try:
        template.format(label="dog barking")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"caption template {template!r} cannot be filled ({type(err).__name__}: {err}); write literal braces as "
            f"{{{{ and }}}}. {hint}"
        ) from err


def _test_selection(
    unique: list[VGGSoundRow],
    by_id: dict[str, VGGSoundRow],
    test_size: int,
    test_ids: str | os.PathLike | Iterable[str] | None,
) -> tuple[list[str], str]:
    """The test ids and how they were chosen: the shipped 1024 (the default, when the CSV holds them all: the official
    list does), a given list, or the sha256 rule applied to this CSV's own test rows (another size, another list)."""
    if test_ids is None:
        shipped = read_test_ids(SHIPPED_TEST_IDS)
        if test_size == len(shipped) and all(i in by_id for i in shipped):
            return shipped, SHIPPED_RULE
        return select_test_ids(unique, test_size), SELECTION_RULE
    ids = read_test_ids(test_ids) if isinstance(test_ids, (str, os.PathLike)) else [str(i) for i in test_ids]
    if len(set(ids)) != len(ids):
        raise ConfigError("the test-id list repeats ids; each id may appear once.")
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise InputFileError(
            f"{len(unknown)} of the {len(ids)} test ids are not in the CSV (e.g. {unknown[0]!r}); the test-id list and "
            "the CSV do not belong together. Use the official CSV, or drop --test-ids to apply the sha256 rule."
        )
    return ids, GIVEN_RULE


def _nothing_found(clips: str | os.PathLike, index: ClipIndex, wanted: int) -> str:
    seen = f"{index.scanned} video file(s) were found" if index.scanned else "no .mp4/.mkv/.webm file was found"
    example = f" (e.g. {index.unmatched[0].name})" if index.unmatched else ""
    return (
        f"none of the {wanted} CSV clips was found under {clips}: {seen}{example}. Clips must be named "
        "{ytid}_{start:06d}.mp4 (or {ytid}_{start}.mp4, {ytid}_{start:06d}_{end:06d}.mp4, "
        "{ytid}_{start*1000}_{end*1000}.mp4; .mkv/.webm too), possibly in subfolders. Check --clips and --csv."
    )


def _missing_detail(row: VGGSoundRow, root: Path) -> str:
    return f"no {row.id}.mp4/.mkv/.webm (or naming variant) under {root}"


def _caption_for(
    row: VGGSoundRow, captions: Captions | None, label_captions: bool, template: str
) -> tuple[str, str] | None:
    if captions is not None and row.id in captions.texts:
        return captions.texts[row.id], "captions"
    if label_captions:
        return template.format(label=row.label), "label"
    return None


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Outputs decoded with other settings must not be mixed with new ones: refuse unless ``overwrite``. Then record
    the settings and remove temporary files a killed run left behind."""
    path = out / _SETTINGS_FILE
    if not overwrite:
        _refuse_other_settings(out, path, settings)
    write_json_atomic(path, settings)
    for folder in ("frames", "audio"):
        for tmp in (out / folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _refuse_other_settings(out: Path, path: Path, settings: dict[str, Any]) -> None:
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            changed = (
                ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
                if isinstance(old, dict)
                else "unreadable settings file"
            )
            raise ConfigError(
                f"{out} holds frames/audio decoded with other settings ({changed}). Pass --overwrite to decode "
                "everything again with the new settings, or choose another --out."
            )
    elif _has_files(out / "frames") or _has_files(out / "audio"):
        raise ConfigError(
            f"{out} already holds frames/ or audio/ files but no {_SETTINGS_FILE}, so their decode settings are "
            "unknown. Pass --overwrite to decode everything again, or choose another --out."
        )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _existing_seconds(frame: Path, audio: Path) -> float | None:
    """Audio length if both outputs exist and are readable (a 16 kHz mono FLAC, an image), else None."""
    import soundfile as sf
    from PIL import Image

    if not (frame.is_file() and audio.is_file()):
        return None
    try:
        info = sf.info(str(audio))
        with Image.open(frame) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - any unreadable output is simply decoded again
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0:
        return None
    return info.frames / info.samplerate


def _render_all(
    paths: list[Path], items: list[str], options: dict[str, Any], workers: int, progress: bool
) -> Iterator[tuple[str, RenderedClip | ClipError]]:
    """``(id, rendered clip or error)`` in order, decoded in this process or in a pool of ``workers`` processes."""
    bar = tqdm(total=len(items), desc="vggsound", unit="clip", disable=not progress or not items)
    try:
        if workers == 1 or len(items) <= 1:
            for item, path in zip(items, paths, strict=True):
                yield item, try_render_clip(path, options)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        count = min(workers, len(items))
        chunk = max(1, min(16, len(items) // (count * 4)))
        done = 0
        with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                results = pool.map(try_render_clip, paths, [options] * len(paths), chunksize=chunk)
                for item, result in zip(items, results, strict=True):
                    yield item, result
                    done += 1
                    bar.update()
            except BrokenProcessPool as err:
                raise InputFileError(
                    f"a decoding process died (FFmpeg crashed or memory ran out) after {done} of {len(items)} clips "
                    "were written. Re-run to resume (finished clips are skipped); if it happens again, find the clip "
                    "with --workers 1 and move it out of the clips folder."
                ) from err
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def _manifest_item(
    row: VGGSoundRow,
    split: str,
    clip: Path,
    root: Path,
    fmt: str,
    texts: dict[str, tuple[str, str]],
    audio_seconds: float,
) -> ManifestItem:
    extra: dict[str, Any] = {
        "label": row.label,
        "split": split,
        "csv_split": row.split,
        "ytid": row.ytid,
        "start": row.start,
        "audio_seconds": round(audio_seconds, 4),
    }
    source = clip.resolve()
    video = source if source.is_relative_to(root) else None
    if video is None:
        extra["source"] = str(source)
    text, origin = texts.get(row.id, (None, None))
    if origin is not None:
        extra["caption_source"] = origin
    return ManifestItem(
        id=row.id,
        image=Path("frames") / f"{row.id}.{fmt}",
        audio=Path("audio") / f"{row.id}.flac",
        video=video,
        text=text,
        extra=extra,
    )


def _write_excluded(path: Path, excluded: list[tuple[str, str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "split", "reason", "detail"])
    for item, split, reason, detail in excluded:
        writer.writerow([item, split, reason, " ".join(detail.split())])
    write_text_atomic(path, buf.getvalue())


def _reason_text(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in by_reason.items()) or "none"


def _summary(**kw: Any) -> dict[str, Any]:
    excluded, manifests, by_id = kw["excluded"], kw["manifests"], kw["by_id"]
    by_reason = Counter(reason for _, _, reason, _ in excluded)
    by_split: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for _, split, reason, _ in excluded:
        by_split[split][reason] += 1
    selected = kw["selected"]
    prepared = {item.id for item in manifests["test"]}
    limit = kw["settings"]["seconds"] - SHORT_TOLERANCE
    short = {i: round(s, 3) for i, s in sorted(kw["seconds_of"].items()) if s < limit}
    captions: Captions | None = kw["captions"]
    return {
        "dataset": "vggsound",
        "csv": str(kw["csv_path"]),
        "clips": str(kw["clips"]),
        "out": str(kw["out"]),
        "settings": kw["settings"],
        "csv_rows": len(kw["rows"]),
        "csv_ids": len(by_id),
        "csv_splits": dict(Counter(row.split for row in by_id.values())),
        "clips_folder": {
            "video_files": kw["index"].scanned,
            "matched": len(kw["index"].paths),
            "duplicate_files": sum(len(v) for v in kw["index"].duplicates.values()),
            "unmatched_files": len(kw["index"].unmatched),
            "unmatched_examples": [str(p) for p in kw["index"].unmatched[:10]],
        },
        "test_selection": {
            "rule": kw["selection_rule"],
            "requested": len(selected) if kw["custom_test_ids"] else kw["test_size"],
            "official_test_ids": sum(1 for row in by_id.values() if row.split == "test"),
            "selected": len(selected),
            "prepared": len(prepared),
            "missing_or_excluded": len(selected) - len(prepared),
        },
        "captions": {
            "file": None if captions is None else str(captions.path),
            "required": captions is not None and not kw["label_captions"],
            "entries": 0 if captions is None else captions.entries,
            "matched": 0 if captions is None else len(captions.texts),
            "unmatched_ids": 0 if captions is None else len(captions.unmatched),
            "unmatched_examples": [] if captions is None else captions.unmatched[:10],
            "duplicate_ids": 0 if captions is None else captions.duplicates,
            "empty": 0 if captions is None else captions.empty,
            "label_template": kw["template"] if kw["label_captions"] else None,
        },
        "splits": {
            split: {
                "items": len(items),
                "manifest": f"{split}.jsonl" if items else None,
                "text_from_captions": sum(1 for i in items if i.extra.get("caption_source") == "captions"),
                "text_from_label": sum(1 for i in items if i.extra.get("caption_source") == "label"),
            }
            for split, items in manifests.items()
        },
        "excluded": {
            "total": len(excluded),
            "by_reason": {r: by_reason[r] for r in EXCLUSION_REASONS if by_reason[r]},
            "by_split": {s: {r: c[r] for r in EXCLUSION_REASONS if c[r]} for s, c in by_split.items()},
            "file": "excluded.tsv",
        },
        "decoded_now": kw["decoded"],
        "reused": kw["reused"],
        "short_audio": {"count": len(short), "below_seconds": round(limit, 3), "items": short},
        "elapsed_seconds": round(kw["elapsed"], 2),
    }
