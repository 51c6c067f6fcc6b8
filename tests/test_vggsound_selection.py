"""The shipped VGGSound test selection (1024 ids, redrawn here from the official list by the documented rule), both
official CSV formats, and the shipped selection as the default test split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gen_align.cli import main
from gen_align.data.vggsound_csv import (
    SHIPPED_RULE,
    SHIPPED_TEST_IDS,
    read_test_ids,
    read_vggsound_csv,
)
from gen_align.errors import InputFileError

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "vggsound" / "test.csv"


def test_the_shipped_selection_is_1024_unique_ids_with_the_datasets_attribution():
    ids = read_test_ids(SHIPPED_TEST_IDS)
    assert len(ids) == 1024 == len(set(ids))
    head = SHIPPED_TEST_IDS.read_text().split("\n")[:12]
    text = " ".join(head)
    assert "Creative Commons Attribution 4.0" in text and "VGGSound: A Large-Scale Audio-Visual Dataset" in text


@pytest.mark.skipif(not OFFICIAL.is_file(), reason=f"the official VGGSound test list is not at {OFFICIAL}")
def test_the_shipped_selection_is_redrawn_from_the_official_list_by_the_rule(tmp_path):
    names = [line.split(",", 1)[0] for line in OFFICIAL.read_text().splitlines() if line.strip()]
    official = {name.rsplit(".", 1)[0] for name in names}  # {ytid}_{start:06d}.mp4 -> the id, parsed here by hand
    # the documented rule, written out: rank by sha256 of the id (ties by id), keep the first 1024
    expected = sorted(official, key=lambda i: (hashlib.sha256(i.encode()).hexdigest(), i))[:1024]
    shipped = read_test_ids(SHIPPED_TEST_IDS)
    assert shipped == expected and set(shipped) <= official
    out = tmp_path / "ids.txt"
    assert main(["data", "test-ids", "--csv", str(OFFICIAL), "--out", str(out)]) == 0
    assert out.read_text() == SHIPPED_TEST_IDS.read_text()  # the command redraws the shipped file byte for byte


def test_both_official_formats_are_parsed(tmp_path):
    full = tmp_path / "vggsound.csv"
    full.write_text('---g-f_I2yQ,1,people marching,test\nabc_def-123,30,"dog, barking",train\n')
    rows = read_vggsound_csv(full)
    assert [(r.ytid, r.start, r.label, r.split, r.id) for r in rows] == [
        ("---g-f_I2yQ", 1, "people marching", "test", "---g-f_I2yQ_000001"),
        ("abc_def-123", 30, "dog, barking", "train", "abc_def-123_000030"),
    ]
    test_list = tmp_path / "test.csv"
    test_list.write_text('glLQrEijrKg_000300.mp4,playing hammond organ\nab_c_d_000017.mp4,"rain, on a roof"\n')
    rows = read_vggsound_csv(test_list)
    assert [(r.ytid, r.start, r.label, r.split) for r in rows] == [
        ("glLQrEijrKg", 300, "playing hammond organ", "test"),
        ("ab_c_d", 17, "rain, on a roof", "test"),  # underscores inside a YouTube id stay in it
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a_000001.mp4,dog\nb_000002.mp4\n", r"line 2: \[.b_000002.mp4.\] is not a test list row"),
        ("a_000001.mp4,dog\nb,2,cat,test\n", "line 2: .* is not a test list row"),
        ("a,1,dog,test\nb_000002.mp4,cat\n", "line 2: .* is not a full row"),
        ("a_000001.mp4,\n", "line 1: the label is empty"),
        ("a,1,dog,test\nb,x,cat,test\n", "line 2: start second 'x'"),
    ],
)
def test_a_malformed_row_is_reported_with_its_line_number(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputFileError, match=message):
        read_vggsound_csv(path)


def test_the_shipped_selection_is_the_default_test_split(monkeypatch, tmp_path):
    from gen_align.data import vggsound

    shipped = read_test_ids(SHIPPED_TEST_IDS)
    rows = [vggsound.VGGSoundRow(i.rsplit("_", 1)[0], int(i.rsplit("_", 1)[1]), "x", "test") for i in shipped]
    extra = [vggsound.VGGSoundRow(f"extra{k}", k, "x", "test") for k in range(50)]
    by_id = {r.id: r for r in rows + extra}
    ids, rule = vggsound._test_selection(list(by_id.values()), by_id, 1024, None)
    assert ids == shipped and rule == SHIPPED_RULE  # 50 more test rows than the official list: still the shipped ids
    partial = dict(list(by_id.items())[1:])  # a CSV without one shipped id: its own rows, by the rule, and said so
    ids, rule = vggsound._test_selection(list(partial.values()), partial, 1024, None)
    assert rule != SHIPPED_RULE and shipped[0] not in ids and len(ids) == 1024
