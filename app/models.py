"""The models behind the demo: one shared pipeline per space (:class:`Models`), the preset selector's pool
(:class:`ModelPool`, least recently used dropped first) and the header line."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gen_align.checks import integer
from gen_align.errors import ConfigError
from gen_align.pipelines.decoders import DiffusersDecoder, EmbeddingStats
from gen_align.pipelines.generate import DecodeOptions
from gen_align.pipelines.pipeline import GenAlignOutput, GenAlignPipeline
from gen_align.pipelines.presence import available_presets, default_preset
from gen_align.pipelines.session import CONDITION_KINDS, Condition, RuntimeOptions, Session, check_condition
from gen_align.space import AlignedSpace


def space_kinds(options: RuntimeOptions) -> tuple[RuntimeOptions, list[str]]:
    """The options with the space pinned (``--space``, ``--preset``, else the smallest present preset) and the
    input kinds it can encode (its towers; audio only with a trained audio head)."""
    if options.preset and options.space:
        raise ConfigError("pass either --preset or --space, not both.")
    source = options.space or options.preset or default_preset(["text"], options.weights_dir)
    config = AlignedSpace.from_pretrained(source, modalities=[]).config
    kinds = [k for k in CONDITION_KINDS if k in config["towers"] and (k != "audio" or "audio" in config["heads"])]
    if not options.space:
        options = replace(options, preset=source)
    return options, kinds


class Models:
    """One :class:`GenAlignPipeline` (space and decoder loaded once) shared by every request, behind one lock."""

    def __init__(self, options: RuntimeOptions, *, max_audio_seconds: float = 30.0) -> None:
        options, self.kinds = space_kinds(replace(options, progress=True))  # bars feed the page's progress
        self.options = options
        self.name: str = options.space or options.preset  # its entry in the page's selector
        self.max_audio_seconds = max_audio_seconds
        self.pipe = GenAlignPipeline(Session(options, self.kinds), keep_encoders=True)
        self.lock = threading.Lock()

    @property
    def session(self) -> Session:
        return self.pipe.session

    @property
    def decoder(self) -> DiffusersDecoder:
        return self.pipe.decoder

    @property
    def stats(self) -> EmbeddingStats:
        return self.pipe.stats

    def condition(self, kind: str, value: Any) -> Condition | None:
        """A checked condition for one input of the page (``None`` when it is empty)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if kind not in self.kinds:
            raise ConfigError(f"this space cannot encode {kind} (it takes {', '.join(self.kinds)}); leave it empty.")
        return check_condition(kind, str(value), max_audio_seconds=self.max_audio_seconds)  # too long: a clear error

    def conditions(self, text: str | None, audio: str | None, image: str | None) -> list[Condition]:
        """The non-empty inputs of the page as conditions, in the order text, audio, image."""
        given = (self.condition(k, v) for k, v in zip(CONDITION_KINDS, (text, audio, image), strict=True))
        return [c for c in given if c is not None]

    def generate(
        self, conditions: list[Condition], weights: dict[str, float], mode: str, n: int, options: DecodeOptions
    ) -> GenAlignOutput:
        """``n`` images of the blend of ``conditions`` (the pipeline's call, under the lock)."""
        inputs = {c.kind: c.value for c in conditions}
        with self.lock:
            return self.pipe(
                **inputs, weights=weights, mode=mode, num_images=n, seed=options.seed, **options.sampling()
            )

    def interpolate(self, a: Condition, b: Condition, frames: int, mode: str, options: DecodeOptions) -> GenAlignOutput:
        """``frames`` images from ``a`` to ``b`` (the pipeline's interpolation, under the lock)."""
        with self.lock:
            return self.pipe.interpolate(
                {a.kind: a.value}, {b.kind: b.value}, frames=frames, mode=mode, seed=options.seed, **options.sampling()
            )


def header(models: Models) -> str:
    """Markdown line naming the active space, decoder, device and input kinds."""
    desc = models.session.describe()
    return (
        f"Space `{desc['space']}` → {desc['decoder']['kind']} decoder `{desc['decoder']['source']}` "
        f"on {desc['device']} ({desc['dtype']}). Inputs: {', '.join(models.kinds)}."
    )


def selector_choices(options: RuntimeOptions) -> list[tuple[str, str]]:
    """``(label, value)`` of the page's preset selector: the ``--space`` checkpoint (if any), then the presets whose
    weights are present, smallest first; the preset the command chose is always among them."""
    presets = available_presets(["text"], options.weights_dir)
    if options.preset and options.preset not in presets:
        presets.insert(0, options.preset)
    space = [(f"{Path(options.space).name} (--space {options.space})", options.space)] if options.space else []
    return space + [(name, name) for name in presets]


class ModelPool:
    """The models behind the page's preset selector: the command's choice is loaded already, every other entry on
    first use; at most ``keep`` stay loaded (least recently used dropped first), so no preset is held twice."""

    def __init__(self, models: Models, *, keep: int = 2) -> None:
        self.keep = integer(keep, "--keep-models", low=1)
        self.default = models.name
        self.base = models.options
        self.max_audio_seconds = models.max_audio_seconds
        self.choices = selector_choices(models.options)
        self.names = [value for _, value in self.choices]
        self._loaded: OrderedDict[str, Models] = OrderedDict([(models.name, models)])
        self._lock = threading.Lock()

    def options(self, name: str) -> RuntimeOptions:
        """The runtime options of entry ``name``: the command's own for its choice; another preset gets its own
        decoder (``--decoder`` applies to the command's choice only)."""
        if name == self.default:
            return self.base
        if name not in self.names:
            raise ConfigError(
                f"unknown or absent preset {name!r}; this app offers {self.names} (a preset is offered when its "
                "weights are present under --weights-dir or in the Hugging Face cache)."
            )
        return replace(self.base, preset=name, space=None, decoder=None)

    def kinds(self) -> list[str]:
        """The input kinds any entry can encode (configs only, nothing loaded), in page order."""
        found = {kind for name in self.names for kind in space_kinds(self.options(name))[1]}
        return [k for k in CONDITION_KINDS if k in found]

    @property
    def loaded(self) -> list[str]:
        """Entries loaded now, least recently used first."""
        return list(self._loaded)

    def get(self, name: str | None = None) -> Models:
        """The models of entry ``name`` (default: the command's choice), loaded once."""
        name = name or self.default
        options = self.options(name)
        with self._lock:
            models = self._loaded.pop(name, None)
            if models is None:
                while len(self._loaded) >= self.keep:  # free before loading: peak memory stays at ``keep`` models
                    self._loaded.popitem(last=False)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                models = Models(options, max_audio_seconds=self.max_audio_seconds)
            self._loaded[name] = models
        return models
