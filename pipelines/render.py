"""Putting generated images on disk: PNGs, a contact-sheet grid, an interpolation strip and an animated GIF.

Every file is encoded in memory and written with :func:`gen_align.io.write_bytes_atomic` (no partial files).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from gen_align.checks import integer
from gen_align.errors import InputDataError
from gen_align.io import write_bytes_atomic

BACKGROUND = (255, 255, 255)


def _check(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise InputDataError("expected a non-empty list of PIL images to render.")
    return [im.convert("RGB") for im in images]


def grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 4) -> Image.Image:
    """A contact sheet: images in rows of ``columns`` (default ``ceil(sqrt(n))``) cells of the largest size."""
    images = _check(images)
    columns = integer(columns or math.ceil(math.sqrt(len(images))), "grid columns", low=1)
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), BACKGROUND)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return sheet


def strip(images: Sequence[Image.Image], pad: int = 0) -> Image.Image:
    """Images side by side in one row."""
    return grid(images, columns=len(list(images)), pad=pad)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: Sequence[Image.Image], duration_ms: int = 200, boomerang: bool = False) -> bytes:
    """An endlessly looping GIF of ``frames`` (``boomerang``: played forwards then backwards)."""
    frames = _check(frames)
    duration_ms = integer(duration_ms, "GIF frame duration (ms)", low=10)
    if boomerang and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, optimize=False
    )
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """``image`` written atomically as a PNG."""
    return write_bytes_atomic(path, png_bytes(image))


def save_gif(
    frames: Sequence[Image.Image], path: str | os.PathLike, duration_ms: int = 200, boomerang: bool = False
) -> Path:
    """``frames`` written atomically as an animated GIF."""
    return write_bytes_atomic(path, gif_bytes(frames, duration_ms, boomerang))
