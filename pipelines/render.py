"""Putting generated images on disk: PNGs, a contact-sheet grid, an interpolation strip and an animated GIF.

Single PNGs keep the decoder's native resolution. Sheets, strips and GIFs are for looking at, so small images
(the mini world's 32×32) are enlarged by a whole factor, with nearest-neighbour sampling, until a cell is at least
:data:`VIEW_SIDE` pixels: every generated pixel becomes a clean square, and nothing is invented.
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
VIEW_SIDE = 128


def viewable(images: Sequence[Image.Image], min_side: int = VIEW_SIDE) -> list[Image.Image]:
    """``images`` enlarged by the smallest whole factor that makes the smallest side ≥ ``min_side`` (nearest)."""
    images = _check(images)
    factor = max(1, math.ceil(integer(min_side, "min_side", low=1) / min(min(im.size) for im in images)))
    if factor == 1:
        return images
    return [im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST) for im in images]


def _check(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise InputDataError("expected a non-empty list of PIL images to render.")
    return [im.convert("RGB") for im in images]


def grid(
    images: Sequence[Image.Image], columns: int | None = None, pad: int = 4, min_side: int = VIEW_SIDE
) -> Image.Image:
    """A contact sheet: images in rows of ``columns`` (default ``ceil(sqrt(n))``) cells of the largest size, each
    enlarged as :func:`viewable` does (``min_side=1`` keeps the native size)."""
    images = viewable(images, min_side)
    columns = integer(columns or math.ceil(math.sqrt(len(images))), "grid columns", low=1)
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    sheet = Image.new("RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), BACKGROUND)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return sheet


def strip(images: Sequence[Image.Image], pad: int = 0, min_side: int = VIEW_SIDE) -> Image.Image:
    """Images side by side in one row (enlarged as in :func:`grid`)."""
    return grid(images, columns=len(list(images)), pad=pad, min_side=min_side)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(
    frames: Sequence[Image.Image], duration_ms: int = 200, boomerang: bool = False, min_side: int = VIEW_SIDE
) -> bytes:
    """An endlessly looping GIF of ``frames`` (``boomerang``: played forwards then backwards), enlarged as in
    :func:`grid`."""
    frames = viewable(frames, min_side)
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
