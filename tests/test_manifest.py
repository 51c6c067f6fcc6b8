"""JSONL manifests: parsing, line-numbered errors, path containment, missing files, atomic write, stable hash."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from gen_align.data.manifest import Manifest, ManifestItem, manifest_hash, read_manifest, write_manifest
from gen_align.errors import ConfigError, InputFileError


def write_lines(path, *records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    for name in ("a.wav", "a.jpg", "b.wav", "sub/c.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_parse_resolves_paths_and_keeps_extra_keys(data_dir):
    path = write_lines(
        data_dir / "m.jsonl",
        {"id": "a", "audio": "a.wav", "image": "a.jpg", "text": "a dog", "label": 3},
        "",
        {"id": "b", "audio": "./b.wav", "image": None},
        {"id": "c", "image": "sub/../sub/c.jpg", "text": "a cat"},
    )
    manifest = read_manifest(path)
    assert manifest.ids == ["a", "b", "c"]
    a, b, c = manifest.items
    assert a.audio == (data_dir / "a.wav").resolve() and a.text == "a dog" and a.extra == {"label": 3}
    assert b.image is None and b.has("audio") and not b.has("text")
    assert c.image == (data_dir / "sub" / "c.jpg").resolve()
    assert manifest.missing == []
    assert manifest.summary()["present"] == {"image": 2, "audio": 2, "video": 0, "text": 2}
    assert [i.id for i in manifest.items_with(["image", "text"])] == ["a", "c"]


def test_absolute_path_inside_root_is_accepted(data_dir):
    path = write_lines(data_dir / "m.jsonl", {"id": "a", "audio": str((data_dir / "a.wav").resolve())})
    assert read_manifest(path).items[0].audio == (data_dir / "a.wav").resolve()


def test_missing_files_are_listed_not_dropped(data_dir):
    path = write_lines(
        data_dir / "m.jsonl",
        {"id": "a", "audio": "a.wav", "image": "a.jpg"},
        {"id": "b", "audio": "b.wav", "image": "gone.jpg"},
        {"id": "c", "audio": "nope.wav", "image": "sub/c.jpg"},
    )
    manifest = read_manifest(path)
    assert len(manifest) == 3
    assert manifest.missing == [
        ("b", "image", data_dir.resolve() / "gone.jpg"),
        ("c", "audio", data_dir.resolve() / "nope.wav"),
    ]
    assert [i.id for i in manifest.items_with("audio")] == ["a", "b"]
    assert [i.id for i in manifest.items_with(["audio", "image"])] == ["a"]
    assert manifest.lacking(["audio", "image"]) == [("b", ["image"]), ("c", ["audio"])]
    summary = manifest.summary()
    assert summary["missing"] == {"image": 1, "audio": 1, "video": 0, "text": 0}
    assert summary["present"]["audio"] == 2 and summary["complete"] == 0  # nobody has video or text
    # Only the selected modalities are checked; check_files=False checks nothing.
    assert read_manifest(path, modalities=["image"]).missing == [("b", "image", data_dir.resolve() / "gone.jpg")]
    assert read_manifest(path, check_files=False).missing == []


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"id": "x", "audio": "a.wav"', "line 2: not valid JSON"),
        ('["x"]', "line 2: expected a JSON object"),
        ('{"audio": "a.wav"}', 'line 2: missing "id"'),
        ('{"id": 7}', 'line 2: "id" must be a non-empty string'),
        ('{"id": ""}', 'line 2: "id" must be a non-empty string'),
        ('{"id": "x", "image": 5}', 'line 2: "image" must be a non-empty path string'),
        ('{"id": "x", "text": ["a"]}', 'line 2: "text" must be a non-empty string'),
        ('{"id": "a"}', "line 2: duplicate id 'a' \\(first on line 1\\)"),
    ],
)
def test_bad_lines_name_the_line(data_dir, bad_line, message):
    path = write_lines(data_dir / "m.jsonl", {"id": "a", "audio": "a.wav"}, bad_line)
    with pytest.raises(InputFileError, match=message):
        read_manifest(path)


@pytest.mark.parametrize("value", ["../../etc/passwd", "sub/../../outside.wav", "/etc/passwd", "link/secret.wav"])
def test_paths_escaping_the_root_are_rejected(tmp_path, data_dir, value):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"x")
    os.symlink(outside, data_dir / "link")
    path = write_lines(data_dir / "m.jsonl", {"id": "a", "audio": "a.wav"}, {"id": "b", "audio": value})
    with pytest.raises(InputFileError, match=r"line 2: \"audio\" path .* outside the manifest directory"):
        read_manifest(path)


def test_symlink_inside_root_is_fine(data_dir):
    os.symlink(data_dir / "sub", data_dir / "alias")
    path = write_lines(data_dir / "m.jsonl", {"id": "a", "image": "alias/c.jpg"})
    assert read_manifest(path).items[0].image == (data_dir / "sub" / "c.jpg").resolve()


def test_empty_and_absent_manifest(data_dir):
    with pytest.raises(InputFileError, match="has no items"):
        read_manifest(write_lines(data_dir / "empty.jsonl", "", "   "))
    with pytest.raises(InputFileError, match="does not exist"):
        read_manifest(data_dir / "nothing.jsonl")
    with pytest.raises(ConfigError, match="unknown modality"):
        read_manifest(write_lines(data_dir / "m.jsonl", {"id": "a"}), modalities=["smell"])


def test_write_read_roundtrip_and_hash(tmp_path, data_dir):
    path = write_lines(
        data_dir / "m.jsonl",
        {"id": "b", "audio": "b.wav", "text": "ω caption"},
        {"id": "a", "image": "a.jpg", "audio": "a.wav", "split": "train"},
    )
    manifest = read_manifest(path)
    copy = write_manifest(data_dir / "copy.jsonl", manifest.items)
    assert read_manifest(copy).items == manifest.items
    assert json.loads(copy.read_text(encoding="utf-8").splitlines()[1]) == {
        "id": "a",
        "image": "a.jpg",
        "audio": "a.wav",
        "split": "train",
    }
    reference = manifest_hash(manifest)
    assert len(reference) == 64 and manifest_hash(read_manifest(copy)) == reference
    # Stable under line order and moving the folder; sensitive to content.
    write_lines(data_dir / "reordered.jsonl", *reversed(path.read_text().splitlines()))
    assert manifest_hash(read_manifest(data_dir / "reordered.jsonl")) == reference
    moved = shutil.copytree(data_dir, tmp_path / "moved")
    assert manifest_hash(read_manifest(moved / "m.jsonl")) == reference
    write_lines(
        data_dir / "changed.jsonl", {"id": "b", "audio": "b.wav", "text": "other"}, {"id": "a", "audio": "a.wav"}
    )
    assert manifest_hash(read_manifest(data_dir / "changed.jsonl")) != reference


def test_write_manifest_refuses_unreadable_results(tmp_path, data_dir):
    item = ManifestItem(id="a", audio=(data_dir / "a.wav").resolve())
    with pytest.raises(ConfigError, match="outside the manifest directory"):
        write_manifest(tmp_path / "elsewhere" / "m.jsonl", [item])
    with pytest.raises(ConfigError, match="duplicate id"):
        write_manifest(data_dir / "m.jsonl", [item, item])
    with pytest.raises(ConfigError, match="no items"):
        write_manifest(data_dir / "m.jsonl", [])
    assert not (data_dir / "m.jsonl").exists()


def test_manifest_is_iterable(data_dir):
    manifest = read_manifest(write_lines(data_dir / "m.jsonl", {"id": "a", "text": "hi"}))
    assert isinstance(manifest, Manifest) and [i.id for i in manifest] == ["a"]
    assert manifest.items[0].get("text") == "hi"
