"""The mini world dataset: image, audio and caption of items with known attributes, deterministic from a seed.

Item ``i`` of a split is drawn from its own generator ``np.random.default_rng([seed, split_code, i])``, so any
item can be regenerated alone. :func:`build_world` writes ``world.json`` and per split ``manifest.jsonl``,
``images/<id>.png`` and ``audio/<id>.wav``; :func:`make_item` returns one item in memory.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import gen_align
from gen_align.checks import choice, integer
from gen_align.errors import ConfigError, InputFileError, OutputError
from gen_align.io import write_json_atomic, write_text_atomic
from gen_align.mini.world.attributes import ATTRIBUTES, NAMES
from gen_align.mini.world.captions import make_caption
from gen_align.mini.world.render import IMAGE_SIZE, Background, draw_background, draw_colour, draw_pose, render_image
from gen_align.mini.world.sound import DURATION_S, SAMPLE_RATE, Sound, draw_sound, synthesize, wav_bytes

FORMAT = "gen-align-mini-world/1"  # bump when the generated content changes
WORLD_FILE = "world.json"
MANIFEST_FILE = "manifest.jsonl"
SPLITS = {"train": 0, "test": 1}
SETTINGS_KEYS = ("format", "seed", "sizes", "attributes")


@dataclass(frozen=True)
class ItemSpec:
    """All random choices of one item; rendering it is deterministic."""

    id: str
    attributes: dict[str, str]
    pose: dict[str, float]
    rgb: tuple[int, int, int]
    background: Background
    caption: str
    sound: Sound

    def image(self) -> Image.Image:
        """The rendered 32×32 RGB image."""
        return render_image(self.attributes["shape"], self.pose, self.rgb, self.background)

    def waveform(self) -> np.ndarray:
        """The float32 mono waveform at ``SAMPLE_RATE``."""
        return synthesize(self.sound)


def item_id(split: str, index: int) -> str:
    """``train-000123``."""
    return f"{split}-{index:06d}"


def item_spec(seed: int, split: str, index: int) -> ItemSpec:
    """The random choices of item ``index`` of ``split`` (attributes uniform, then pose, colours, caption, sound)."""
    seed = integer(seed, "seed", low=0)
    split = choice(split, "split", tuple(SPLITS))
    index = integer(index, "index", low=0)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    attributes = {name: ATTRIBUTES[name][rng.integers(len(ATTRIBUTES[name]))] for name in NAMES}
    pose = draw_pose(attributes["shape"], attributes["size"], rng)
    rgb = draw_colour(attributes["colour"], rng)
    background = draw_background(attributes["background"], rng)
    caption = make_caption(attributes, rng)
    sound = draw_sound(attributes, rng)
    return ItemSpec(item_id(split, index), attributes, pose, rgb, background, caption, sound)


def make_item(seed: int, split: str, index: int) -> dict[str, Any]:
    """Item ``index`` of ``split`` in memory: ``id``, ``attributes``, ``pose``, ``text`` (= ``caption``),
    ``image`` (32×32 RGB PIL image), ``audio`` (float32 waveform) and ``sample_rate``."""
    spec = item_spec(seed, split, index)
    return {
        "id": spec.id,
        "attributes": dict(spec.attributes),
        "pose": dict(spec.pose),
        "text": spec.caption,
        "caption": spec.caption,
        "image": spec.image(),
        "audio": spec.waveform(),
        "sample_rate": SAMPLE_RATE,
    }


def world_items(seed: int, split: str, count: int) -> Iterator[dict[str, Any]]:
    """Items ``0 .. count - 1`` of ``split`` as :func:`make_item` dicts, generated lazily (arguments checked now)."""
    seed, split = integer(seed, "seed", low=0), choice(split, "split", tuple(SPLITS))
    count = integer(count, "count", low=0)
    return (make_item(seed, split, index) for index in range(count))


def world_settings(seed: int, train: int, test: int) -> dict[str, Any]:
    """The content of ``world.json``; the keys in ``SETTINGS_KEYS`` decide whether a folder can be reused."""
    return {
        "format": FORMAT,
        "version": gen_align.__version__,
        "seed": seed,
        "sizes": {"train": train, "test": test},
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
        "image_size": IMAGE_SIZE,
        "sample_rate": SAMPLE_RATE,
        "duration_s": DURATION_S,
    }


def read_world(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``world.json`` of a built mini world, or InputFileError saying how to build one."""
    path = Path(out_dir) / WORLD_FILE
    if not path.is_file():
        raise InputFileError(
            f"{path} does not exist: {out_dir} is not a mini world; run `gen-align mini build OUT` first."
        )
    try:
        world = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(
            f"could not read {path} ({err}); delete the folder and run `gen-align mini build OUT` again."
        ) from err
    if not isinstance(world, dict) or world.get("format") != FORMAT:
        found = world.get("format") if isinstance(world, dict) else type(world).__name__
        raise InputFileError(
            f"{path} is not a mini world description (format {found!r}, expected {FORMAT!r}); "
            "run `gen-align mini build OUT` into a new folder."
        )
    return world


