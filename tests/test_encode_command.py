"""`gen-align encode`: tower features of a manifest into the cache, resumable, with reported gaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import HIDDEN, tiny_space

from gen_align.cli import main
from gen_align.data.cache import FeatureCache
from gen_align.space import AlignedSpace


@pytest.fixture(scope="module")
def space_dir(tmp_path_factory):
    return tiny_space(tmp_path_factory.mktemp("space") / "ckpt")


def make_manifest(root, n=5, missing_image_for=("item3",)):
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"item{i}"
        rgb = (np.random.RandomState(i).rand(36, 40, 3) * 255).astype("uint8")
        if name not in missing_image_for:
            Image.fromarray(rgb).save(root / f"{name}.png")
        lines.append(json.dumps({"id": name, "image": f"{name}.png", "text": f"a picture number {i}"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def test_encode_writes_tower_features_and_resumes(space_dir, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    out = tmp_path / "cache"
    args = ["encode", str(manifest), "--space", str(space_dir), "--modalities", "image,text", "--out", str(out)]
    assert main([*args, "--batch-size", "2", "--shard-size", "3"]) == 0
    summary = json.loads((out / "encode_summary.json").read_text())
    assert summary["encoded_now"] == {"image": 4, "text": 5}
    assert summary["lacking"] == [["item3", ["image"]]]

    cache = FeatureCache.load(out)
    space = AlignedSpace.from_pretrained(space_dir)
    ids = ["item0", "item1", "item2", "item4"]
    expected = space.encode_features("image", [tmp_path / "data" / f"{i}.png" for i in ids])
    torch.testing.assert_close(cache.get("image", ids), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        cache.get("text", ["item3"]), space.encode_text(["a picture number 3"]), rtol=0, atol=1e-6
    )
    assert cache.get("image", ids).shape == (4, HIDDEN)

    assert main([*args, "--batch-size", "2", "--shard-size", "3"]) == 0  # nothing left to do
    assert json.loads((out / "encode_summary.json").read_text())["encoded_now"] == {"image": 0, "text": 0}


def test_encode_rejects_path_traversal(space_dir, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "manifest.jsonl").write_text(json.dumps({"id": "x", "image": "../../etc/passwd"}) + "\n")
    code = main(
        [
            "encode",
            str(root / "manifest.jsonl"),
            "--space",
            str(space_dir),
            "--out",
            str(tmp_path / "c"),
            "--modalities",
            "image",
        ]
    )
    assert code == 2
    assert "outside" in capsys.readouterr().err


def test_encode_unknown_modality(space_dir, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n=1, missing_image_for=())
    code = main(
        ["encode", str(manifest), "--space", str(space_dir), "--out", str(tmp_path / "c"), "--modalities", "smell"]
    )
    assert code == 2 and "subset of" in capsys.readouterr().err


def test_encode_defaults_to_the_same_preset_as_generate(tmp_path, monkeypatch):
    """Without --preset/--space, encode takes the smallest preset whose weights are here, as generate, fid and
    app do (the shipped mini preset on a machine with nothing downloaded), not a hub preset it cannot load."""
    from gen_align.pipelines.presence import default_preset

    monkeypatch.setenv("GEN_ALIGN_HOME", str(tmp_path / "home"))  # nothing downloaded
    manifest = make_manifest(tmp_path / "data", n=2, missing_image_for=())
    out = tmp_path / "cache"
    assert main(["encode", str(manifest), "--modalities", "image,text", "--out", str(out)]) == 0
    cache = FeatureCache.load(out)
    mini = AlignedSpace.from_pretrained(default_preset(["image", "text"]))
    assert default_preset(["image", "text"]) == "mini"
    assert cache.get("image", ["item0"]).shape == (1, mini.config["embedding_dim"])


def test_bad_items_are_skipped_listed_and_retried(space_dir, tmp_path, capsys):
    """A truncated image and an image that is not an image: the run encodes the rest (exit 0), lists both with their
    reasons (stderr and encode_summary.json) and leaves them pending; a rerun after the fix encodes only them;
    --strict stops at the first bad one (exit 2) and the cache it leaves verifies."""
    manifest = make_manifest(tmp_path / "data", n=6, missing_image_for=())
    good = (tmp_path / "data" / "item1.png").read_bytes()
    (tmp_path / "data" / "item1.png").write_bytes(good[:60])
    (tmp_path / "data" / "item4.png").write_text("not an image")
    out = tmp_path / "cache"
    args = ["encode", str(manifest), "--space", str(space_dir), "--modalities", "image,text", "--out", str(out)]
    assert main([*args, "--batch-size", "4", "--shard-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 bad item(s)" in err and "item1 (image)" in err and "item4 (image)" in err
    summary = json.loads((out / "encode_summary.json").read_text())
    assert summary["encoded_now"] == {"image": 4, "text": 6}
    assert sorted(s["id"] for s in summary["skipped"]) == ["item1", "item4"]
    cache = FeatureCache.load(out)
    assert cache.verify() == [] and sorted(cache.ids("image")) == ["item0", "item2", "item3", "item5"]
    space = AlignedSpace.from_pretrained(space_dir)
    ids = ["item0", "item2", "item3", "item5"]
    expected = space.encode_features("image", [tmp_path / "data" / f"{i}.png" for i in ids])
    torch.testing.assert_close(cache.get("image", ids), expected, rtol=0, atol=1e-6)

    (tmp_path / "data" / "item1.png").write_bytes(good)
    assert main([*args, "--batch-size", "4", "--shard-size", "2"]) == 0
    summary = json.loads((out / "encode_summary.json").read_text())
    assert summary["encoded_now"] == {"image": 1, "text": 0} and [s["id"] for s in summary["skipped"]] == ["item4"]

    strict = tmp_path / "strict"
    code = main(["encode", str(manifest), "--space", str(space_dir), "--modalities", "image", "--out", str(strict),
                 "--batch-size", "2", "--shard-size", "2", "--strict"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "item4.png" in err and "Traceback" not in err
    assert FeatureCache.load(strict).verify() == [] and sorted(FeatureCache.load(strict).ids("image")) == [
        "item0",
        "item1",
        "item2",
        "item3",
    ]


def test_nan_features_are_skipped_and_errors_of_the_encoder_still_stop(tmp_path):
    """encode_to_cache with a skip list: an item whose features are NaN is left out with a reason; a bad input raised
    by the encoder for one item of a batch costs only that item; a wrong feature dimension is no bad item: it stops."""
    from gen_align.data.cache import encode_to_cache
    from gen_align.data.manifest import ManifestItem
    from gen_align.errors import EmbeddingError, InputFileError

    items = [ManifestItem(id=f"i{k}", text=f"t{k}") for k in range(6)]

    def encode(batch):
        if any(item.id == "i2" for item in batch):
            raise InputFileError("i2 is corrupt")
        rows = torch.stack([torch.full((3,), float(item.id[1:])) for item in batch])
        rows[[item.id == "i4" for item in batch]] = float("nan")
        return rows

    skipped = []
    with FeatureCache.open(tmp_path / "c", {"space": "x"}, 4) as cache:
        assert encode_to_cache(items, "text", encode, cache, 3, progress=False, skipped=skipped) == 4
    assert [(s["id"], s["error"]) for s in skipped] == [
        ("i2", "i2 is corrupt"),
        ("i4", "the encoder gave NaN/inf features"),
    ]
    got = FeatureCache.load(tmp_path / "c")
    torch.testing.assert_close(got.get("text", ["i0", "i5"]), torch.tensor([[0.0] * 3, [5.0] * 3]))
    with FeatureCache.open(tmp_path / "d", {"space": "x"}, 4) as cache:
        with pytest.raises(EmbeddingError, match="shape"):
            encode_to_cache(items, "text", lambda b: torch.zeros(len(b) + 1, 3), cache, 3, progress=False, skipped=[])
