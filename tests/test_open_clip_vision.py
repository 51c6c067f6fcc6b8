"""The open_clip image tower: a whole open_clip model saved in open_clip's hub layout loads as a tower whose
embeddings equal open_clip's own ``encode_image`` on open_clip's own preprocessing; bad checkpoints are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen_align.encoders.open_clip_vision import OpenCLIPVisionTower
from gen_align.encoders.towers import check_tower_config, tower_class
from gen_align.errors import CheckpointError, ConfigError, GenAlignError, WeightsNotFoundError

MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    """A whole open_clip CLIP (ResNet image tower + text tower), written as open_clip publishes models."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**MODEL_CFG).eval()
    folder = tmp_path_factory.mktemp("open_clip_model")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, model


def images(n: int = 3, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_a_whole_open_clip_model_loads_as_its_image_tower(open_clip_folder):
    import open_clip

    folder, model = open_clip_folder
    tower = tower_class("open-clip-vision").from_config(
        check_tower_config("image", {"kind": "open-clip-vision", "source": str(folder)})
    )
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    batch = images()
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(im) for im in batch]))
        got = tower.encode(batch)
    assert tower.embedding_dim == 32 and got.shape == (3, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # one image alone gives the same row as inside a batch
        torch.testing.assert_close(tower.encode(batch[1:2])[0], got[1], rtol=0, atol=1e-6)


def test_a_tower_saved_alone_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(1)
    tower = OpenCLIPVisionTower.build(16, {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32}, PREPROCESS)
    cfg = tower.save(tmp_path / "tower")
    assert cfg == {"kind": "open-clip-vision", "source": str(tmp_path / "tower")}
    loaded = OpenCLIPVisionTower.from_config(cfg)
    for key, value in tower.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    gray = [Image.new("L", (32, 32), 128), Image.new("RGBA", (32, 32), (10, 200, 30, 255))]  # odd modes convert
    with torch.no_grad():
        assert torch.equal(loaded.encode(gray), tower.encode(gray))


def test_bad_checkpoints_are_refused_with_what_is_wrong(open_clip_folder, tmp_path):
    folder, _ = open_clip_folder
    load = OpenCLIPVisionTower.from_config
    with pytest.raises(WeightsNotFoundError, match="no open_clip_config.json"):
        (tmp_path / "empty").mkdir()
        load({"source": str(tmp_path / "empty")})
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "open_clip_config.json").write_bytes((folder / "open_clip_config.json").read_bytes())
    data = (folder / "open_clip_model.safetensors").read_bytes()
    (truncated / "open_clip_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load({"source": str(truncated)})
    other = tmp_path / "other"
    other.mkdir()
    cfg = {"model_cfg": {**MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "width": 16}}}
    (other / "open_clip_config.json").write_text(json.dumps(cfg))
    (other / "open_clip_model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load({"source": str(other)})
    (other / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": "big"}}')
    with pytest.raises(CheckpointError, match="not an open_clip model config"):
        load({"source": str(other)})
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "open_clip_config.json").write_bytes((folder / "open_clip_config.json").read_bytes())
    torch.save({"visual.x": torch.zeros(1), "payload": object()}, pickled / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled objects"):
        load({"source": str(pickled)})
    with pytest.raises(GenAlignError):
        load({"source": str(tmp_path / "missing-folder")})
    with pytest.raises(ConfigError, match="unknown key"):
        check_tower_config("image", {"kind": "open-clip-vision", "source": "x", "processor_subfolder": "p"})