def _check_folder(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder that holds another world (or other files); write ``world.json`` into a new one."""
    path = out_dir / WORLD_FILE
    if path.exists():
        try:
            existing = read_world(out_dir)
        except InputFileError as err:
            raise InputFileError(f"{err} Or delete {path} or choose another output folder.") from err
        differs = [
            f"{key}: {existing.get(key)!r} there, {settings[key]!r} now"
            for key in SETTINGS_KEYS
            if existing.get(key) != settings[key]
        ]
        if differs:
            raise ConfigError(
                f"{out_dir} holds a mini world built with other settings ({'; '.join(differs)}). "
                "Use another output folder, or delete this one to rebuild."
            )
        return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir} is not empty and holds no {WORLD_FILE}; build the mini world into a new or empty folder."
        )
    write_json_atomic(path, settings)


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` through a temporary name and an atomic rename (no fsync: fast, never truncated)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"could not write {path}: {err.strerror or err}. Free disk space or choose another output folder."
        ) from err


def _is_complete(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _make_dirs(*dirs: Path) -> None:
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"could not create {folder}: {err.strerror or err}. Choose another output folder."
            ) from err


def _remove_stale_temporaries(folder: Path) -> None:
    for entry in folder.glob(".*.tmp"):
        entry.unlink(missing_ok=True)


def _build_split(out_dir: Path, seed: int, split: str, count: int, progress: bool) -> Path:
    """Write one split's files (reusing complete ones) and then its manifest."""
    split_dir = out_dir / split
    images, audio = split_dir / "images", split_dir / "audio"
    _make_dirs(images, audio)
    for folder in (images, audio):
        _remove_stale_temporaries(folder)
    lines = []
    for index in tqdm(range(count), desc=f"mini world {split}", unit="item", disable=not progress):
        spec = item_spec(seed, split, index)
        image_path, audio_path = images / f"{spec.id}.png", audio / f"{spec.id}.wav"
        if not _is_complete(image_path):
            _write_file(image_path, _png_bytes(spec.image()))
        if not _is_complete(audio_path):
            _write_file(audio_path, wav_bytes(spec.waveform()))
        record = {
            "id": spec.id,
            "image": f"images/{image_path.name}",
            "audio": f"audio/{audio_path.name}",
            "text": spec.caption,
            "attributes": spec.attributes,
            "pose": spec.pose,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return write_text_atomic(split_dir / MANIFEST_FILE, "\n".join(lines) + "\n")


def build_world(
    out_dir: str | os.PathLike, *, seed: int = 0, train: int = 20000, test: int = 1024, progress: bool = True
) -> Path:
    """Write the mini world into ``out_dir`` (resumable: complete files of an interrupted run are reused).

    ``out_dir/world.json`` records the settings; a folder built with other settings raises ConfigError.
    Splits with 0 items get no folder. Returns ``out_dir``.
    """
    seed = integer(seed, "seed", low=0)
    sizes = {"train": integer(train, "train", low=0), "test": integer(test, "test", low=0)}
    if sum(sizes.values()) == 0:
        raise ConfigError("the mini world needs at least one item; pass train >= 1 or test >= 1.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder; choose another output folder.")
    _make_dirs(out_dir)
    _check_folder(out_dir, world_settings(seed, sizes["train"], sizes["test"]))
    for split, count in sizes.items():
        if count:
            _build_split(out_dir, seed, split, count, progress)
    return out_dir
