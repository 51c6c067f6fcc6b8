"""Images from text, audio, an image or a blend of them — and interpolation strips — written to a folder.

``generate``: ``n`` images of one blended condition (image ``i`` uses seed ``seed + i``), each as a PNG with a
JSON sidecar (preset, inputs, weights, mode, seed, steps, guidance, embedding norms before/after calibration),
plus ``grid.png``. ``interpolate_images``: the frames along the arc between two conditions, all with one seed,
as ``interpolation.png`` (a strip), ``interpolation.gif`` and ``interpolation.json``. Files are written
atomically.

Every condition, an image one included, is reduced to its direction, blended, and rescaled to the decoder's
calibrated mean norm (see :mod:`gen_align.pipelines.calibration`), so all inputs reach the decoder at one scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gen_align import __version__
from gen_align.checks import choice, integer, non_negative
from gen_align.errors import ConfigError
from gen_align.io import write_json_atomic

from .blend import MODES, blend, interpolate, validate_weights
from .calibration import rescale
from .render import grid, save_gif, save_png, strip
from .session import Condition, RuntimeOptions, Session


@dataclass(frozen=True)
class DecodeOptions:
    """Sampling options shared by ``generate`` and ``interpolate`` (``None``: the decoder's default)."""

    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    noise_level: int | None = None
    batch_size: int | None = None
    height: int | None = None
    width: int | None = None

    def check(self) -> None:
        """Cheap validation before any model is loaded."""
        integer(self.seed, "--seed", low=0)
        for value, name, low in ((self.steps, "--steps", 1), (self.batch_size, "--batch-size", 1)):
            if value is not None:
                integer(value, name, low=low)
        if self.guidance is not None:
            non_negative(self.guidance, "--guidance")
        if self.noise_level is not None:
            integer(self.noise_level, "--noise-level", low=0)

    def call_kwargs(self, kind: str) -> dict[str, Any]:
        """Keyword arguments of the decoder call (``noise_level`` only for Stable UnCLIP)."""
        if self.noise_level is not None and kind != "stable-unclip":
            raise ConfigError(f"--noise-level applies to the stable-unclip decoder only, not {kind}; leave it out.")
        kwargs = {"steps": self.steps, "guidance": self.guidance, "batch_size": self.batch_size}
        kwargs |= {"height": self.height, "width": self.width}
        if kind == "stable-unclip":
            kwargs["noise_level"] = self.noise_level or 0
        return kwargs

    def record(self, decoder: Any, kind: str) -> dict[str, Any]:
        """The values actually used, for sidecars."""
        out = {
            "steps": self.steps or decoder.default_steps,
            "guidance": decoder.default_guidance if self.guidance is None else self.guidance,
        }
        if kind == "stable-unclip":
            out["noise_level"] = self.noise_level or 0
        return out


@dataclass
class Result:
    """Paths written and the values recorded."""

    files: list[Path] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def embedding_report(raw: dict[str, torch.Tensor], direction: torch.Tensor, z: torch.Tensor, stats: Any) -> dict:
    """Cosine similarities between the inputs' raw embeddings, their norms, and the norm after calibration."""
    names = list(raw)
    return {
        "cosine_similarity": {
            f"{a}·{b}": float(torch.nn.functional.cosine_similarity(raw[a], raw[b]).squeeze())
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        },
        "norms_before": {k: float(v.norm()) for k, v in raw.items()},
        "direction_norm": float(direction.norm(dim=-1).max()),
        "norm_after": float(z.norm(dim=-1).max()),
        "calibration": stats.to_dict(),
    }


def blended(
    raw: dict[str, torch.Tensor], weights: dict[str, float], mode: str, stats: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit direction, calibrated embedding) of the blend: directions first, then the decoder's scale."""
    direction = blend(raw, weights, mode)
    return direction, rescale(direction, stats)


def interpolated(
    a: torch.Tensor, b: torch.Tensor, frames: int, mode: str, stats: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit directions, calibrated embeddings) of ``frames`` points along the arc from ``a`` to ``b``."""
    directions = interpolate(a, b, steps=frames, mode=mode)
    return directions, rescale(directions, stats)


def generate(
    options: RuntimeOptions,
    conditions: list[Condition],
    *,
    weights: dict[str, float] | None = None,
    mode: str = "slerp",
    n: int = 4,
    decode: DecodeOptions | None = None,
    out: str | os.PathLike = "results/generate",
) -> Result:
    """``n`` images of the blend of ``conditions`` (one per kind) written to ``out``."""
    if not conditions:
        raise ConfigError("no condition given: pass at least one of --text, --audio or --image.")
    kinds = [c.kind for c in conditions]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"one input per kind, got {kinds}.")
    choice(mode, "--mode", MODES)
    n = integer(n, "--n", low=1)
    decode = decode or DecodeOptions()
    decode.check()
    weights = validate_weights(weights, kinds)
    session = Session(options, kinds)
    call_kwargs = decode.call_kwargs(session.info.kind)
    raw = {c.kind: session.encode(c) for c in conditions}
    direction, z = blended(raw, weights, mode, session.stats)
    decoder = session.load_decoder()
    images = decoder(z.expand(n, -1), seed=decode.seed, **call_kwargs)
    out = Path(out)
    record = {
        "library_version": __version__,
        **session.describe(),
        "inputs": {c.kind: c.describe() for c in conditions},
        "weights": weights,
        "mode": mode,
        **decode.record(decoder, session.info.kind),
        "size": list(images[0].size),
        "embedding": embedding_report(raw, direction, z, session.stats),
    }
    result = Result(record=record)
    for i, image in enumerate(images):
        name = f"image_{i:03d}"
        result.files.append(save_png(image, out / f"{name}.png"))
        sidecar = {"image": f"{name}.png", "index": i, "n": n, "seed": decode.seed + i, **record}
        result.files.append(write_json_atomic(out / f"{name}.json", sidecar))
    result.files.append(save_png(grid(images), out / "grid.png"))
    return result


def interpolate_images(
    options: RuntimeOptions,
    start: Condition,
    end: Condition,
    *,
    frames: int = 8,
    mode: str = "slerp",
    decode: DecodeOptions | None = None,
    duration_ms: int = 200,
    out: str | os.PathLike = "results/interpolate",
) -> Result:
    """``frames`` images along the arc from ``start`` to ``end`` (endpoints included), one seed for all."""
    choice(mode, "--mode", MODES)
    frames = integer(frames, "--frames", low=2, hint="(the two endpoints are always included)")
    duration_ms = integer(duration_ms, "--duration", low=10)
    decode = decode or DecodeOptions()
    decode.check()
    session = Session(options, {start.kind, end.kind})
    call_kwargs = decode.call_kwargs(session.info.kind)
    a, b = session.encode(start), session.encode(end)
    directions, z = interpolated(a, b, frames, mode, session.stats)
    decoder = session.load_decoder()
    images = decoder(z, seed=[decode.seed] * frames, **call_kwargs)
    out = Path(out)
    record = {
        "library_version": __version__,
        **session.describe(),
        "start": {start.kind: start.describe()},
        "end": {end.kind: end.describe()},
        "frames": frames,
        "t": [i / (frames - 1) for i in range(frames)],
        "mode": mode,
        "seed": decode.seed,
        **decode.record(decoder, session.info.kind),
        "size": list(images[0].size),
        "embedding": embedding_report({"start": a, "end": b}, directions, z, session.stats),
        "strip": "interpolation.png",
        "gif": "interpolation.gif",
        "gif_frame_ms": duration_ms,
    }
    files = [
        save_png(strip(images), out / "interpolation.png"),
        save_gif(images, out / "interpolation.gif", duration_ms),
        write_json_atomic(out / "interpolation.json", record),
    ]
    return Result(files=files, record=record)
