"""Mini-world images: a coloured shape on a greyish background, drawn at 4× and downsampled (antialiased).

Coordinates are in pixels of the 32×32 image, pixel ``i`` covering ``[i, i + 1)``. A pose is
``{"x", "y", "radius", "rotation"}``: the shape's centre, its nominal radius and its rotation in degrees.
Every shape is scaled to the same area (``AREA_PER_RADIUS2 · radius²``) so that size shows as area whatever
the shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from gen_align.errors import InputDataError

IMAGE_SIZE = 32
SUPERSAMPLE = 4
MARGIN = 1.0  # pixels kept free between the shape and the image border
AREA_PER_RADIUS2 = 2.2  # every shape's area is this times radius² (a circle of radius ≈ 0.84 · radius)
RADIUS_RANGE = {"small": (5.0, 7.0), "large": (10.0, 12.5)}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 20),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "purple": (150, 50, 200),
}
COLOUR_JITTER = 20  # ± per RGB channel
STRIPE_ANGLES = (0.0, 45.0, 90.0, 135.0)


def _unit_outline(shape: str) -> np.ndarray:
    """Vertices ``(n, 2)`` of ``shape`` around the origin, pointing up, before area normalisation."""

    def ring(count: int, radii: tuple[float, ...], start_deg: float) -> np.ndarray:
        angles = np.radians(start_deg + 360.0 * np.arange(count) / count)
        r = np.resize(np.asarray(radii), count)
        return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)

    if shape == "circle":
        return ring(48, (1.0,), 0.0)
    if shape == "square":
        return ring(4, (1.0,), 45.0)
    if shape == "triangle":
        return ring(3, (1.0,), -90.0)
    if shape == "star":
        return ring(10, (1.0, 0.5), -90.0)
    if shape == "cross":
        a = 0.3  # half width of an arm, arm length 1
        quarter = np.array([(a, -1.0), (a, -a), (1.0, -a)])
        turns = [quarter]
        for _ in range(3):  # each turn: (x, y) -> (-y, x), a quarter turn clockwise on screen
            turns.append(np.stack([-turns[-1][:, 1], turns[-1][:, 0]], axis=1))
        return np.concatenate(turns)
    raise InputDataError(f"unknown shape {shape!r}; the mini world has circle, square, triangle, star, cross.")


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _unit_shape(shape: str) -> np.ndarray:
    outline = _unit_outline(shape)
    return outline * math.sqrt(AREA_PER_RADIUS2 / _polygon_area(outline))


UNIT_SHAPES = {name: _unit_shape(name) for name in ("circle", "square", "triangle", "star", "cross")}


def _placed(shape: str, radius: float, rotation: float) -> np.ndarray:
    if shape not in UNIT_SHAPES:
        _unit_outline(shape)  # raises the helpful error
    theta = math.radians(rotation)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    return UNIT_SHAPES[shape] @ rot * radius


def shape_polygon(shape: str, pose: Mapping[str, float], size: int = IMAGE_SIZE) -> list[tuple[float, float]]:
    """The outline of ``shape`` at ``pose`` as ``(x, y)`` vertices in pixels of a ``size``×``size`` image."""
    points = _placed(shape, float(pose["radius"]), float(pose["rotation"]))
    points = (points + np.array([float(pose["x"]), float(pose["y"])])) * (size / IMAGE_SIZE)
    return [(float(x), float(y)) for x, y in points]


def _pil_points(polygon: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """PIL fills pixels whose centres lie inside; its pixel ``i`` is centred on ``i`` rather than ``i + 0.5``."""
    return [(x - 0.5, y - 0.5) for x, y in polygon]


def shape_mask(shape: str, pose: Mapping[str, float], size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean ``(size, size)`` mask of pixels at least half covered by ``shape`` at ``pose``."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon(_pil_points(shape_polygon(shape, pose, big)), fill=255)
    coverage = np.asarray(canvas.resize((size, size), Image.Resampling.BOX))
    return coverage >= 128


def draw_pose(shape: str, size_name: str, rng: np.random.Generator) -> dict[str, float]:
    """A random pose: radius for ``size_name``, any rotation, a centre that keeps the shape inside the image."""
    low, high = RADIUS_RANGE[size_name]
    radius = round(float(rng.uniform(low, high)), 3)
    rotation = round(float(rng.uniform(0.0, 360.0)), 3)
    points = _placed(shape, radius, rotation)
    lo, hi = points.min(axis=0), points.max(axis=0)
    x = float(rng.uniform(MARGIN - lo[0], IMAGE_SIZE - MARGIN - hi[0]))
    y = float(rng.uniform(MARGIN - lo[1], IMAGE_SIZE - MARGIN - hi[1]))
    return {"x": round(x, 3), "y": round(y, 3), "radius": radius, "rotation": rotation}


def draw_colour(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """The reference RGB of ``colour`` jittered by up to ±``COLOUR_JITTER`` per channel."""
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = np.clip(np.asarray(COLOURS[colour]) + jitter, 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


@dataclass(frozen=True)
class Background:
    """A greyish background: ``kind`` plain/stripes/dots, a base and a pattern grey, and the pattern geometry."""

    kind: str
    base: tuple[int, int, int]
    pattern: tuple[int, int, int]
    angle: float = 0.0  # stripes: direction across the stripes, degrees
    period: float = 5.0  # stripes: period; dots: grid spacing (pixels)
    phase: float = 0.0  # stripes: offset along the period (pixels)
    offset: tuple[float, float] = (0.0, 0.0)  # dots: grid offset (pixels)
    dot_radius: float = 1.1


def _grey(level: float, tint: np.ndarray) -> tuple[int, int, int]:
    rgb = np.clip(np.round(level + tint), 0, 255).astype(int)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def draw_background(kind: str, rng: np.random.Generator) -> Background:
    """Random parameters of a ``kind`` background (low-saturation greys with a slight shared tint)."""
    level = float(rng.uniform(95.0, 175.0))
    tint = rng.uniform(-6.0, 6.0, size=3)
    contrast = float(rng.uniform(35.0, 55.0))
    other = level + contrast if level + contrast <= 215.0 else level - contrast
    base, pattern = _grey(level, tint), _grey(other, tint)
    if kind == "plain":
        return Background("plain", base, base)
    if kind == "stripes":
        angle = float(STRIPE_ANGLES[rng.integers(len(STRIPE_ANGLES))])
        period = float(rng.uniform(4.5, 6.5))
        return Background("stripes", base, pattern, angle=angle, period=period, phase=float(rng.uniform(0, period)))
    if kind == "dots":
        spacing = float(rng.uniform(5.0, 6.0))
        offset = (float(rng.uniform(0, spacing)), float(rng.uniform(0, spacing)))
        radius = float(rng.uniform(1.0, 1.3))
        return Background("dots", base, pattern, period=spacing, offset=offset, dot_radius=radius)
    raise InputDataError(f"unknown background {kind!r}; the mini world has plain, stripes, dots.")


def _phase_fraction(values: np.ndarray, period: float) -> np.ndarray:
    cycles = values / period
    return cycles - np.floor(cycles)


def background_array(background: Background, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 pixels of ``background`` (geometry in 32×32 pixels, scaled to ``size``)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (IMAGE_SIZE / size)
    x, y = centres[None, :], centres[:, None]
    if background.kind == "stripes":
        theta = math.radians(background.angle)
        along = x * math.cos(theta) + y * math.sin(theta) + background.phase
        on = _phase_fraction(along, background.period) < 0.5
    elif background.kind == "dots":
        dx = (_phase_fraction(x - background.offset[0], background.period) - 0.5) * background.period
        dy = (_phase_fraction(y - background.offset[1], background.period) - 0.5) * background.period
        on = dx * dx + dy * dy < background.dot_radius**2
    else:
        on = np.zeros((size, size), dtype=bool)
    palette = np.array([background.base, background.pattern], dtype=np.uint8)
    return np.take(palette, on.view(np.uint8), axis=0)


def render_image(
    shape: str, pose: Mapping[str, float], rgb: tuple[int, int, int], background: Background
) -> Image.Image:
    """The 32×32 RGB image: ``background`` with ``shape`` filled in ``rgb`` at ``pose``, antialiased."""
    big = IMAGE_SIZE * SUPERSAMPLE
    canvas = Image.fromarray(background_array(background, big))
    ImageDraw.Draw(canvas).polygon(_pil_points(shape_polygon(shape, pose, big)), fill=tuple(rgb))
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
