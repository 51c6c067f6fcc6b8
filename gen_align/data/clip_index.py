"""A folder of downloaded clips indexed by item id (``{ytid}_{start:06d}`` and the usual naming variants)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gen_align.data.vggsound_csv import DIGITS, clip_id
from gen_align.errors import InputFileError

CLIP_SECONDS = 10
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")  # also the preference order when one clip exists in several files


@dataclass
class ClipIndex:
    """Clips found under a folder: ``paths`` maps an id to its file; ``duplicates`` lists the other files found for an
    id (not used); ``unmatched`` the video files whose names match no wanted id; ``scanned`` counts video files."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)
    unmatched: list[Path] = field(default_factory=list)
    scanned: int = 0


def parse_clip_name(stem: str) -> list[str]:
    """Candidate item ids for a file name without extension, most specific first (see the module notes)."""
    out = []
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[0] and all(DIGITS.fullmatch(p) for p in parts[1:]):
        ytid, a, b = parts[0], int(parts[1]), int(parts[2])
        if 0 < b - a <= CLIP_SECONDS:
            out.append(clip_id(ytid, a))
        if a % 1000 == 0 and 0 < b - a <= CLIP_SECONDS * 1000:
            out.append(clip_id(ytid, a // 1000))
    head, _, tail = stem.rpartition("_")
    if head and DIGITS.fullmatch(tail):
        out.append(clip_id(head, int(tail)))
    return out


def index_clips(root: str | os.PathLike, wanted: Collection[str]) -> ClipIndex:
    """Walk ``root`` once (following symlinked folders, without loops) and map each wanted id to its clip file.

    When several files name one id, the preferred suffix (:data:`VIDEO_SUFFIXES` order), then the shallower, then
    the alphabetically first path wins; the others are listed in ``duplicates``.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise InputFileError(
            f"clips folder {root} {what}; pass the folder holding the downloaded VGGSound clips "
            "({ytid}_{start:06d}.mp4, possibly in subfolders)."
        )
    wanted = set(wanted)
    found: dict[str, list[Path]] = {}
    index = ClipIndex(root=root)
    for path in _walk_videos(root):
        index.scanned += 1
        item = next((i for i in parse_clip_name(path.name[: -len(path.suffix)]) if i in wanted), None)
        if item is None:
            index.unmatched.append(path)
        else:
            found.setdefault(item, []).append(path)
    for item, paths in found.items():
        paths.sort(key=lambda p: (VIDEO_SUFFIXES.index(p.suffix.lower()), len(p.parts), str(p)))
        index.paths[item] = paths[0]
        if len(paths) > 1:
            index.duplicates[item] = paths[1:]
    return index


def _walk_videos(root: Path) -> Iterator[Path]:
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES:
                yield Path(folder) / name


# ---------------------------------------------------------------------------------------------------------- captions
