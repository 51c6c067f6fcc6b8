"""A frozen open_clip image tower (a CLIP ModifiedResNet, a ViT or a timm trunk) in open_clip's checkpoint format.

A folder or hub repo in open_clip's hub layout::

    open_clip_config.json        {"model_cfg": {"embed_dim": D, "vision_cfg": {...}, ...}, "preprocess_cfg": {...}}
    open_clip_model.safetensors  the model's state dict; only the ``visual.*`` tensors are read
                                 (``open_clip_pytorch_model.bin`` is read with ``weights_only=True`` when it is
                                 the only weights file)

so a whole open_clip model published on the hub loads the same way as a tower saved alone. The network is built by
open_clip's own builder from ``vision_cfg``, and images are preprocessed as open_clip's evaluation
``image_transform`` does (RGB, resize, centre crop, mean/std from ``preprocess_cfg``). :meth:`encode` returns the
raw image features ``(B, embed_dim)`` (``CLIP.encode_image`` without its normalisation).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from gen_align.encoders.image_io import load_images
from gen_align.errors import CheckpointError, WeightsNotFoundError
from gen_align.io import write_folder_atomic
from gen_align.module_checkpoint import state_mismatch
from gen_align.weights import load_from_source

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREFIX = "visual."
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_visual(embed_dim: int, vision_cfg: dict[str, Any], quick_gelu: bool = False) -> nn.Module:
    """open_clip's image tower for ``vision_cfg`` (its ``CLIPVisionCfg`` fields: ``layers`` as a list gives the
    ModifiedResNet of the original CLIP RN models, an int a ViT), projecting to ``embed_dim``; random weights."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)


class OpenCLIPVisionTower(nn.Module):
    """``visual(transform(images))`` of an open_clip model; ``config`` is its ``open_clip_config.json``."""

    kind = "open-clip-vision"

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.transform import image_transform

        self.model = model.eval().requires_grad_(False)
        self.config = config
        pre = config.get("preprocess_cfg") or {}
        size = pre.get("size", config["model_cfg"]["vision_cfg"].get("image_size", 224))
        self.transform = image_transform(
            size,
            is_train=False,
            mean=pre.get("mean", OPENAI_MEAN),
            std=pre.get("std", OPENAI_STD),
            resize_mode=pre.get("resize_mode", "shortest"),
            interpolation=pre.get("interpolation", "bicubic"),
        )

    @classmethod
    def build(
        cls,
        embed_dim: int,
        vision_cfg: dict[str, Any],
        preprocess_cfg: dict[str, Any] | None = None,
    ) -> OpenCLIPVisionTower:
        """A new tower with random weights (to be trained), e.g. ``build(64, {"layers": [1, 1, 1, 1], "width": 16,
        "image_size": 32})`` for a small CLIP ResNet."""
        config = {"model_cfg": {"embed_dim": embed_dim, "vision_cfg": dict(vision_cfg)}}
        if preprocess_cfg is not None:
            config["preprocess_cfg"] = dict(preprocess_cfg)
        return cls(build_visual(embed_dim, vision_cfg), config)

    @property
    def embedding_dim(self) -> int:
        return int(self.config["model_cfg"]["embed_dim"])

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], base_dir: str | os.PathLike | None = None, weights_dir: str | None = None
    ) -> OpenCLIPVisionTower:
        """Load the tower at ``cfg['source']`` (a folder, ``$GEN_ALIGN_HOME/<id>`` or a hub repo) and ``subfolder``."""
        return load_from_source(
            _read_tower,
            cfg["source"],
            subfolder=cfg.get("subfolder"),
            what=f"open_clip image tower {cfg['source']}",
            base_dir=base_dir,
            weights_dir=weights_dir,
        )

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write the tower alone in open_clip's layout under ``directory``; returns the tower config for it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {PREFIX + k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

        def write(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")
            save_file(state, str(folder / WEIGHTS_FILES[0]))

        write_folder_atomic(directory, write, hint="Free disk space and save again.")
        return {"kind": self.kind, "source": str(directory)}

    def preprocess(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        """``(B, 3, S, S)`` pixel values (any input mode is converted to RGB first)."""
        return torch.stack([self.transform(image) for image in load_images(images, progress=False)])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        return self.model(pixel_values.to(device=param.device, dtype=param.dtype))

    def encode(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        """Raw (unnormalised) image embeddings ``(B, embed_dim)``."""
        return self(self.preprocess(images))


def _read_tower(location: str, subfolder: str | None = None) -> OpenCLIPVisionTower:
    """The tower in the folder ``location`` (/``subfolder``), or in the hub repo ``location``."""
    config_path, weights_path = _files(location, subfolder)
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"] if "model_cfg" in config else config
        embed_dim, vision_cfg = int(model_cfg["embed_dim"]), dict(model_cfg["vision_cfg"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{config_path} is not an open_clip model config ({type(err).__name__}: {err}); it needs "
            '{"model_cfg": {"embed_dim": D, "vision_cfg": {...}}}.'
        ) from err
    config = {**config, "model_cfg": {**model_cfg, "embed_dim": embed_dim, "vision_cfg": vision_cfg}}
    model = build_visual(embed_dim, vision_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False)))
    state = _visual_state(weights_path)
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{weights_path} does not match {config_path} (image tower: {mismatch}); the two files come from "
            "different models."
        )
    model.load_state_dict(state)
    return OpenCLIPVisionTower(model, config)


def _files(location: str, subfolder: str | None) -> tuple[str, str]:
    folder = Path(location) / (subfolder or "")
    if Path(location).exists():
        if not (folder / CONFIG_FILE).is_file():
            raise WeightsNotFoundError(f"{folder} has no {CONFIG_FILE}: it is not an open_clip model folder.")
        weights = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file()]
        if not weights:
            raise WeightsNotFoundError(f"{folder} has {CONFIG_FILE} but no weights ({' or '.join(WEIGHTS_FILES)}).")
        return str(folder / CONFIG_FILE), str(weights[0])
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(location, CONFIG_FILE, subfolder=subfolder)
    except Exception as err:  # noqa: BLE001 - offline, missing repo or file: load_from_source reports where it looked
        raise OSError(f"{type(err).__name__}: {err}") from err
    for name in WEIGHTS_FILES:
        try:
            return config, hf_hub_download(location, name, subfolder=subfolder)
        except Exception as err:  # noqa: BLE001 - try the next weights file name
            last = err
    raise OSError(f"no weights file ({' or '.join(WEIGHTS_FILES)}) in {location}: {last}")


def _visual_state(path: str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of a whole-model (or tower-only) checkpoint, prefix removed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); it is corrupt or truncated, or "
            "holds pickled objects (only tensors are loaded): download or save it again."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    visual = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not visual:
        raise CheckpointError(f"{path} has no '{PREFIX}*' tensors: it holds no open_clip image tower.")
    return visual
