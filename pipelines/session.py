"""A generation session: the space and decoder picked from options, conditions encoded and checked.

Order of work (cheap checks first, so a user error costs no model loading): options → which space (``space``,
``preset``, else the smallest preset whose weights are here) → its calibration → the decoder's kind and
dimension (JSON only) → the space's towers → encoded conditions → the decoder (the space's towers are freed
first; a Kandinsky decoder gets its zero-image negative from the space's image tower before that).

Messages name arguments as :data:`~.arguments.ARGUMENT_NAMES` does (``text``, ``weights``, ``dtype``); a command passes
its own table (``pipelines/generate.py:CLI_FLAGS``) so that they name its flags instead.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gen_align.errors import ConfigError, EmbeddingError, InputFileError
from gen_align.presets import PRESETS, get_preset
from gen_align.space import AlignedSpace

from .arguments import ARGUMENT_NAMES
from .calibration import find_stats
from .decoders import (
    DTYPE_NAMES,
    DecoderInfo,
    DiffusersDecoder,
    EmbeddingStats,
    decoder_class,
    inspect_decoder,
    load_decoder,
    resolve_device,
    resolve_dtype,
)
from .download import check_preset
from .presence import default_preset

CONDITION_KINDS = ("text", "audio", "image")


@dataclass(frozen=True)
class RuntimeOptions:
    """Where the models come from and where they run (:meth:`GenAlignPipeline.from_pretrained`'s arguments, the
    commands' shared options)."""

    preset: str | None = None
    space: str | None = None
    decoder: str | None = None
    weights_dir: str | None = None
    device: str | None = None
    dtype: str | None = None
    offload: bool = False
    attention_slicing: bool = False
    progress: bool = True
    stats: EmbeddingStats | None = None  # a calibration in place of the space's or the preset's


@dataclass(frozen=True)
class Condition:
    """One input: ``kind`` is text, audio or image; ``value`` the text or the file path."""

    kind: str
    value: str

    def describe(self) -> str:
        return self.value if self.kind == "text" else str(Path(self.value).resolve())


def check_condition(
    kind: str, value: str, names: Mapping[str, str] = ARGUMENT_NAMES, *, max_audio_seconds: float | None = None
) -> Condition:
    """A validated condition: non-empty text, or an existing audio/image file (``names``: as
    :data:`ARGUMENT_NAMES`); an audio file longer than ``max_audio_seconds`` is refused before it is decoded
    (from its header where it declares its length), so a 3-hour file costs no memory."""
    if kind not in CONDITION_KINDS:
        raise ConfigError(f"unknown input kind {kind!r}; use one of {CONDITION_KINDS}.")
    if kind == "text":
        if not value.strip():
            raise ConfigError(f"{names['text']} is empty; give a description such as 'a dog barking in the rain'.")
        return Condition(kind, value)
    path = Path(value)
    if not path.exists():
        raise InputFileError(f"{kind} file {path} does not exist; check the path (relative to {os.getcwd()}).")
    if not path.is_file():
        raise InputFileError(f"{kind} path {path} is not a file; pass the path of one {kind} file.")
    if kind == "audio" and max_audio_seconds is not None:
        from gen_align.encoders.audio_io import check_duration

        check_duration(path, max_audio_seconds, hint=f"{names['max_audio_seconds']} sets the limit.")
    return Condition(kind, value)


def parse_condition(
    spec: str, names: Mapping[str, str] = ARGUMENT_NAMES, *, max_audio_seconds: float | None = None
) -> Condition:
    """``KIND=VALUE`` (``text=a dog``, ``audio=bark.wav``, ``image=dog.png``) → a checked Condition."""
    kind, sep, value = spec.partition("=")
    if not sep or kind.strip() not in CONDITION_KINDS:
        raise ConfigError(f"cannot parse {spec!r}; write KIND=VALUE with KIND in {CONDITION_KINDS}, e.g. text='a dog'.")
    return check_condition(kind.strip(), value, names, max_audio_seconds=max_audio_seconds)


def parse_weights(
    spec: str | None, inputs: Iterable[str], names: Mapping[str, str] = ARGUMENT_NAMES
) -> dict[str, float] | None:
    """``"text=0.5,audio=0.5"`` → ``{"text": 0.5, "audio": 0.5}`` for the given ``inputs`` (validated by the blend
    later; ``names``: see :data:`ARGUMENT_NAMES`)."""
    if spec is None:
        return None
    example = ",".join(f"{n}=0.5" for n in inputs) or "text=0.5,audio=0.5"
    weights: dict[str, float] = {}
    for item in (s.strip() for s in spec.split(",")):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise ConfigError(
                f"cannot parse {names['weights']} {spec!r} at {item!r}; write NAME=NUMBER pairs: {example}."
            )
        if name.strip() in weights:
            raise ConfigError(
                f"{names['weights']} names {name.strip()!r} twice; give each input one weight: {example}."
            )
        weights[name.strip()] = number
    return weights


class Session:
    """The space + decoder chosen by :class:`RuntimeOptions` for a set of input kinds; messages name the options
    as ``names`` does (see :data:`ARGUMENT_NAMES`)."""

    def __init__(
        self, options: RuntimeOptions, kinds: Iterable[str], names: Mapping[str, str] = ARGUMENT_NAMES
    ) -> None:
        self.options = options
        self.names = names
        self.device = resolve_device(options.device, names)
        self.dtype = resolve_dtype(options.dtype, self.device, names)
        if options.offload and self.device.type != "cuda":
            raise ConfigError(f"{names['offload']} (model CPU offload) needs a CUDA GPU; leave it out on the CPU.")
        if options.preset and options.space:
            raise ConfigError(f"pass either {names['preset']} or {names['space']}, not both.")
        kinds = sorted(set(kinds))
        self.source = options.space or options.preset or default_preset(kinds, options.weights_dir)
        if options.space is None and not get_preset(self.source).checkpoint:  # all that is missing, before any load
            check_preset(
                self.source, kinds, options.weights_dir, calibration=options.stats is None, decoder=not options.decoder
            )
        config = AlignedSpace.from_pretrained(self.source, modalities=[]).config
        self.preset = config.get("preset")
        decoder = options.decoder or config.get("decoder") or getattr(PRESETS.get(self.preset), "decoder", None)
        if decoder is None:
            raise ConfigError(
                f"the space {self.source} names no preset or decoder; pass {names['decoder']} (a decoder folder or "
                "hub id, e.g. stabilityai/stable-diffusion-2-1-unclip)."
            )
        self.stats: EmbeddingStats = options.stats or find_stats(
            _ConfigOnly(config), weights_dir=options.weights_dir, checkpoint=options.space
        )
        self.info: DecoderInfo = inspect_decoder(decoder, weights_dir=options.weights_dir, names=names)
        towers = set(kinds)
        if decoder_class(self.info.kind).wants_image_tower and "image" in config["towers"]:
            towers.add("image")  # e.g. Kandinsky's negative is its zero-image embedding
        space_device = torch.device("cpu") if options.offload else self.device
        self.space: AlignedSpace | None = AlignedSpace.from_pretrained(
            self.source, modalities=sorted(towers), weights_dir=options.weights_dir, device=space_device
        )

    # ------------------------------------------------------------------------------------------ encode
    def encode(self, condition: Condition) -> torch.Tensor:
        """The raw embedding ``(1, d)`` of one condition, checked against the decoder and the calibration."""
        return self.encode_value(condition.kind, condition.value, condition.describe())

    def encode_value(self, kind: str, value: Any, label: str) -> torch.Tensor:
        """:meth:`encode` for any input the space takes: text, an audio path or ``(waveform, rate)``, an image path
        or a PIL image; ``label`` names it in messages."""
        if self.space is None:
            raise ConfigError("encode() after load_decoder(): the space's towers were freed; encode first.")
        if kind not in self.space.towers:
            raise ConfigError(f"this session loaded no {kind} tower (it has {sorted(self.space.towers)}).")
        encoder = {"text": self.space.encode_text, "audio": self.space.encode_audio, "image": self.space.encode_image}
        z = encoder[kind]([value]).float().cpu()
        if not bool(torch.isfinite(z).all()):
            raise EmbeddingError(
                f"the {kind} embedding of {label!r} has NaN/inf values; "
                f"the encoder overflowed or the input is degenerate — use float32 ({self.names['dtype']} fp32) "
                "or another input."
            )
        if z.shape[-1] != self.info.embedding_dim:
            raise ConfigError(
                f"dimension mismatch: the space {self.source} gives {z.shape[-1]}-d {kind} embeddings but "
                f"the {self.info.kind} decoder {self.info.source} takes {self.info.embedding_dim}-d ones; pass the "
                f"decoder this space was trained for ({self.names['decoder']}) or the matching {self.names['preset']}."
            )
        if self.stats.embedding_dim is not None and self.stats.embedding_dim != z.shape[-1]:
            raise ConfigError(
                f"the calibration ({self.stats.source}) was measured on {self.stats.embedding_dim}-d embeddings but "
                f"this space gives {z.shape[-1]}-d ones; re-run `gen-align calibrate` for it."
            )
        return z

    # ------------------------------------------------------------------------------------------ decode
    def load_decoder(self, *, keep_space: bool = False) -> DiffusersDecoder:
        """Load the decoder (on the device, in the dtype, with the options). The space's towers are freed first
        unless ``keep_space`` (a long-lived app encodes and decodes for its whole life)."""
        extra = decoder_class(self.info.kind).space_kwargs(self.space) if self.space is not None else {}
        if not keep_space:
            self.space = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        o = self.options
        return load_decoder(
            self.info,
            weights_dir=o.weights_dir,
            device=self.device,
            dtype=self.dtype,
            offload=o.offload,
            attention_slicing=o.attention_slicing,
            stats=self.stats,
            progress=o.progress,
            names=self.names,
            **extra,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the models and the runtime, for sidecars."""
        return {
            "space": self.source,
            "preset": self.preset,
            "decoder": {"kind": self.info.kind, "source": self.info.source, "embedding_dim": self.info.embedding_dim},
            "device": str(self.device),
            "dtype": DTYPE_NAMES[self.dtype],
        }


@dataclass(frozen=True)
class _ConfigOnly:
    """What :func:`find_stats` reads from a space: its config."""

    config: dict[str, Any]
