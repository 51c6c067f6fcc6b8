"""AlignedSpace: frozen towers + trained heads -> one image-anchored embedding space.

``encode_image`` returns the anchor tower's raw projection (exactly what the decoder was trained on);
``encode_text`` / ``encode_audio`` return the tower output mapped by the modality's head (if any) and, when
the space knows the anchor's embedding norm, rescaled to it (decoders need the anchor's scale).
``normalize=True`` gives unit vectors instead.

A checkpoint directory holds ``config.json`` (towers by source, heads, anchor, output norm, library
version) and ``heads.safetensors``; towers are referenced by hub id or path, or saved inside the directory
(``save_towers=True``, used for small local models).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from gen_align import __version__
from gen_align.encoders.towers import check_tower_config, tower_class
from gen_align.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingError,
    GenAlignError,
    InputFileError,
    WeightsNotFoundError,
)
from gen_align.heads import HeadConfig, ProjectionHead
from gen_align.io import write_json_atomic, write_safetensors_atomic
from gen_align.presets import PRESETS, get_preset

CONFIG_NAME = "config.json"
HEADS_NAME = "heads.safetensors"
FORMAT = "gen-align-space"


def build_tower(
    cfg: dict[str, Any], base_dir: str | os.PathLike | None, weights_dir: str | None, modality: str = "tower"
) -> nn.Module:
    """The frozen tower described by ``cfg['kind']`` (:data:`gen_align.encoders.towers.TOWER_CLASSES`)."""
    from safetensors import SafetensorError

    check_tower_config(modality, cfg)
    try:
        return tower_class(cfg.get("kind")).from_config(cfg, base_dir, weights_dir)
    except SafetensorError as err:  # a truncated download or a damaged file, from whichever loader read it
        where = Path(base_dir or ".") / str(cfg.get("source", "")) if base_dir else cfg.get("source", "?")
        raise CheckpointError(
            f"the {modality} tower's weights under {where} are not a readable safetensors file ({err}): the file is "
            "truncated or corrupt; download or copy it again (for a hub id: hf download <id> --local-dir ...)."
        ) from err


class AlignedSpace(nn.Module):
    """Encoders of every modality into the anchor's embedding space (see the module docstring)."""

    def __init__(self, config: dict[str, Any], towers: dict[str, nn.Module], heads: dict[str, ProjectionHead]) -> None:
        super().__init__()
        self.config = config
        self.towers = nn.ModuleDict(towers)
        self.heads = nn.ModuleDict(heads)
        self.requires_grad_(False).eval()

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | os.PathLike,
        *,
        modalities: Iterable[str] | None = None,
        weights_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        heads: Iterable[str] | None = None,
    ) -> AlignedSpace:
        """Load a checkpoint directory (``config.json`` + ``heads.safetensors``) or a preset by name.

        Args:
            path_or_preset: a space directory (``gen-align train``'s ``OUT/space``) or a preset name
                (:func:`gen_align.presets.list_presets`). A preset without a checkpoint has no trained heads: its
                text embeddings are CLIP's own and audio is unavailable.
            modalities: the towers to load (default: all in the config; ``[]`` reads the config only).
            heads: the heads to load (default: those of the loaded towers); ``modalities=[], heads=[...]`` maps
                cached tower features with :meth:`project` without loading a tower.
            weights_dir: where local tower weights live (default ``$GEN_ALIGN_HOME``, then the hub).
            device, dtype: where and in what precision the towers run.

        Returns:
            the space, in eval mode, without gradients.

        Raises:
            InputFileError: a directory that is not a space. ConfigError: an unknown preset or modality.
            WeightsNotFoundError / CheckpointError: missing or unreadable weights (the message says where to get them).

        Example:
            >>> from gen_align import AlignedSpace
            >>> space = AlignedSpace.from_pretrained("mini")
            >>> space.encode_text(["a small red star on stripes"]).shape
            torch.Size([1, 64])
        """
        path = Path(path_or_preset)
        if (path / CONFIG_NAME).is_file():
            config, base_dir = _read_config(path), path
        elif path.exists():
            raise InputFileError(f"{path} has no {CONFIG_NAME}: it is not a gen-align space checkpoint.")
        elif str(path_or_preset) in PRESETS and get_preset(str(path_or_preset)).checkpoint:
            path = Path(get_preset(str(path_or_preset)).checkpoint)
            if not (path / CONFIG_NAME).is_file():
                raise WeightsNotFoundError(
                    f"the {path_or_preset} preset's space is not in this installation ({path} has no {CONFIG_NAME}); "
                    "reinstall gen-align, or rebuild it with `gen-align mini train --ship`."
                )
            config, base_dir = _read_config(path), path
        elif str(path_or_preset) in PRESETS:
            preset = get_preset(str(path_or_preset))
            config = {
                "format": FORMAT,
                "preset": preset.name,
                "anchor": "image",
                "embedding_dim": preset.embedding_dim,
                "towers": preset.towers,
                "heads": {},
                "output_norm": None,
            }
            base_dir = None
        else:
            raise ConfigError(
                f"{path_or_preset!r} is neither a checkpoint directory nor a preset; presets: {sorted(PRESETS)}."
            )
        wanted = list(config["towers"]) if modalities is None else list(modalities)
        unknown = sorted(set(wanted) - set(config["towers"]))
        if unknown:
            raise ConfigError(f"this space has no tower for {unknown}; it has {sorted(config['towers'])}.")
        towers = {m: build_tower(config["towers"][m], base_dir, weights_dir, m) for m in wanted}
        wanted_heads = set(wanted if heads is None else heads)
        loaded = {m: ProjectionHead(HeadConfig(**config["heads"][m])) for m in config["heads"] if m in wanted_heads}
        if loaded:
            _load_heads(loaded, path / HEADS_NAME)
        space = cls(config, towers, loaded)
        return space.to(device=device, dtype=dtype) if device is not None or dtype is not None else space

    def save_pretrained(self, directory: str | os.PathLike, *, save_towers: bool = False) -> Path:
        """Write ``config.json`` + ``heads.safetensors`` (and, with ``save_towers``, every loaded tower) atomically.

        Args:
            directory: the target folder (created). save_towers: also write the towers, so the folder loads alone.

        Returns:
            ``directory``; :meth:`from_pretrained` reads it back.

        Raises:
            OutputError: the folder cannot be written (a full disk leaves no half-written file).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(self.config))
        if save_towers:
            for modality, tower in self.towers.items():
                cfg = tower.save(directory / "towers" / modality)
                cfg["source"] = os.path.relpath(cfg["source"], directory)
                config["towers"][modality] = {**config["towers"].get(modality, {}), **cfg}
        return write_space_checkpoint(directory, config, dict(self.heads))

    # ------------------------------------------------------------------------------------ properties
    @property
    def anchor(self) -> str:
        return self.config["anchor"]

    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    @property
    def modalities(self) -> list[str]:
        return list(self.towers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -------------------------------------------------------------------------------------- encoding
    @torch.inference_mode()
    def encode_image(
        self, images: Sequence[Any], *, batch_size: int = 32, normalize: bool = False, progress: bool | None = None
    ) -> torch.Tensor:
        """Raw anchor embeddings ``(B, d)`` of images: what the decoder was trained on.

        Args:
            images: PIL images (any mode; converted to RGB) or image paths.
            batch_size: images per tower call. normalize: L2-normalise the rows. progress: a progress bar
                (default: for more than one batch).

        Returns:
            a float ``(B, d)`` tensor on the space's device.

        Raises:
            InputFileError: an unreadable image. ConfigError: a space without an image tower.
        """
        return self._encode("image", images, batch_size, normalize, progress)

    @torch.inference_mode()
    def encode_text(
        self, texts: str | Sequence[str], *, batch_size: int = 64, normalize: bool = False, progress: bool | None = None
    ) -> torch.Tensor:
        """Text embeddings ``(B, d)`` in the anchor space (the text tower, then its head).

        Args:
            texts: one string or a list of them (non-empty; longer ones are truncated to the tokenizer's length).
            batch_size, normalize, progress: as in :meth:`encode_image`.

        Returns:
            a float ``(B, d)`` tensor.

        Raises:
            ConfigError: empty text, or a space without a text tower.

        Example:
            >>> from gen_align import AlignedSpace
            >>> z = AlignedSpace.from_pretrained("mini").encode_text("a large blue circle", normalize=True)
            >>> round(z.norm().item(), 5)
            1.0
        """
        return self._encode("text", [texts] if isinstance(texts, str) else list(texts), batch_size, normalize, progress)

    def prompt_warning(self, text: str) -> str | None:
        """A warning when ``text`` has none of the words the text tower was trained on (the config's
        ``text_vocabulary``, recorded by a space trained on a closed world such as the mini preset's); None when it
        has one, or when the space records no vocabulary (an open-vocabulary CLIP)."""
        vocabulary = self.config.get("text_vocabulary")
        if not vocabulary:
            return None
        words = set(re.findall(r"[a-z][a-z-]*", text.lower()))
        if words & set(vocabulary["words"]):
            return None
        hint = vocabulary.get("hint") or ", ".join(vocabulary["words"][:20])
        return (
            f"none of the words of {text!r} is one this space's text tower learned, so the image will not follow "
            f"the prompt. It knows {hint}."
        )

    @torch.inference_mode()
    def encode_audio(
        self, audio: Any, *, batch_size: int = 8, normalize: bool = False, progress: bool | None = None
    ) -> torch.Tensor:
        """Audio embeddings ``(B, d)`` in the anchor space (the audio tower, then its head).

        Args:
            audio: a file path or ``(waveform, sample_rate)`` pair, or a list of them (any rate: resampled to the
                tower's; long clips are windowed as the tower's config says).
            batch_size, normalize, progress: as in :meth:`encode_image`.

        Returns:
            a float ``(B, d)`` tensor; each row depends on its own clip only.

        Raises:
            InputFileError / InputDataError: unreadable or silent audio. ConfigError: a space without a trained
            audio head.
        """
        if isinstance(audio, (str, os.PathLike)) or (
            isinstance(audio, tuple) and len(audio) == 2 and not isinstance(audio[0], (str, os.PathLike, tuple))
        ):
            audio = [audio]
        return self._encode("audio", list(audio), batch_size, normalize, progress)

    @torch.inference_mode()
    def encode_features(self, modality: str, items: Sequence[Any], *, batch_size: int = 32) -> torch.Tensor:
        """Frozen tower outputs ``(B, d_tower)`` before any head: what the feature cache stores and the
        heads are trained on (for the anchor, the raw anchor embedding)."""
        tower = self._tower(modality, need_head=False)
        return torch.cat(
            [tower.encode(list(items[i : i + batch_size])).float() for i in range(0, len(items), batch_size)]
        )

    def _tower(self, modality: str, need_head: bool = True) -> nn.Module:
        if modality not in self.towers:
            raise ConfigError(
                f"this space has no {modality} tower loaded (loaded: {self.modalities}); "
                f"load it with AlignedSpace.from_pretrained(..., modalities=[..., {modality!r}])."
            )
        tower = self.towers[modality]
        declared = bool(self.config["towers"].get(modality, {}).get("native"))
        if declared and modality not in self.heads and tower.embedding_dim != self.embedding_dim:
            raise ConfigError(
                f"towers.{modality} is marked native (in the anchor's space) but gives {tower.embedding_dim}-d "
                f'embeddings in a {self.embedding_dim}-d space; remove "native" and train a head, or use the tower '
                "of the space it was trained in."
            )
        clip_text = tower.kind == "clip-text" and tower.embedding_dim == self.embedding_dim  # CLIP's own joint space
        native = declared or clip_text
        if need_head and modality != self.anchor and modality not in self.heads and not native:
            raise ConfigError(
                f"this space has no trained {modality} head, so {modality} embeddings are not in the anchor space. "
                "Train one (gen-align train) or load a trained space checkpoint."
            )
        return tower

    def _encode(
        self, modality: str, items: list, batch_size: int, normalize: bool, progress: bool | None
    ) -> torch.Tensor:
        tower = self._tower(modality)
        if not items:
            raise EmbeddingError(f"encode_{modality} got no inputs; pass a non-empty list.")
        show = len(items) > batch_size if progress is None else progress
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        outputs = [
            self.project(modality, tower.encode(chunk))
            for chunk in tqdm(chunks, desc=f"encode {modality}", disable=not show)
        ]
        z = torch.cat(outputs).float()
        if not bool(torch.isfinite(z).all()):
            raise EmbeddingError(f"the {modality} encoder produced NaN/inf embeddings; try float32 instead of fp16.")
        return F.normalize(z, dim=-1) if normalize else z

    @torch.inference_mode()
    def project(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """Tower features ``(B, d_tower)`` (e.g. from a feature cache) → embeddings in the space: the modality's
        head, then the output norm; the anchor's features pass unchanged."""
        if modality == self.anchor:
            return features
        if modality in self.heads:
            head = self.heads[modality]
            features = head(features.to(next(head.parameters()).dtype))
        norm = self.config.get("output_norm")
        return F.normalize(features.float(), dim=-1) * norm if norm else features

    def set_output_norm(self, norm: float | None) -> None:
        """Scale of non-anchor embeddings (the anchor's mean norm); ``None`` keeps the heads' own scale."""
        if norm is not None and not (norm > 0):
            raise ConfigError(f"output_norm must be positive or None, got {norm!r}.")
        self.config["output_norm"] = None if norm is None else float(norm)


def write_space_checkpoint(directory: str | os.PathLike, config: dict[str, Any], heads: dict[str, nn.Module]) -> Path:
    """``config.json`` (+ library version) and ``heads.safetensors`` (keys ``<modality>.<param>``): the format
    :meth:`AlignedSpace.from_pretrained` reads; the trainer writes it without loading any tower."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**config, "format": FORMAT, "library_version": __version__}
    tensors = {f"{m}.{k}": v for m, h in heads.items() for k, v in h.state_dict().items()}
    if tensors:
        write_safetensors_atomic(directory / HEADS_NAME, tensors, metadata={"format": FORMAT})
    write_json_atomic(directory / CONFIG_NAME, config)
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(f"cannot read {path / CONFIG_NAME}: {err}") from err
    if not isinstance(config, dict):
        raise InputFileError(
            f"{path / CONFIG_NAME} holds {type(config).__name__}, not a gen-align space config object."
        )
    missing = [k for k in ("anchor", "embedding_dim", "towers", "heads") if k not in config]
    if config.get("format") != FORMAT or missing:
        raise InputFileError(
            f"{path / CONFIG_NAME} is not a gen-align space config "
            f"(format={config.get('format')!r}, missing keys {missing})."
        )
    check_space_config(config, where=str(path / CONFIG_NAME))
    return config


def check_space_config(config: dict[str, Any], where: str) -> None:
    """Types of a space config, key by key (ConfigError naming the key, the value and what it takes)."""
    if not isinstance(config["anchor"], str) or not config["anchor"]:
        raise ConfigError(f"anchor in {where} must be a modality name such as 'image', got {config['anchor']!r}.")
    dim = config["embedding_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"embedding_dim in {where} must be a positive integer (e.g. 1024), got {dim!r}.")
    norm = config.get("output_norm")
    if norm is not None and (isinstance(norm, bool) or not isinstance(norm, int | float) or not norm > 0):
        raise ConfigError(f"output_norm in {where} must be a positive number or null, got {norm!r}.")
    vocabulary = config.get("text_vocabulary")
    if vocabulary is not None and not (
        isinstance(vocabulary, dict)
        and isinstance(vocabulary.get("words"), list)
        and all(isinstance(w, str) for w in vocabulary["words"])
        and isinstance(vocabulary.get("hint", ""), str)
    ):
        raise ConfigError(
            f"text_vocabulary in {where} must be an object {{'words': [str, ...], 'hint': str}} or absent, got "
            f"{vocabulary!r}."
        )
    for key in ("towers", "heads"):
        if not isinstance(config[key], dict):
            raise ConfigError(f"{key} in {where} must be an object {{modality: config}}, got {config[key]!r}.")
    for modality, tower in config["towers"].items():
        check_tower_config(modality, tower, where, complete=False)  # `source` is checked when the tower is built
    for modality, head in config["heads"].items():
        if not isinstance(head, dict):
            raise ConfigError(f"heads.{modality} in {where} must be an object of head settings, got {head!r}.")
        try:
            HeadConfig(**head)
        except TypeError as err:
            raise ConfigError(
                f"heads.{modality} in {where}: {err}; valid keys: {sorted(HeadConfig.__dataclass_fields__)}."
            ) from err
        except GenAlignError as err:
            raise ConfigError(f"heads.{modality} in {where}: {err}") from err


def _load_heads(heads: dict[str, ProjectionHead], file: Path) -> None:
    if not file.is_file():
        raise InputFileError(
            f"{file} is missing: the config lists heads {sorted(heads)} but their weights are not there."
        )
    from safetensors import SafetensorError

    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({err}): it is truncated or corrupt; copy the space again "
            "or retrain it (`gen-align train`)."
        ) from err
    for modality, head in heads.items():
        prefix = f"{modality}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise InputFileError(f"{file}: the {modality} head weights do not match its config: {err}") from err
