"""One page request each: checked inputs and weights, a generation or an interpolation through the shared
pipeline, and the embeddings report the page shows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image

from gen_align.checks import choice, integer
from gen_align.errors import ConfigError, GenAlignError
from gen_align.pipelines.blend import MODES, validate_weights
from gen_align.pipelines.generate import DecodeOptions
from gen_align.pipelines.render import strip
from gen_align.pipelines.session import CONDITION_KINDS

from .models import Models

MAX_IMAGES = 8
MAX_FRAMES = 12


def normalised_weights(kinds: list[str], values: list[float]) -> dict[str, float]:
    """The weights of the given inputs, normalised to sum 1 (the same check as the blend)."""
    return validate_weights(dict(zip(kinds, (float(v) for v in values), strict=True)), kinds)


def weights_text(text: str | None, audio: str | None, image: str | None, wt: float, wa: float, wi: float) -> str:
    """Markdown line with the normalised weights of the inputs given so far."""
    given = [(k, w) for k, v, w in zip(CONDITION_KINDS, (text, audio, image), (wt, wa, wi), strict=True) if v]
    if not given:
        return "Normalised weights: give at least one input."
    try:
        weights = normalised_weights([k for k, _ in given], [w for _, w in given])
    except GenAlignError as err:
        return f"Normalised weights: {err}"
    return "Normalised weights: " + ", ".join(f"{k} **{v:.2f}**" for k, v in weights.items())


def _given(value: float | None, name: str) -> float:
    if value is None:
        raise ConfigError(f"{name} is empty; enter a number.")
    return value


def _bounded(value: float | None, name: str, low: int, high: int) -> int:
    number = integer(int(_given(value, name)), name, low=low)
    if number > high:
        raise ConfigError(f"{name} must be at most {high} in the demo, got {number}; use the CLI for more.")
    return number


def _decode_options(
    base: DecodeOptions, seed: float | None, steps: float | None, guidance: float | None
) -> DecodeOptions:
    seed, steps, guidance = (_given(v, k) for v, k in ((seed, "seed"), (steps, "steps"), (guidance, "guidance")))
    options = replace(base, seed=int(seed), steps=int(steps), guidance=float(guidance))
    options.check()
    return options


def _warnings(record: dict[str, Any]) -> dict[str, Any]:
    """The record's warnings (a prompt the space's text tower cannot read), first in the report panel."""
    return {"warnings": record["warnings"]} if record.get("warnings") else {}


def models_report(models: Models) -> dict[str, Any]:
    """The space and decoder that made a result (as in the CLI's sidecars)."""
    desc = models.session.describe()
    return {"space": desc["space"], "decoder": desc["decoder"]}


def run_generate(
    models: Models,
    base: DecodeOptions,
    text: str | None,
    audio: str | None,
    image: str | None,
    w_text: float,
    w_audio: float,
    w_image: float,
    mode: str,
    seed: float,
    steps: float,
    guidance: float,
    n: float,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """``n`` images of the blend of the given inputs (image ``i`` seeded ``seed + i``) and the embedding report."""
    conditions = models.conditions(text, audio, image)
    if not conditions:
        raise ConfigError("nothing given: type a text, upload or record audio, or upload an image.")
    by_kind = dict(zip(CONDITION_KINDS, (w_text, w_audio, w_image), strict=True))
    weights = normalised_weights([c.kind for c in conditions], [by_kind[c.kind] for c in conditions])
    choice(mode, "blend mode", MODES)
    n = _bounded(n, "number of images", 1, MAX_IMAGES)
    options = _decode_options(base, seed, steps, guidance)
    output = models.generate(conditions, weights, mode, n, options)
    weights = {k: round(v, 4) for k, v in weights.items()}
    report = {"weights": weights, "mode": mode, **output.record["embedding"], **models_report(models)}
    return output.images, report | _warnings(output.record)


def run_interpolate(
    models: Models,
    base: DecodeOptions,
    a_text: str | None,
    a_audio: str | None,
    a_image: str | None,
    b_text: str | None,
    b_audio: str | None,
    b_image: str | None,
    frames: float,
    mode: str,
    seed: float,
    steps: float,
    guidance: float,
) -> tuple[Image.Image, dict[str, Any]]:
    """A strip of ``frames`` images from input A to input B (endpoints included, one seed for all)."""
    ends = []
    for name, values in (("A", (a_text, a_audio, a_image)), ("B", (b_text, b_audio, b_image))):
        given = models.conditions(*values)
        if len(given) != 1:
            raise ConfigError(f"input {name}: give exactly one of text, audio or image (got {len(given)}).")
        ends.append(given[0])
    choice(mode, "interpolation mode", MODES)
    frames = _bounded(frames, "frames", 2, MAX_FRAMES)
    options = _decode_options(base, seed, steps, guidance)
    output = models.interpolate(ends[0], ends[1], frames, mode, options)
    record = output.record
    report = {
        "start": record["start"],
        "end": record["end"],
        "t": [round(t, 4) for t in record["t"]],
        "mode": mode,
        **record["embedding"],
        **models_report(models),
    }
    return strip(output.images), report | _warnings(record)
