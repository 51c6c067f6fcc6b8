"""The whole training path on a synthetic VGGSound folder: CSV → manifests → feature cache → 2 epochs of
training → the trained space loads → validation R@1 (image↔audio) beats the untrained heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_space_audio import FIXTURES
from test_video_io import make_clip
from tiny_models import tiny_space

from gen_align.cli import main
from gen_align.encoders.beats_tower import BEATsTower, load_beats_source
from gen_align.space import AlignedSpace

ITEMS = 32


def item_colour(i: int):
    t = i / (ITEMS - 1)
    return lambda _frame: (int(255 * t), 90, int(255 * (1 - t)))


@pytest.fixture(scope="module")
def vggsound(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggsound")
    rows = []
    for i in range(ITEMS):
        ytid = f"vid{i:08d}"
        # Random tiny towers: the frame colour and the loudness are what their features reliably carry.
        loudness = 0.01 * 60 ** (i / (ITEMS - 1))
        make_clip(root / "clips" / f"{ytid}_000010.mp4", frames=10, fps=10, amplitude=loudness, paint=item_colour(i))
        rows.append(f"{ytid},10,class {i % 4},{'test' if i % 8 == 0 else 'train'}")
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_to_trained_space(vggsound, tmp_path):
    base = AlignedSpace.from_pretrained(tiny_space(tmp_path / "tiny"))
    towers = {"image": base.towers["image"], "audio": BEATsTower(load_beats_source(FIXTURES / "beats_tiny.pt"))}
    config = {**base.config, "towers": {"image": base.config["towers"]["image"], "audio": {"kind": "beats"}}}
    space = AlignedSpace(config, towers, {}).save_pretrained(tmp_path / "space", save_towers=True)

    out = tmp_path / "manifests"
    assert (
        main(
            [
                "data",
                "vggsound",
                "--csv",
                str(vggsound / "vggsound.csv"),
                "--clips",
                str(vggsound / "clips"),
                "--out",
                str(out),
                "--test-size",
                "4",
            ]
        )
        == 0
    )
    train_lines = (out / "train.jsonl").read_text().splitlines()
    assert len(train_lines) == ITEMS - 4 and json.loads((out / "summary.json").read_text())

    cache = tmp_path / "cache"
    assert (
        main(
            [
                "encode",
                str(out / "train.jsonl"),
                "--space",
                str(space),
                "--modalities",
                "image,audio",
                "--out",
                str(cache),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )

    run = tmp_path / "run"
    settings = ["batch_size=4", "epochs=2", "val_size=8", "lr=0.03", "head.kind=linear", "objective_params.tau=0.5"]
    assert main(["train", "--features", str(cache), "--out", str(run), *sum((["--set", s] for s in settings), [])]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    before, after = summary["history"][0]["validation"], summary["history"][-1]["validation"]
    assert summary["epochs_completed"] == 2
    recall = [key for key in before if key.startswith("R@1/")]
    assert sum(after[k] for k in recall) > sum(before[k] for k in recall), (before, after)
    assert all(after[k] >= before[k] for k in recall), (before, after)

    trained = AlignedSpace.from_pretrained(run / "space")
    frame = Path(out / json.loads(train_lines[0])["image"])
    audio = Path(out / json.loads(train_lines[0])["audio"])
    z_image, z_audio = trained.encode_image([frame]), trained.encode_audio([audio])
    assert z_image.shape == z_audio.shape == (1, 32)
    torch.testing.assert_close(z_audio.norm(), torch.tensor(trained.config["output_norm"]), rtol=1e-5, atol=1e-5)
