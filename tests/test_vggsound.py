"""VGGSound preparation on a synthetic folder: CSV/captions parsing, naming variants, the sha256 test selection,
manifests, exclusions (every reason reported), resume, process pool, and the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from test_video_io import TOLERANCE, colour, make_clip

from gen_align.cli import main
from gen_align.data.manifest import read_manifest
from gen_align.data.vggsound import (
    VGGSoundRow,
    index_clips,
    parse_clip_name,
    prepare_vggsound,
    read_captions,
    read_test_ids,
    read_vggsound_csv,
    select_test_ids,
    write_test_ids,
)
from gen_align.errors import ConfigError, InputFileError

TRAIN = [  # (ytid, start, label, how the clip is stored)
    ("aaaaaaaaaaa", 0, "dog barking", "video/{y}_{s:06d}.mp4"),
    ("b-b_b_12345", 30, "cattle, bovinae cowbell", "train/{y}_{s}.mkv"),
    ("ccccccccccc", 5, "playing cello", "test/deep/{y}_{s:06d}_{e:06d}.mp4"),
    ("ddddddddddd", 7, "rain", "{y}_{ms}_{ems}.webm"),
    ("eeeeeeeeeee", 1, "engine", "video_only"),
    ("fffffffffff", 2, "flute", "audio_only"),
    ("ggggggggggg", 3, "gong", "corrupt"),
    ("hhhhhhhhhhh", 4, "harp", "missing"),
    ("iiiiiiiiiii", 6, "ice cracking", "uncaptioned"),
]
TEST = [(f"t{k}-test-ytid", 10 * k, f"class {k}") for k in range(5)]
TEST_SIZE = 3


def sha_rank(ids):
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode("utf-8")).hexdigest())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """CSV + clip folder + captions; the first selected test id is not downloaded."""
    root = tmp_path_factory.mktemp("vggsound")
    clips = root / "clips"
    lines = [f'{y},{s},"{label}",train' for y, s, label, _ in TRAIN]
    lines.insert(2, f"{TRAIN[0][0]},{TRAIN[0][1]},{TRAIN[0][2]},train")  # a repeated row
    lines += [f"{y},{s},{label},test" for y, s, label in TEST]
    (root / "vggsound.csv").write_text("\n".join(lines) + "\n")
    selected = sha_rank([f"{y}_{s:06d}" for y, s, _ in TEST])[:TEST_SIZE]
    for y, s, _, how in TRAIN:
        names = {"y": y, "s": s, "e": s + 10, "ms": s * 1000, "ems": (s + 10) * 1000}
        if how == "video_only":
            make_clip(clips / f"{y}_{s:06d}.mp4", frames=10, audio=False)
        elif how == "audio_only":
            make_clip(clips / f"{y}_{s:06d}.mp4", frames=10, video=False)
        elif how == "corrupt":
            (clips / f"{y}_{s:06d}.mp4").write_bytes(b"not a video at all" * 50)
        elif how == "uncaptioned":
            make_clip(clips / f"{y}_{s:06d}.mp4", frames=10)
        elif how != "missing":
            vcodec, acodec = ("libvpx", "libopus") if how.endswith(".webm") else ("libx264", "aac")
            make_clip(clips / how.format(**names), frames=10, vcodec=vcodec, acodec=acodec, rate=48000)
    for y, s, _ in TEST:
        if f"{y}_{s:06d}" != selected[0]:
            make_clip(clips / "video" / f"{y}_{s:06d}.mp4", frames=10)
    (clips / "README.mp4").write_bytes(b"")  # a video-suffixed file matching no CSV row
    captions = root / "captions.jsonl"
    records = [{"id": f"{y}_{s:06d}", "caption": f"caption of {y}"} for y, s, _, how in TRAIN if how != "uncaptioned"]
    records += [{"id": f"{y}_{s}", "caption": f"caption of {y}"} for y, s, _ in TEST]  # a naming variant
    records.append({"id": "zzzzzzzzzzz_000001", "caption": "not in the CSV"})
    captions.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return {"root": root, "csv": root / "vggsound.csv", "clips": clips, "captions": captions, "selected": selected}


def prepare(dataset, out, **kw):
    kw.setdefault("captions", dataset["captions"])
    return prepare_vggsound(dataset["csv"], dataset["clips"], out, test_size=TEST_SIZE, progress=False, **kw)


def excluded_rows(out):
    with open(out / "excluded.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ------------------------------------------------------------------------------------------------------ inputs


def test_csv_parsing_quoted_labels_header_and_errors(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(
        '# YouTube ID,start seconds,label,train/test split\n-abc_Def-12,30,"cattle, bovinae cowbell",test\n'
    )
    (row,) = read_vggsound_csv(path)
    assert row == VGGSoundRow("-abc_Def-12", 30, "cattle, bovinae cowbell", "test", 2)
    assert row.id == "-abc_Def-12_000030"
    bad = {
        "abc,1,dog\n": "3 columns",
        "abc,1,dog,valid\n": "split 'valid'",
        "abc,1,dog,train\nabc,x,dog,train\n": "line 2: start second 'x'",
        "a/b,1,dog,train\n": "YouTube id 'a/b'",
        "abc,-1,dog,train\n": "not a whole number",
        "\n\n": "holds no rows",
    }
    for text, words in bad.items():
        path.write_text(text)
        with pytest.raises(InputFileError, match=words):
            read_vggsound_csv(path)
    with pytest.raises(InputFileError, match="does not exist.*vggsound.csv"):
        read_vggsound_csv(tmp_path / "nope.csv")


def test_select_test_ids_ranks_official_test_ids_by_sha256():
    rng = np.random.default_rng(0)
    rows = [VGGSoundRow(f"yt{rng.integers(1e9):09d}", int(rng.integers(300)), "x", "test") for _ in range(50)]
    rows += [VGGSoundRow(f"tr{k:09d}", k, "x", "train") for k in range(20)]
    expected = sorted((r.id for r in rows if r.split == "test"), key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert select_test_ids(rows, n=7) == expected[:7]
    assert select_test_ids(list(reversed(rows)), n=7) == expected[:7]  # order of the CSV does not matter
    assert select_test_ids([(r.ytid, r.start, r.label, r.split) for r in rows], n=7) == expected[:7]
    assert select_test_ids(rows, n=1000) == expected  # fewer test ids than n: all of them
    with pytest.raises(ConfigError, match="test size"):
        select_test_ids(rows, n=-1)


def test_write_and_read_test_ids(tmp_path):
    rows = [VGGSoundRow(f"id{k}", k, "x", "test") for k in range(10)]
    path = write_test_ids(rows, tmp_path / "pkg" / "vggsound_test_ids.txt", n=4)
    assert path.read_text().splitlines() == select_test_ids(rows, 4) == read_test_ids(path)
    with pytest.raises(ConfigError, match="no test ids"):
        write_test_ids([VGGSoundRow("a", 1, "x", "train")], tmp_path / "t.txt")
    (tmp_path / "dup.txt").write_text("a_000001\na_000001\n")
    with pytest.raises(InputFileError, match="repeats"):
        read_test_ids(tmp_path / "dup.txt")


def test_clip_names_and_folder_index(tmp_path):
    assert parse_clip_name("abc_000005") == ["abc_000005"]
    assert parse_clip_name("abc_5") == ["abc_000005"]
    assert parse_clip_name("abc_000005_000015") == ["abc_000005", "abc_000005_000015"]
    assert parse_clip_name("abc_5000_15000") == ["abc_000005", "abc_5000_015000"]
    assert parse_clip_name("a_12_7") == ["a_12_000007"]  # 7 - 12 is no clip length: the id ends in _12
    assert parse_clip_name("nodigits") == []
    for name in ("x_000001.webm", "sub/x_000001.mp4", "x_1.MKV", "y_000002_000012.mkv", "z_9.mp4", ".x_000001.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = index_clips(tmp_path, {"x_000001", "y_000002"})
    assert index.paths == {"x_000001": tmp_path / "sub/x_000001.mp4", "y_000002": tmp_path / "y_000002_000012.mkv"}
    assert sorted(p.name for p in index.duplicates["x_000001"]) == ["x_000001.webm", "x_1.MKV"]
    assert [p.name for p in index.unmatched] == ["z_9.mp4"] and index.scanned == 5
    with pytest.raises(InputFileError, match="clips folder .* does not exist"):
        index_clips(tmp_path / "nope", set())


def test_read_captions_formats_and_errors(tmp_path):
    wanted = {"abc_000001", "abd_000002"}
    (tmp_path / "c.csv").write_text('id,caption\nabc_000001,"a dog, barking"\nabd_2,  rain\t falls \nq_000009,x\n')
    caps = read_captions(tmp_path / "c.csv", wanted)
    assert caps.texts == {"abc_000001": "a dog, barking", "abd_000002": "rain falls"}
    assert caps.unmatched == ["q_000009"] and caps.entries == 3
    (tmp_path / "c.json").write_text(json.dumps({"abc_000001": "one", "abd_000002": ""}))
    caps = read_captions(tmp_path / "c.json", wanted)
    assert caps.texts == {"abc_000001": "one"} and caps.empty == 1
    (tmp_path / "d.jsonl").write_text('{"id": "abc_000001", "text": "a"}\n{"id": "abc_000001", "caption": "b"}\n')
    caps = read_captions(tmp_path / "d.jsonl", wanted)
    assert caps.texts == {"abc_000001": "a"} and caps.duplicates == 1
    (tmp_path / "bad.jsonl").write_text('{"id": "abc_000001", "caption": "a"}\n{oops\n')
    with pytest.raises(InputFileError, match="line 2: not valid JSON"):
        read_captions(tmp_path / "bad.jsonl", wanted)
    (tmp_path / "bad.csv").write_text("name,caption\nabc,x\n")
    with pytest.raises(InputFileError, match="lacks an 'id'"):
        read_captions(tmp_path / "bad.csv", wanted)
    (tmp_path / "bad2.jsonl").write_text('{"id": "abc_000001", "caption": 5}\n')
    with pytest.raises(InputFileError, match="caption must be a string"):
        read_captions(tmp_path / "bad2.jsonl", wanted)


# -------------------------------------------------------------------------------------------------- preparation


def test_prepare_writes_manifests_frames_audio_and_reports_every_exclusion(dataset, tmp_path):
    out = tmp_path / "out"
    summary = prepare(dataset, out)
    selected = dataset["selected"]

    train = read_manifest(out / "train.jsonl")
    test = read_manifest(out / "test.jsonl")
    assert not train.missing and not test.missing
    unselected = [f"{y}_{s:06d}" for y, s, _ in TEST if f"{y}_{s:06d}" not in selected]
    assert set(train.ids) == {"aaaaaaaaaaa_000000", "b-b_b_12345_000030", "ccccccccccc_000005"} | {
        "ddddddddddd_000007",
        *unselected,
    }
    assert test.ids == [i for i in (f"{y}_{s:06d}" for y, s, _ in TEST) if i in selected[1:]]
    item = {i.id: i for i in train}["b-b_b_12345_000030"]
    assert item.text == "caption of b-b_b_12345" and item.video is None
    assert item.extra["label"] == "cattle, bovinae cowbell" and item.extra["split"] == "train"
    assert item.extra["source"] == str((dataset["clips"] / "train" / "b-b_b_12345_30.mkv").resolve())
    assert item.image == (out / "frames" / "b-b_b_12345_000030.jpg").resolve()
    with Image.open(item.image) as image:  # the middle frame of a 10-frame clip is frame 5
        assert image.format == "JPEG" and np.abs(np.asarray(image).astype(int) - colour(5)).max() <= TOLERANCE
    wave, rate = sf.read(item.audio, dtype="float32")
    assert rate == 16000 and wave.ndim == 1 and abs(len(wave) / rate - 1.0) < 0.07
    moved = {i.id: i for i in train}[unselected[0]]
    assert moved.extra["csv_split"] == "test" and moved.extra["split"] == "train"

    rows = excluded_rows(out)
    reasons = {(r["id"], r["split"], r["reason"]) for r in rows}
    assert reasons == {
        ("aaaaaaaaaaa_000000", "train", "duplicate_row"),
        ("eeeeeeeeeee_000001", "train", "no_audio"),
        ("fffffffffff_000002", "train", "no_video"),
        ("ggggggggggg_000003", "train", "unreadable"),
        ("hhhhhhhhhhh_000004", "train", "missing_clip"),
        ("iiiiiiiiiii_000006", "train", "no_caption"),
        (selected[0], "test", "missing_clip"),
    }
    assert all(r["detail"] for r in rows)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["excluded"]["by_reason"] == {
        "duplicate_row": 1,
        "missing_clip": 2,
        "no_caption": 1,
        "unreadable": 1,
        "no_video": 1,
        "no_audio": 1,
    }
    assert summary["excluded"]["by_split"]["test"] == {"missing_clip": 1}
    assert summary["splits"]["train"]["items"] == 6 and summary["splits"]["test"]["items"] == TEST_SIZE - 1
    assert summary["test_selection"]["selected"] == TEST_SIZE
    assert summary["test_selection"]["missing_or_excluded"] == 1
    assert summary["clips_folder"]["unmatched_files"] == 1
    assert summary["captions"]["unmatched_ids"] == 1 and summary["captions"]["required"] is True
    assert summary["short_audio"]["count"] == 8  # 1 s clips, 10 s asked: kept, listed
    assert summary["decoded_now"] == 8 and summary["reused"] == 0
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_valid_outputs_and_redoes_missing_or_broken_ones(dataset, tmp_path):
    out = tmp_path / "out"
    first = prepare(dataset, out, label_captions=True)
    manifest = (out / "train.jsonl").read_text()
    second = prepare(dataset, out, label_captions=True)
    assert second["decoded_now"] == 0 and second["reused"] == first["decoded_now"] == 9
    assert (out / "train.jsonl").read_text() == manifest
    (out / "frames" / "aaaaaaaaaaa_000000.jpg").unlink()
    (out / "audio" / "ddddddddddd_000007.flac").write_bytes(b"half a file")
    third = prepare(dataset, out, label_captions=True)
    assert third["decoded_now"] == 2 and third["reused"] == 7
    assert (out / "train.jsonl").read_text() == manifest
    uncaptioned = {i.id: i for i in read_manifest(out / "train.jsonl")}["iiiiiiiiiii_000006"]
    assert uncaptioned.text == "the sound of ice cracking" and uncaptioned.extra["caption_source"] == "label"
    with pytest.raises(ConfigError, match="other settings .*frames: 1 -> 3.*--overwrite"):
        prepare(dataset, out, frames=3)
    redone = prepare(dataset, out, frames=3, overwrite=True, label_captions=True)
    assert redone["decoded_now"] == 9 and redone["settings"]["frames"] == 3


def test_process_pool_gives_the_same_manifests(dataset, tmp_path):
    one = prepare(dataset, tmp_path / "one", captions=None, image_format="png", seconds=0.5)
    two = prepare(dataset, tmp_path / "two", captions=None, image_format="png", seconds=0.5, workers=2)
    for split in ("train", "test"):
        assert (tmp_path / "one" / f"{split}.jsonl").read_text() == (tmp_path / "two" / f"{split}.jsonl").read_text()
    assert one["excluded"] == two["excluded"] and two["decoded_now"] == 9
    assert excluded_rows(tmp_path / "one") == excluded_rows(tmp_path / "two")
    item = read_manifest(tmp_path / "two" / "train.jsonl").items[0]
    assert item.text is None and item.image.suffix == ".png"
    assert sf.info(str(item.audio)).frames == 8000 and two["short_audio"]["count"] == 0


def test_video_inside_out_is_referenced_and_test_ids_file_is_used(tmp_path):
    out = tmp_path / "out"
    make_clip(out / "clips" / "inside00001_000002.mp4", frames=10)
    make_clip(out / "clips" / "inside00002_000002.mp4", frames=10)
    (tmp_path / "v.csv").write_text("inside00001,2,owl,train\ninside00002,2,bee,test\n")
    (tmp_path / "ids.txt").write_text("inside00001_000002\n")
    prepare_vggsound(
        tmp_path / "v.csv", out / "clips", out, test_ids=tmp_path / "ids.txt", label_captions=True, progress=False
    )
    (item,) = read_manifest(out / "test.jsonl")
    assert item.id == "inside00001_000002" and item.video == (out / "clips" / "inside00001_000002.mp4").resolve()
    assert "source" not in item.extra and item.text == "the sound of owl"
    assert json.loads((out / "test.jsonl").read_text())["video"] == "clips/inside00001_000002.mp4"
    (tmp_path / "ids.txt").write_text("other_000001\n")
    with pytest.raises(InputFileError, match="not in the CSV"):
        prepare_vggsound(tmp_path / "v.csv", out / "clips", out, test_ids=tmp_path / "ids.txt", progress=False)


def test_prepare_refuses_bad_inputs_with_clear_errors(dataset, tmp_path):
    with pytest.raises(ConfigError, match="no \\{label\\} field"):
        prepare(dataset, tmp_path / "o", label_captions=True, template="a sound")
    with pytest.raises(ConfigError, match="cannot be filled"):
        prepare(dataset, tmp_path / "o", label_captions=True, template="{label} {other}")
    with pytest.raises(ConfigError, match="--workers"):
        prepare(dataset, tmp_path / "o", workers=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="none of the 14 CSV clips was found.*no .mp4"):
        prepare_vggsound(dataset["csv"], empty, tmp_path / "o", progress=False)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(dataset["clips"] / "ggggggggggg_000003.mp4", only_bad)
    with pytest.raises(InputFileError, match="no VGGSound clip could be prepared.*excluded.tsv"):
        prepare_vggsound(dataset["csv"], only_bad, tmp_path / "o2", progress=False)
    assert "unreadable" in (tmp_path / "o2" / "excluded.tsv").read_text()


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli_prepares_and_prints_the_summary(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "vggsound", "--csv", str(dataset["csv"]), "--clips", str(dataset["clips"]), "--out", str(out)]
    code = main([*args, "--captions", str(dataset["captions"]), "--test-size", "3", "--frames", "2", "--workers", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train: 6 items" in printed and "test:  2 of 3 selected" in printed and "missing_clip 2" in printed
    assert json.loads((out / "summary.json").read_text())["settings"]["frames"] == 2
    assert len(read_manifest(out / "test.jsonl")) == 2


def test_python_m_gen_align_with_a_process_pool(dataset, tmp_path):
    out = tmp_path / "pool"
    args = ["--csv", str(dataset["csv"]), "--clips", str(dataset["clips"]), "--out", str(out), "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "gen_align", "data", "vggsound", *args, "--label-captions", "--test-size", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "train: 7 items" in done.stdout and "vggsound:" in done.stderr  # the summary and the progress bar
    assert json.loads((out / "summary.json").read_text())["decoded_now"] == 9


def test_cli_user_errors_exit_2_with_a_message(dataset, tmp_path, capsys):
    base = ["data", "vggsound", "--clips", str(dataset["clips"]), "--out", str(tmp_path / "o")]
    assert main([*base, "--csv", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "gen-align data: error: VGGSound CSV" in err and "does not exist" in err and "Traceback" not in err
    assert main([*base, "--csv", str(dataset["csv"]), "--template", "x {label}"]) == 2
    assert "--label-captions" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: a dataset is required
        main(["data"])
    assert info.value.code == 2
