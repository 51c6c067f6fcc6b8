"""The official VGGSound list (``vggsound.csv``: ytid, start, label, split) and the deterministic test selection
(:func:`select_test_ids`: the official test ids ranked by sha256 of the id, the first 1024)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gen_align.checks import integer
from gen_align.errors import ConfigError, InputFileError
from gen_align.io import write_text_atomic

TEST_SIZE = 1024
SHIPPED_TEST_IDS = Path(__file__).resolve().parent / "vggsound_test_1024.txt"
"""Package data: the 1024 test ids every gen-align user evaluates on (:data:`SHIPPED_HEADER` says how they were
drawn; :func:`write_test_ids` redraws them)."""
SHIPPED_HEADER = """The VGGSound test selection of gen-align: 1024 clip ids {ytid}_{start:06d}.
Drawn from the official VGGSound test list (github.com/hche11/VGGSound, data/test.csv, commit
9bbc7491c054a203e53584c0065df336e1322bb7; 15 446 lines) by the rule: official test-split ids ranked by
sha256(id).hexdigest() (ties by id); the first 1024. Redraw it with
  gen-align data test-ids --csv test.csv --out vggsound_test_1024.txt
Data: VGGSound, H. Chen, W. Xie, A. Vedaldi, A. Zisserman, "VGGSound: A Large-Scale Audio-Visual Dataset",
ICASSP 2020 (Visual Geometry Group, University of Oxford); licensed under Creative Commons Attribution 4.0
International (https://creativecommons.org/licenses/by/4.0/). This list is derived from it (a selection of ids)."""
SPLITS = ("train", "test")
SELECTION_RULE = "official test-split ids ranked by sha256(id).hexdigest() (ties by id); the first n"
SHIPPED_RULE = "the shipped selection (gen_align/data/vggsound_test_1024.txt: the sha256 rule over the official list)"
GIVEN_RULE = "given test-id list"
CSV_HINT = (
    "The official vggsound.csv (https://www.robots.ox.ac.uk/~vgg/data/vggsound/vggsound.csv) has no header and 4 "
    "columns: YouTube id, start second, label, split (train/test), e.g. ---g-f_I2yQ,1,people marching,test; the "
    "official test list (github.com/hche11/VGGSound data/test.csv) has 2: {ytid}_{start:06d}.mp4, label"
)
_YTID = re.compile(r"[A-Za-z0-9_-]+")
_TEST_LIST_NAME = re.compile(r"(?P<ytid>[A-Za-z0-9_-]+)_(?P<start>[0-9]{6})\.(?:mp4|mkv|webm)")
DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class VGGSoundRow:
    """One row of the official CSV (``line`` is its line number, for messages)."""

    ytid: str
    start: int
    label: str
    split: str
    line: int = 0

    @property
    def id(self) -> str:
        return clip_id(self.ytid, self.start)


def clip_id(ytid: str, start: int) -> str:
    """The VGGSound item id ``{ytid}_{start:06d}``."""
    return f"{ytid}_{int(start):06d}"


# -------------------------------------------------------------------------------------------------------------- CSV


def read_vggsound_csv(path: str | os.PathLike) -> list[VGGSoundRow]:
    """Parse either official list: ``vggsound.csv`` (ytid, start, label, split; a header line, if present, is
    skipped) or the test list ``test.csv`` (``{ytid}_{start:06d}.mp4,label``; every row is split "test"). One file
    holds one format; :class:`InputFileError` names the bad line."""
    path = Path(path)
    text = read_text_file(path, "VGGSound CSV", CSV_HINT)
    rows: list[VGGSoundRow] = []
    reader = csv.reader(io.StringIO(text))
    seen_first, layout = False, None
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        kind = "test list" if len(fields) == 2 and _TEST_LIST_NAME.fullmatch(fields[0]) else "full"
        if not seen_first:
            seen_first = True
            if kind == "full" and not _is_int(fields[1:2]):
                continue  # a header line such as "# YouTube ID, start seconds, label, train/test split"
        if layout is not None and kind != layout:
            raise InputFileError(
                f"{path}, line {line}: {fields!r} is not a {layout} row like the lines before it; one file holds "
                f"one format. {CSV_HINT}"
            )
        layout = kind
        rows.append(_test_list_row(path, line, fields) if kind == "test list" else _full_row(path, line, fields))
    if not rows:
        raise InputFileError(f"{path} holds no rows. {CSV_HINT}")
    return rows


def _test_list_row(path: Path, line: int, fields: list[str]) -> VGGSoundRow:
    name, label = fields
    match = _TEST_LIST_NAME.fullmatch(name)
    if not label:
        raise InputFileError(f"{path}, line {line}: the label is empty; every row needs its class label.")
    return VGGSoundRow(match["ytid"], int(match["start"]), label, "test", line)


def _full_row(path: Path, line: int, fields: list[str]) -> VGGSoundRow:
    if len(fields) != 4:
        raise InputFileError(f"{path}, line {line}: {len(fields)} columns ({fields!r}), expected 4. {CSV_HINT}")
    ytid, start, label, split = fields
    if not _YTID.fullmatch(ytid):
        raise InputFileError(
            f"{path}, line {line}: YouTube id {ytid!r} may only contain letters, digits, '-' and '_'. {CSV_HINT}"
        )
    if not _is_int([start]) or float(start) < 0:
        raise InputFileError(f"{path}, line {line}: start second {start!r} is not a whole number >= 0. {CSV_HINT}")
    if split.lower() not in SPLITS:
        raise InputFileError(f"{path}, line {line}: split {split!r} must be 'train' or 'test'. {CSV_HINT}")
    if not label:
        raise InputFileError(f"{path}, line {line}: the label is empty; every row needs its class label.")
    return VGGSoundRow(ytid, int(float(start)), label, split.lower(), line)


def _is_int(values: list[str]) -> bool:
    if len(values) != 1:
        return False
    try:
        return float(values[0]).is_integer()
    except ValueError:
        return False


def read_text_file(path: Path, what: str, hint: str) -> str:
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist; check the path (relative to {Path.cwd()}). {hint}")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory; pass the file. {hint}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"could not read {what} {path}: {err}. It must be a UTF-8 text file. {hint}") from err


# ---------------------------------------------------------------------------------------------------- test selection


def select_test_ids(csv_rows: Iterable[VGGSoundRow | tuple], n: int = TEST_SIZE) -> list[str]:
    """The test set: the official test-split ids ranked by ``sha256(id).hexdigest()`` (ties by id), the first ``n``.

    ``csv_rows`` are :class:`VGGSoundRow` or ``(ytid, start, label, split)`` tuples. The result depends only on the
    CSV, never on which clips are present; fewer than ``n`` ids are returned if the CSV has fewer test ids.
    """
    n = integer(n, "test size", 0, "The paper uses 1024 test videos.")
    ids = {_as_row(row).id for row in csv_rows if _as_row(row).split == "test"}
    return sorted(ids, key=lambda i: (hashlib.sha256(i.encode("utf-8")).hexdigest(), i))[:n]


def write_test_ids(
    csv_rows: Iterable[VGGSoundRow | tuple], path: str | os.PathLike, n: int = TEST_SIZE, *, header: str = ""
) -> Path:
    """Write :func:`select_test_ids` to ``path``, one id per line (atomically), after ``header`` as ``#`` comment
    lines (e.g. the dataset's attribution, for a list shipped as package data)."""
    ids = select_test_ids(csv_rows, n)
    if not ids:
        raise ConfigError("no test ids to write: the rows hold no 'test' split (or n is 0); pass the official CSV.")
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return write_text_atomic(path, comments + "\n".join(ids) + "\n")


def read_test_ids(path: str | os.PathLike) -> list[str]:
    """A test-id list written by :func:`write_test_ids` (one id per line; blank lines and ``#`` comments ignored)."""
    path = Path(path)
    hint = "Write it with gen_align.data.vggsound.write_test_ids (one {ytid}_{start:06d} id per line)."
    ids = [s.strip() for s in read_text_file(path, "test-id list", hint).splitlines()]
    ids = [s for s in ids if s and not s.startswith("#")]
    if not ids:
        raise InputFileError(f"test-id list {path} is empty. {hint}")
    repeated = [i for i, c in Counter(ids).items() if c > 1]
    if repeated:
        raise InputFileError(f"test-id list {path} repeats ids (e.g. {repeated[0]!r}); each id may appear once.")
    return ids


def _as_row(row: VGGSoundRow | tuple) -> VGGSoundRow:
    if isinstance(row, VGGSoundRow):
        return row
    if isinstance(row, (tuple, list)) and len(row) == 4:
        ytid, start, label, split = row
        return VGGSoundRow(str(ytid), int(start), str(label), str(split).strip().lower())
    raise ConfigError(
        f"expected a VGGSoundRow or a (ytid, start, label, split) tuple, got {row!r}; read the CSV with "
        "read_vggsound_csv."
    )


# ------------------------------------------------------------------------------------------------------ clip folder
