"""Embedding calibration: blended directions are rescaled to the norm of the decoder's own image embeddings.

Where the target norm of a space comes from, in this order (a norm is never guessed):

1. ``space.config["output_norm"]`` — the trainer stores the mean norm of the anchor's cached image embeddings
   there; ``gen-align calibrate --space CKPT`` rewrites it (keeping the details under ``"calibration"``);
2. ``$GEN_ALIGN_HOME/calibration/<preset>.json`` (or under ``--weights-dir``), written by
   ``gen-align calibrate --preset P --images DIR``: mean norm, std, count, the images' folder and a hash of
   its file list;
3. otherwise a :class:`~gen_align.errors.ConfigError` that says which ``gen-align calibrate`` to run.

The statistics are measured with the space's image (anchor) tower, which is the decoder's own image encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gen_align import __version__
from gen_align.errors import ConfigError, EmbeddingError, InputFileError
from gen_align.io import write_json_atomic
from gen_align.weights import weights_home

from .decoders import EmbeddingStats

FORMAT = "gen-align-calibration"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def rescale(directions: torch.Tensor, stats: EmbeddingStats) -> torch.Tensor:
    """Rows of ``directions`` rescaled to the decoder's mean embedding norm (float32)."""
    directions = directions.float()
    if not bool(torch.isfinite(directions).all()):
        raise EmbeddingError("cannot calibrate NaN/inf embeddings; check the encoder output (try float32).")
    if bool((directions.norm(dim=-1) == 0).any()):
        raise EmbeddingError("cannot calibrate an all-zero embedding: it has no direction.")
    return F.normalize(directions, dim=-1) * stats.mean_norm


def calibration_path(preset: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """``<weights home>/calibration/<preset>.json``."""
    return weights_home(weights_dir) / "calibration" / f"{preset}.json"


def calibration_file(preset: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The calibration that applies to ``preset``: its own file, else that of a preset with the same image tower and
    decoder (the norm depends on nothing else: imagebind-h, stable-unclip-h and stable-unclip-h-beats share one);
    None when there is none."""
    from gen_align.presets import PRESETS

    own = PRESETS.get(preset)
    names = [preset] + sorted(
        p.name for p in PRESETS.values()
        if own is not None and p.name != preset and not p.checkpoint and p.decoder == own.decoder
        and p.towers.get("image") == own.towers.get("image")
    )  # fmt: skip
    return next((path for path in (calibration_path(n, weights_dir) for n in names) if path.is_file()), None)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), or an InputFileError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"--images {folder} is not a directory; pass a folder of .png/.jpg images.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputFileError(
            f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); a few hundred natural images "
            "(e.g. a COCO or VGGSound frame sample) give a stable mean norm."
        )
    return files


def files_hash(folder: Path, files: list[Path]) -> str:
    """sha256 of the sorted ``relative path<TAB>size`` lines of ``files``."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(folder).as_posix()}\t{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def measure(space: Any, folder: str | os.PathLike, *, batch_size: int = 32) -> dict[str, Any]:
    """Norm statistics of ``space.encode_image`` over the images in ``folder``, as a calibration record."""
    folder = Path(folder).resolve()
    files = list_images(folder)
    z = space.encode_image(files, batch_size=batch_size, progress=len(files) > batch_size)
    norms = z.double().norm(dim=-1)
    return {
        "format": FORMAT,
        "preset": space.config.get("preset"),
        "embedding_dim": int(z.shape[-1]),
        "mean_norm": float(norms.mean()),
        "std_norm": float(norms.std()) if len(norms) > 1 else 0.0,
        "count": len(files),
        "images_dir": str(folder),
        "files_sha256": files_hash(folder, files),
        "library_version": __version__,
    }


def save_for_preset(record: dict[str, Any], preset: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Write ``record`` to :func:`calibration_path`."""
    return write_json_atomic(calibration_path(preset, weights_dir), record)


def save_into_space(record: dict[str, Any], checkpoint: str | os.PathLike) -> Path:
    """Store ``record`` in a space checkpoint's ``config.json``: ``output_norm`` = its mean norm (the previous
    value is kept in ``calibration["previous_output_norm"]``), details under ``calibration``."""
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(f"cannot read {path}: {err}") from err
    config["calibration"] = {**record, "previous_output_norm": config.get("output_norm")}
    config["output_norm"] = record["mean_norm"]
    return write_json_atomic(path, config)


def stats_from_record(record: dict[str, Any], source: str) -> EmbeddingStats:
    """An :class:`EmbeddingStats` from a calibration record, or a ConfigError naming ``source``."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{source} is not a gen-align calibration file; re-run `gen-align calibrate`.")
    try:
        return EmbeddingStats(
            mean_norm=float(record["mean_norm"]),
            std_norm=None if record.get("std_norm") is None else float(record["std_norm"]),
            count=None if record.get("count") is None else int(record["count"]),
            embedding_dim=None if record.get("embedding_dim") is None else int(record["embedding_dim"]),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{source} is incomplete ({err}); re-run `gen-align calibrate`.") from err


def find_stats(
    space: Any, *, weights_dir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None
) -> EmbeddingStats:
    """The target statistics of ``space`` (see the module docstring for the lookup order)."""
    config = space.config
    norm = config.get("output_norm")
    if norm is not None:
        if not (isinstance(norm, (int, float)) and math.isfinite(norm) and norm > 0):
            raise ConfigError(f"the space's output_norm is {norm!r}; re-run `gen-align calibrate --space CKPT`.")
        details = config.get("calibration") or {}
        return EmbeddingStats(
            mean_norm=float(norm),
            std_norm=details.get("std_norm"),
            count=details.get("count"),
            embedding_dim=details.get("embedding_dim"),
            source="space config output_norm",
        )
    preset = config.get("preset")
    path = calibration_file(preset, weights_dir) if preset else None
    if path is not None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is unreadable ({err}); re-run `gen-align calibrate --preset {preset}`.") from err
        return stats_from_record(record, str(path))
    where = f"--space {checkpoint}" if checkpoint else f"--preset {preset}" if preset else "--space CKPT"
    looked = f" and there is no {calibration_path(preset, weights_dir)}" if preset else ""
    raise ConfigError(
        f"no embedding calibration for this space: it has no output_norm{looked}. The decoder needs the mean norm "
        f"of its own image embeddings; measure it once with `gen-align calibrate {where} --images DIR` "
        "(DIR: any folder of natural images, a few hundred is plenty)."
    )
