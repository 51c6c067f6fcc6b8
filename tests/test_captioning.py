"""`gen-align data caption` with a tiny BLIP built from a config, saved and reloaded through the loading path a hub id
takes: captions written and read back by --captions, resume after a kill, bad frames reported, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_captioner

from gen_align.cli import main
from gen_align.data import captioning
from gen_align.data.captioning import DEFAULT_CAPTION_MODEL, Captioner, caption_manifest, read_done
from gen_align.data.captions import read_captions
from gen_align.errors import OutputError, WeightsNotFoundError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    home = root / "home"
    tiny_captioner(home / "tiny" / "blip")  # a hub-style id "tiny/blip" under --weights-dir
    rng = np.random.default_rng(0)
    lines = []
    for i in range(7):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(root / f"f{i}.png")
        lines.append({"id": f"clip{i}", "image": f"f{i}.png"})
    Image.new("RGB", (1, 1)).save(root / "tiny.png")
    (root / "corrupt.jpg").write_bytes(b"not a jpeg" * 10)
    lines += [{"id": "one_pixel", "image": "tiny.png"}, {"id": "corrupt", "image": "corrupt.jpg"},
              {"id": "gone", "image": "missing.png"}, {"id": "sound_only", "text": "no frame"}]  # fmt: skip
    (root / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"root": root, "home": home, "manifest": root / "m.jsonl"}


@pytest.fixture(scope="module")
def captioner(world):
    return Captioner("tiny/blip", device="cpu", weights_dir=world["home"], max_new_tokens=6, num_beams=2)


def test_captions_are_the_models_own_and_bad_frames_are_listed(world, captioner, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    args = ["data", "caption", str(world["manifest"]), "--model", "tiny/blip", "--weights-dir", str(world["home"])]
    assert main([*args, "--out", str(out), "--batch-size", "3", "--max-new-tokens", "6", "--num-beams", "2"]) == 0
    printed = capsys.readouterr().out
    done = read_done(out)
    assert sorted(done) == [f"clip{i}" for i in range(7)]
    assert "skipped 3 bad frame(s)" in printed and "one_pixel: " in printed and "smaller than 8" in printed
    assert "corrupt: " in printed and "gone: " in printed and "1 item(s) have no image" in printed

    # independent of the command: the saved model and processor, loaded and run by transformers directly
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = world["home"] / "tiny" / "blip"
    processor, model = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)
    image = Image.open(world["root"] / "f4.png").convert("RGB")
    ids = model.generate(**processor(images=[image], return_tensors="pt"), max_new_tokens=6, num_beams=2)
    assert done["clip4"] == " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split()) != ""
    assert read_captions(out).texts == done  # what `gen-align data vggsound --captions` reads


def test_a_killed_run_resumes_losing_at_most_a_batch(world, captioner, tmp_path, monkeypatch):
    out = tmp_path / "captions.jsonl"
    calls = []
    real = captioner.caption

    def dies_on_the_third_batch(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kill, mid-run
        return real(images)

    monkeypatch.setattr(captioner, "caption", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        caption_manifest(world["manifest"], captioner, out, batch_size=2, progress=False)
    assert len(read_done(out)) == 4  # two batches were on disk before the kill
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": "clip5", "capt')  # a line torn by a kill during the write
    monkeypatch.setattr(captioner, "caption", real)
    summary = caption_manifest(world["manifest"], captioner, out, batch_size=2, progress=False)
    assert summary["already"] == 4 and summary["captioned_now"] == 3 and len(read_done(out)) == 7
    assert out.read_text().count("\n") == 7 and all(json.loads(line) for line in out.read_text().splitlines())
    again = caption_manifest(world["manifest"], captioner, out, batch_size=2, progress=False)
    assert again["captioned_now"] == 0 and again["already"] == 7


def test_strict_stops_at_the_first_bad_frame_and_a_full_disk_keeps_what_was_written(world, captioner, tmp_path):
    from gen_align.errors import InputDataError

    with pytest.raises(InputDataError, match="smaller than 8"):
        caption_manifest(world["manifest"], captioner, tmp_path / "s.jsonl", batch_size=16, strict=True, progress=False)

    out = tmp_path / "full.jsonl"
    real = captioning._append
    writes = []

    def disk_fills(path, records):
        writes.append(len(records))
        if len(writes) == 2:
            raise OutputError("could not append: No space left on device")
        real(path, records)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(captioning, "_append", disk_fills)
        with pytest.raises(OutputError, match="No space left"):
            caption_manifest(world["manifest"], captioner, out, batch_size=3, progress=False)
    assert len(read_done(out)) == 3  # the first batch is intact; a rerun continues from it


def test_a_second_writer_and_a_missing_model_are_refused(world, captioner, tmp_path, capsys):
    from gen_align.io import FolderLock

    out = tmp_path / "c.jsonl"
    with FolderLock(tmp_path, f"caption-{out.name}-rank0"):
        with pytest.raises(OutputError, match="is being written by"):
            caption_manifest(world["manifest"], captioner, out, progress=False)
    with pytest.raises(WeightsNotFoundError, match="captioning model no/such-model not found"):
        Captioner("no/such-model", weights_dir=tmp_path)
    args = ["data", "caption", str(world["manifest"]), "--model", "no/such-model", "--weights-dir", str(tmp_path)]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hf download no/such-model" in err
    assert DEFAULT_CAPTION_MODEL == "Salesforce/blip-image-captioning-large"


def test_vggsound_with_a_caption_model_captions_the_frames_into_its_manifests(world, tmp_path, capsys):
    from test_video_io import make_clip

    from gen_align.data.manifest import read_manifest

    root = tmp_path / "vgg"
    rows = [
        ("aaaaaaaaaaa", 0, "dog barking", "train"),
        ("bbbbbbbbbbb", 4, "rain", "train"),
        ("ccccccccccc", 9, "gong", "test"),
    ]
    (root / "clips").mkdir(parents=True)
    (root / "vggsound.csv").write_text("".join(f"{y},{s},{label},{split}\n" for y, s, label, split in rows))
    for y, s, _, _ in rows:
        make_clip(root / "clips" / f"{y}_{s:06d}.mp4", frames=10)
    args = ["data", "vggsound", "--csv", str(root / "vggsound.csv"), "--clips", str(root / "clips"), "--out"]
    args += [str(root / "out"), "--test-size", "1", "--caption-model", "tiny/blip"]
    assert main([*args, "--weights-dir", str(world["home"]), "--max-new-tokens", "6", "--num-beams", "2"]) == 0
    captions = read_done(root / "out" / "captions.jsonl")
    assert sorted(captions) == sorted(f"{y}_{s:06d}" for y, s, _, _ in rows)
    items = {i.id: i for m in ("train", "test") for i in read_manifest(root / "out" / f"{m}.jsonl").items}
    assert {k: v.text for k, v in items.items()} == captions
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["captions"]["matched"] == 3 and summary["decoded_now"] == 0  # the second pass reused the frames
