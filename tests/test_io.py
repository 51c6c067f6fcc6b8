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


def test_write_folder_atomic_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path):
    import os
    import stat

    from gen_align.io import write_folder_atomic

    target = tmp_path / "tower"

    def write(files):
        def fill(folder):
            for name, text in files.items():
                (folder / name).write_text(text)

        return fill

    write_folder_atomic(target, write({"a.txt": "one", "b.txt": "two"}))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o055 == 0o055 & ~_umask()  # not mkdtemp's 0700

    def half_then_fail(folder):
        (folder / "a.txt").write_text("new")
        raise OSError(28, "No space left on device")

    with pytest.raises(GenAlignError, match="No space left on device"):
        write_folder_atomic(target, half_then_fail)
    assert (target / "a.txt").read_text() == "one" and (target / "b.txt").read_text() == "two"  # the old folder stays
    write_folder_atomic(target, write({"c.txt": "three"}))
    assert [p.name for p in target.iterdir()] == ["c.txt"]  # replaced whole, no stale file
    assert [p.name for p in tmp_path.iterdir()] == ["tower"]  # no temporary folder left behind


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
