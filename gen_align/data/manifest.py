"""JSONL manifests: one item per line, ``{"id", "image"?, "audio"?, "video"?, "text"?}`` plus free extra keys.

File paths are relative to the manifest's directory (absolute paths are accepted when they lie inside it).
After resolving ``..`` and symlinks every path must stay inside that directory; anything else is refused
with the line number. Missing files are not an error: they are listed in :attr:`Manifest.missing`, and the
item counts as lacking that modality (:meth:`Manifest.items_with` leaves it out, :meth:`Manifest.lacking`
reports it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_align.errors import ConfigError, InputFileError
from gen_align.io import write_text_atomic

FILE_MODALITIES = ("image", "audio", "video")
MODALITIES = (*FILE_MODALITIES, "text")
RESERVED_KEYS = ("id", *MODALITIES)
EXAMPLE_LINE = '{"id": "clip1", "audio": "audio/clip1.wav", "image": "frames/clip1.jpg", "text": "a dog barks"}'


@dataclass(frozen=True)
class ManifestItem:
    """One manifest entry. File paths are absolute once read by :func:`read_manifest`."""

    id: str
    image: Path | None = None
    audio: Path | None = None
    video: Path | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, modality: str) -> Path | str | None:
        """The path (or caption for ``"text"``) of ``modality``, or None."""
        return getattr(self, _check_modality(modality))

    def has(self, modality: str) -> bool:
        """Whether the entry names ``modality`` (the file may still be missing; see :class:`Manifest`)."""
        return self.get(modality) is not None


@dataclass
class Manifest:
    """Items of a manifest, with the files it names that do not exist.

    ``missing`` lists ``(id, modality, path)``; such an item is kept in ``items`` but does not count as
    having that modality in :meth:`items_with`.
    """

    path: Path
    root: Path
    items: list[ManifestItem]
    missing: list[tuple[str, str, Path]] = field(default_factory=list)
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        self._missing = {(item_id, modality) for item_id, modality, _ in self.missing}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ManifestItem]:
        return iter(self.items)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def available(self, item: ManifestItem, modality: str) -> bool:
        """Whether ``item`` names ``modality`` and its file was not found missing."""
        return item.has(modality) and (item.id, modality) not in self._missing

    def items_with(self, modalities: str | Iterable[str]) -> list[ManifestItem]:
        """Items that have every one of ``modalities`` (with existing files), in manifest order."""
        wanted = _modality_list(modalities)
        return [item for item in self.items if all(self.available(item, m) for m in wanted)]

    def lacking(self, modalities: str | Iterable[str]) -> list[tuple[str, list[str]]]:
        """``(id, [modalities it lacks])`` for the items :meth:`items_with` leaves out."""
        wanted = _modality_list(modalities)
        out = []
        for item in self.items:
            absent = [m for m in wanted if not self.available(item, m)]
            if absent:
                out.append((item.id, absent))
        return out

    def summary(self) -> dict[str, Any]:
        """Counts: items, present and missing files per modality, items having all selected modalities."""
        present = {m: sum(self.available(item, m) for item in self.items) for m in self.modalities}
        missing = {m: sum(1 for _, mod, _ in self.missing if mod == m) for m in self.modalities}
        return {
            "manifest": str(self.path),
            "items": len(self.items),
            "present": present,
            "missing": missing,
            "complete": len(self.items_with(self.modalities)),
        }


def read_manifest(
    path: str | os.PathLike, *, modalities: Iterable[str] | None = None, check_files: bool = True
) -> Manifest:
    """Parse a JSONL manifest; raise :class:`InputFileError` with the line number on any bad line.

    ``modalities`` selects which modalities are checked for existing files and summarised (default: all);
    paths of every modality are still validated. ``check_files=False`` skips the existence checks.
    """
    path = Path(path)
    selected = MODALITIES if modalities is None else tuple(_modality_list(modalities))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise InputFileError(
            f"manifest {path} does not exist. Write one JSON object per line, e.g. {EXAMPLE_LINE}"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"could not read manifest {path}: {err}. It must be a UTF-8 JSONL file.") from err
    root = path.parent.resolve()
    items: list[ManifestItem] = []
    first_line: dict[str, int] = {}
    missing: list[tuple[str, str, Path]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = _parse_line(line, path, number, root)
        if item.id in first_line:
            raise InputFileError(
                f"{path}, line {number}: duplicate id {item.id!r} (first on line {first_line[item.id]}). "
                "Ids must be unique; rename or remove one of the entries."
            )
        first_line[item.id] = number
        items.append(item)
        if check_files:
            for modality in selected:
                file = getattr(item, modality) if modality in FILE_MODALITIES else None
                if file is not None and not file.is_file():
                    missing.append((item.id, modality, file))
    if not items:
        raise InputFileError(f"manifest {path} has no items. Write one JSON object per line, e.g. {EXAMPLE_LINE}")
    return Manifest(path=path, root=root, items=items, missing=missing, modalities=selected)


def write_manifest(path: str | os.PathLike, items: Iterable[ManifestItem]) -> Path:
    """Write ``items`` as JSONL atomically, file paths relative to ``path``'s directory.

    Absolute paths must lie inside that directory (otherwise the manifest could not be read back);
    relative paths are written as they are.
    """
    path = Path(path)
    root = path.parent.resolve()
    lines = []
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ConfigError(f"cannot write manifest {path}: duplicate id {item.id!r}; ids must be unique.")
        seen.add(item.id)
        lines.append(json.dumps(_item_record(item, root), ensure_ascii=False))
    if not lines:
        raise ConfigError(f"cannot write manifest {path}: no items given (an empty manifest cannot be read back).")
    return write_text_atomic(path, "\n".join(lines) + "\n")


def manifest_hash(manifest: Manifest) -> str:
    """sha256 of the canonical JSON lines (sorted keys, paths relative to the root, items sorted by id).

    Stable across line order, whitespace, key order and moving the whole folder; changes when an id,
    path, caption or extra key changes. File contents are not hashed.
    """
    records = sorted((_item_record(item, manifest.root) for item in manifest.items), key=lambda r: r["id"])
    canonical = "".join(
        json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}.")
    return modality


def _modality_list(modalities: str | Iterable[str]) -> list[str]:
    if isinstance(modalities, str):
        modalities = [modalities]
    return [_check_modality(m) for m in modalities]


def _parse_line(line: str, path: Path, number: int, root: Path) -> ManifestItem:
    where = f"{path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputFileError(
            f"{where}: not valid JSON ({err.msg} at column {err.colno}). Each line must be one JSON object, "
            f"e.g. {EXAMPLE_LINE}"
        ) from err
    if not isinstance(record, dict):
        raise InputFileError(f"{where}: expected a JSON object, got {type(record).__name__}, e.g. {EXAMPLE_LINE}")
    item_id = record.get("id")
    if item_id is None:
        raise InputFileError(f'{where}: missing "id". Every item needs a unique string id, e.g. {EXAMPLE_LINE}')
    if not isinstance(item_id, str) or not item_id.strip():
        raise InputFileError(f'{where}: "id" must be a non-empty string, got {item_id!r}; quote numeric ids.')
    fields: dict[str, Any] = {}
    for modality in FILE_MODALITIES:
        value = record.get(modality)
        if value is not None:
            fields[modality] = _resolve_inside(value, modality, root, where)
    text = record.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise InputFileError(
            f'{where}: "text" must be a non-empty string, got {text!r}; drop the key if there is none.'
        )
    extra = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
    return ManifestItem(id=item_id, text=text, extra=extra, **fields)


def _resolve_inside(value: object, modality: str, root: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputFileError(f'{where}: "{modality}" must be a non-empty path string, got {value!r}.')
    raw = Path(value)
    try:
        resolved = (raw if raw.is_absolute() else root / raw).resolve()
    except (OSError, RuntimeError) as err:  # symlink loops
        raise InputFileError(f'{where}: "{modality}" path {value!r} cannot be resolved ({err}).') from err
    if not resolved.is_relative_to(root):
        raise InputFileError(
            f'{where}: "{modality}" path {value!r} resolves to {resolved}, outside the manifest directory {root}. '
            "Paths must stay inside the manifest's directory: move the data under it (or the manifest above it)."
        )
    return resolved


def _item_record(item: ManifestItem, root: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id}
    for modality in FILE_MODALITIES:
        file = getattr(item, modality)
        if file is not None:
            record[modality] = _relative(Path(file), root, item.id, modality)
    if item.text is not None:
        record["text"] = item.text
    clash = sorted(set(item.extra) & set(RESERVED_KEYS))
    if clash:
        raise ConfigError(f"item {item.id!r}: extra keys {clash} clash with manifest fields; rename them.")
    record.update(item.extra)
    return record


def _relative(file: Path, root: Path, item_id: str, modality: str) -> str:
    if not file.is_absolute():
        return file.as_posix()
    resolved = file.resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(
            f"item {item_id!r}: {modality} file {file} lies outside the manifest directory {root}; "
            "write the manifest in a directory that contains the data."
        )
    return resolved.relative_to(root).as_posix()
