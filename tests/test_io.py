"""Atomic writes: a failure (full disk, unwritable place) raises OutputError and leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os

import pytest

from gen_align.errors import GenAlignError, OutputError
from gen_align.io import write_json_atomic, write_text_atomic


def test_write_json_atomic_roundtrip(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"fid": 1.5, "name": "ω"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"fid": 1.5, "name": "ω"}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_written_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o027)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o640  # 0666 minus the umask, as open() would give
    finally:
        os.umask(umask)


def test_full_disk_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match="No space left on device.*Free disk space"):
        write_text_atomic(target, "new contents")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GenAlignError, match="could not write"):
        write_text_atomic(blocker / "r.json", "{}")
