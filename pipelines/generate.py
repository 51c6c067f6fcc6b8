"""The command line's generation: :class:`~gen_align.pipelines.pipeline.GenAlignPipeline` calls written to a folder.

``generate``: ``n`` images of one blended condition (image ``i`` uses seed ``seed + i``), each as a PNG with a
JSON sidecar (preset, inputs, weights, mode, seed, steps, guidance, embedding norms before/after calibration),
plus ``grid.png``. ``interpolate_images``: the frames along the arc between two conditions, all with one seed,
as ``interpolation.png`` (a strip), ``interpolation.gif`` and ``interpolation.json``. Files are written
atomically. The pipeline is built for one call (the towers are freed before the decoder loads) and its messages
name the command's flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_align.checks import choice, integer
from gen_align.errors import ConfigError
from gen_align.io import write_json_atomic

from .arguments import ARGUMENT_NAMES
from .blend import MODES, validate_weights
from .pipeline import DecodeOptions as PipelineDecodeOptions
from .pipeline import GenAlignPipeline, blended, embedding_report, interpolated
from .render import grid, save_gif, save_png, strip
from .session import Condition, RuntimeOptions, Session

__all__ = ["DecodeOptions", "Result", "blended", "embedding_report", "generate", "interpolate_images", "interpolated"]

CLI_FLAGS = {**{name: f"--{name.replace('_', '-')}" for name in ARGUMENT_NAMES}, "num_images": "--n"}
"""The command-line flag of every argument the library's messages name (:data:`~.arguments.ARGUMENT_NAMES`)."""


@dataclass(frozen=True)
class DecodeOptions(PipelineDecodeOptions):
    """The sampling options of a command: as the pipeline's, with messages that name the command's flags."""

    def check(self, names: Mapping[str, str] = CLI_FLAGS) -> None:
        super().check(names)

    def call_kwargs(self, kind: str, names: Mapping[str, str] = CLI_FLAGS) -> dict[str, Any]:
        return super().call_kwargs(kind, names)


@dataclass
class Result:
    """Paths written and the values recorded."""

    files: list[Path] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def _one_call_pipeline(
    options: RuntimeOptions, kinds: set[str] | list[str], decode: PipelineDecodeOptions
) -> GenAlignPipeline:
    decode.check(CLI_FLAGS)  # cheap checks before any model is loaded
    return GenAlignPipeline(Session(options, kinds, CLI_FLAGS), keep_encoders=False)


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
    choice(mode, CLI_FLAGS["mode"], MODES)
    integer(n, CLI_FLAGS["num_images"], low=1)
    validate_weights(weights, kinds)
    decode = decode or DecodeOptions()
    pipe = _one_call_pipeline(options, kinds, decode)
    inputs = {c.kind: c.value for c in conditions}
    output = pipe(**inputs, weights=weights, mode=mode, num_images=n, seed=decode.seed, **decode.sampling())
    out = Path(out)
    result = Result(record=output.record)
    for i, image in enumerate(output.images):
        name = f"image_{i:03d}"
        result.files.append(save_png(image, out / f"{name}.png"))
        sidecar = {"image": f"{name}.png", "index": i, "n": n, "seed": decode.seed + i, **output.record}
        result.files.append(write_json_atomic(out / f"{name}.json", sidecar))
    result.files.append(save_png(grid(output.images), out / "grid.png"))
    _remove_stale_images(out, len(output.images))
    return result


def _remove_stale_images(out: Path, count: int) -> None:
    """Delete ``image_NNN.png`` / ``.json`` left in ``out`` by an earlier run of more images (index ≥ ``count``),
    once this run's files are written, so the folder holds one run's images only."""
    for path in out.glob("image_*.*"):
        stem, _, index = path.stem.partition("_")
        if path.suffix in (".png", ".json") and index.isdigit() and int(index) >= count:
            path.unlink(missing_ok=True)


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
    choice(mode, CLI_FLAGS["mode"], MODES)
    integer(frames, CLI_FLAGS["frames"], low=2, hint="(the two endpoints are always included)")
    duration_ms = integer(duration_ms, "--duration", low=10)
    decode = decode or DecodeOptions()
    pipe = _one_call_pipeline(options, {start.kind, end.kind}, decode)
    output = pipe.interpolate(
        {start.kind: start.value},
        {end.kind: end.value},
        frames=frames,
        mode=mode,
        seed=decode.seed,
        **decode.sampling(),
    )
    record = {**output.record, "strip": "interpolation.png", "gif": "interpolation.gif", "gif_frame_ms": duration_ms}
    out = Path(out)
    files = [
        save_png(strip(output.images), out / "interpolation.png"),
        save_gif(output.images, out / "interpolation.gif", duration_ms),
        write_json_atomic(out / "interpolation.json", record),
    ]
    return Result(files=files, record=record)
