"""Captions from any captioner, matched to item ids: CSV/TSV with ``id`` and ``caption`` (or ``text``), JSONL
``{"id": ..., "caption": ...}`` lines, or a JSON object / list of records."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_align.data.clip_index import VIDEO_SUFFIXES, parse_clip_name
from gen_align.data.vggsound_csv import read_text_file
from gen_align.errors import InputFileError

DEFAULT_TEMPLATE = "the sound of {label}"


@dataclass
class Captions:
    """Captions matched to wanted ids, with what could not be used."""

    path: Path
    texts: dict[str, str] = field(default_factory=dict)
    entries: int = 0
    unmatched: list[str] = field(default_factory=list)
    duplicates: int = 0
    empty: int = 0


def read_captions(path: str | os.PathLike, wanted: Collection[str] | None = None) -> Captions:
    """Read a captions file (CSV/TSV with ``id`` and ``caption``/``text`` columns, JSONL, or JSON) and match its ids to
    ``wanted`` (exactly, else through :func:`parse_clip_name`). The first caption of an id wins; empty ones are
    counted and skipped. Without ``wanted`` every id is kept as written."""
    path = Path(path)
    hint = 'Give a CSV with a header "id,caption" or JSONL lines {"id": "<ytid>_<start:06d>", "caption": "..."}.'
    text = read_text_file(path, "captions file", hint)
    records = _caption_records(path, text, hint)
    out = Captions(path=path)
    wanted_set = None if wanted is None else set(wanted)
    for where, raw_id, caption in records:
        out.entries += 1
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or not str(raw_id).strip():
            raise InputFileError(f"{where}: the id must be a non-empty string, got {raw_id!r}. {hint}")
        if caption is not None and not isinstance(caption, str):
            raise InputFileError(
                f"{where}: the caption must be a string, got {type(caption).__name__}; give one caption per id. {hint}"
            )
        item = _match_id(str(raw_id).strip(), wanted_set)
        if item is None:
            out.unmatched.append(str(raw_id))
        elif not caption or not caption.strip():
            out.empty += 1
        elif item in out.texts:
            out.duplicates += 1
        else:
            out.texts[item] = " ".join(caption.split())
    if not records:
        raise InputFileError(f"captions file {path} holds no captions. {hint}")
    return out


def _match_id(raw: str, wanted: set[str] | None) -> str | None:
    if wanted is None or raw in wanted:
        return raw
    stem = raw[: -len(Path(raw).suffix)] if Path(raw).suffix.lower() in VIDEO_SUFFIXES else raw
    return next((i for i in parse_clip_name(Path(stem).name) if i in wanted), None)


def _caption_records(path: Path, text: str, hint: str) -> list[tuple[str, Any, Any]]:
    """``(where, id, caption)`` per entry, the format chosen by suffix (else by the first character)."""
    suffix = path.suffix.lower()
    first = text.lstrip()[:1]
    if suffix in (".jsonl", ".ndjson") or (suffix not in (".json", ".csv", ".tsv") and first == "{"):
        if first == "{" and suffix not in (".jsonl", ".ndjson"):
            try:  # a single JSON object over several lines
                return _json_records(path, json.loads(text), hint)
            except json.JSONDecodeError:
                pass
        return _jsonl_records(path, text, hint)
    if suffix == ".json" or (suffix not in (".csv", ".tsv") and first == "["):
        try:
            return _json_records(path, json.loads(text), hint)
        except json.JSONDecodeError as err:
            raise InputFileError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}). {hint}") from err
    return _csv_records(path, text, "\t" if suffix == ".tsv" else ",", hint)


def _jsonl_records(path: Path, text: str, hint: str) -> list[tuple[str, Any, Any]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputFileError(f"{where}: not valid JSON ({err.msg}). {hint}") from err
        out.append(_record_fields(record, where, hint))
    return out


def _json_records(path: Path, data: Any, hint: str) -> list[tuple[str, Any, Any]]:
    if isinstance(data, dict) and not {"id", "caption"} <= set(data):
        return [(f"{path}, key {k!r}", k, v) for k, v in data.items()]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputFileError(f"{path}: expected a JSON object {{id: caption}} or a list of records. {hint}")
    return [_record_fields(r, f"{path}, entry {i}", hint) for i, r in enumerate(data)]


def _record_fields(record: Any, where: str, hint: str) -> tuple[str, Any, Any]:
    if not isinstance(record, dict) or "id" not in record:
        raise InputFileError(f'{where}: expected an object with "id" and "caption". {hint}')
    key = "caption" if "caption" in record else "text" if "text" in record else None
    if key is None:
        raise InputFileError(f'{where}: no "caption" (or "text") key in {sorted(record)}. {hint}')
    return where, record["id"], record[key]


def _csv_records(path: Path, text: str, delimiter: str, hint: str) -> list[tuple[str, Any, Any]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    key = "caption" if "caption" in columns else "text" if "text" in columns else None
    if "id" not in columns or key is None:
        raise InputFileError(f"{path}: the header {reader.fieldnames} lacks an 'id' and a 'caption' column. {hint}")
    reader.fieldnames = columns
    return [(f"{path}, line {reader.line_num}", row["id"], row[key]) for row in reader]


# ------------------------------------------------------------------------------------------------------- preparation
