"""``GenAlignPipeline``: the aligned space, the unCLIP decoder and its calibration behind one call.

    >>> from gen_align import GenAlignPipeline
    >>> pipe = GenAlignPipeline.from_pretrained("mini")
    >>> out = pipe(text="a small red star on stripes", num_images=2, steps=2, seed=0)
    >>> len(out.images), out.images[0].size
    (2, (32, 32))

Every condition, an image included, is encoded into the space, reduced to its direction, blended (slerp on the
sphere, or lerp) and rescaled to the decoder's calibrated mean embedding norm
(:mod:`gen_align.pipelines.calibration`), so every input reaches the decoder at the scale it was trained on.
Decoder specifics (Kandinsky's zero-image negative, Stable UnCLIP's noise level) live in the decoder adapters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gen_align import __version__
from gen_align.checks import choice, integer, non_negative
from gen_align.errors import ConfigError
from gen_align.space import AlignedSpace

from .arguments import ARGUMENT_NAMES
from .blend import MODES, blend, interpolate, validate_weights
from .calibration import rescale
from .decoders import DECODER_CLASSES, DiffusersDecoder, EmbeddingStats, decoder_class
from .session import CONDITION_KINDS, RuntimeOptions, Session

SAMPLING_OPTIONS = ("steps", "guidance", "noise_level", "batch_size", "height", "width")


@dataclass
class GenAlignOutput:
    """What a call made: the images and the provenance record (what the CLI's JSON sidecars hold)."""

    images: list[Image.Image]
    record: dict[str, Any] = field(default_factory=dict)


MAX_SEED = 2**63 - 1
"""The largest seed (image ``i`` of a call is drawn with ``seed + i`` by a 64-bit torch generator)."""


@dataclass(frozen=True)
class DecodeOptions:
    """Sampling options of a decoder call (``None``: the decoder's default)."""

    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    noise_level: int | None = None
    batch_size: int | None = None
    height: int | None = None
    width: int | None = None

    def sampling(self) -> dict[str, Any]:
        """The options other than the seed, as keyword arguments of :class:`GenAlignPipeline` calls."""
        return {k: getattr(self, k) for k in SAMPLING_OPTIONS}

    def check(self, names: Mapping[str, str] = ARGUMENT_NAMES) -> None:
        """Cheap validation before any model is loaded; ``names`` say how messages name the arguments."""
        integer(self.seed, names["seed"], low=0, high=MAX_SEED)
        for value, key in ((self.steps, "steps"), (self.batch_size, "batch_size")):
            if value is not None:
                integer(value, names[key], low=1)
        if self.guidance is not None:
            non_negative(self.guidance, names["guidance"])
        if self.noise_level is not None:
            integer(self.noise_level, names["noise_level"], low=0)

    def call_kwargs(self, kind: str, names: Mapping[str, str] = ARGUMENT_NAMES) -> dict[str, Any]:
        """Keyword arguments of the decoder call: the common ones, plus the decoder's own ``call_options``."""
        extras = decoder_class(kind).call_options
        if self.noise_level is not None and "noise_level" not in extras:
            takers = [k for k in DECODER_CLASSES if "noise_level" in decoder_class(k).call_options]
            raise ConfigError(
                f"{names['noise_level']} applies to the {' and '.join(takers)} decoder only, not {kind}; leave it out."
            )
        kwargs = {"steps": self.steps, "guidance": self.guidance, "batch_size": self.batch_size}
        kwargs |= {"height": self.height, "width": self.width}
        return kwargs | self._extras(extras)

    def record(self, decoder: Any, kind: str) -> dict[str, Any]:
        """The values actually used, for the provenance record."""
        out = {
            "steps": self.steps or decoder.default_steps,
            "guidance": decoder.default_guidance if self.guidance is None else self.guidance,
        }
        return out | self._extras(decoder_class(kind).call_options)

    def _extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        """The decoder's own options: the value given here, else the decoder's default."""
        return {k: default if getattr(self, k, None) is None else getattr(self, k) for k, default in extras.items()}


def embedding_report(
    raw: dict[str, torch.Tensor], direction: torch.Tensor, z: torch.Tensor, stats: EmbeddingStats
) -> dict[str, Any]:
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
    raw: dict[str, torch.Tensor], weights: dict[str, float], mode: str, stats: EmbeddingStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit direction, calibrated embedding) of the blend: directions first, then the decoder's scale."""
    direction = blend(raw, weights, mode)
    return direction, rescale(direction, stats)


def interpolated(
    a: torch.Tensor, b: torch.Tensor, frames: int, mode: str, stats: EmbeddingStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit directions, calibrated embeddings) of ``frames`` points along the arc from ``a`` to ``b``."""
    directions = interpolate(a, b, steps=frames, mode=mode)
    return directions, rescale(directions, stats)


def _label(kind: str, value: Any) -> str:
    """How an input is named in records: text as it is, a file path resolved, an in-memory object by its type."""
    if kind == "text":
        return str(value)
    if isinstance(value, str | os.PathLike):
        return str(Path(value).resolve())
    if isinstance(value, Image.Image):
        return f"<PIL image {value.mode} {value.size[0]}x{value.size[1]}>"
    if isinstance(value, tuple) and len(value) == 2:
        return f"<waveform at {value[1]} Hz>"
    return f"<{type(value).__name__}>"


def _given(text: str | None, audio: Any, image: Any) -> dict[str, Any]:
    """The inputs that were given, in the order text, audio, image (at least one; text not empty)."""
    given = {k: v for k, v in (("text", text), ("audio", audio), ("image", image)) if v is not None}
    if not given:
        raise ConfigError("no input given: pass at least one of text=, audio= or image=.")
    if isinstance(text, str) and not text.strip():
        raise ConfigError("text is empty; give a description such as text='a dog barking in the rain'.")
    return given


class GenAlignPipeline:
    """Images from text, audio, an image or a blend of them, through the space's unCLIP decoder.

    Build it with :meth:`from_pretrained`; call it for images (:meth:`__call__`), an interpolation strip
    (:meth:`interpolate`) or embeddings (:meth:`embed`). A pipeline made with ``keep_encoders=False`` frees the
    towers before loading the decoder (the least memory for one call, what the CLI does) and serves one call.
    """

    def __init__(self, session: Session, *, keep_encoders: bool = True) -> None:
        self.session = session
        self.keep_encoders = keep_encoders
        self.argument_names: dict[str, str] = dict(session.names)  # how messages name the call's arguments
        self._decoder: DiffusersDecoder | None = session.load_decoder(keep_space=True) if keep_encoders else None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "mini",
        *,
        decoder: str | None = None,
        modalities: list[str] | None = None,
        weights_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offload: bool = False,
        attention_slicing: bool = False,
        progress: bool = True,
        keep_encoders: bool = True,
        stats: EmbeddingStats | None = None,
    ) -> GenAlignPipeline:
        """Load a preset (``"mini"``, ``"stable-unclip-h"``, ``"kandinsky-2.2"``) or a trained space directory,
        with its decoder and calibration.

        Args:
            name_or_path: a preset name or a space checkpoint directory (``gen-align train``'s ``OUT/space``).
            decoder: a decoder folder or hub id in place of the preset's.
            modalities: the towers to load (default: every input the space can encode).
            weights_dir: where local weights live (default ``$GEN_ALIGN_HOME``, then the hub).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (default: CUDA when present).
            dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype (default: fp16 on GPU, fp32 on CPU).
            offload: model CPU offload (CUDA only). attention_slicing: sliced attention (less GPU memory).
            progress: show the decoder's progress bar.
            keep_encoders: keep the towers loaded beside the decoder (False: one call, least memory).
            stats: a calibration (the decoder's mean embedding norm) in place of the space's or the preset's.

        Returns:
            the pipeline, ready to call.

        Raises:
            WeightsNotFoundError: weights that are neither local nor reachable (the message says where to get them).
            ConfigError: an unknown preset, or a space with no decoder.
        """
        source = os.fspath(name_or_path)
        dtype_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, dtype)
        config = AlignedSpace.from_pretrained(source, modalities=[]).config
        available = [
            k for k in CONDITION_KINDS if k in config["towers"] and (k != "audio" or "audio" in config["heads"])
        ]
        kinds = available if modalities is None else list(modalities)
        unknown = sorted(set(kinds) - set(available))
        if unknown:
            raise ConfigError(f"the space {source} cannot encode {unknown}; it takes {available}.")
        is_dir = os.path.isdir(source)
        options = RuntimeOptions(
            preset=None if is_dir else source,
            space=source if is_dir else None,
            decoder=decoder,
            weights_dir=None if weights_dir is None else os.fspath(weights_dir),
            device=None if device is None else str(device),
            dtype=dtype_name,
            offload=offload,
            attention_slicing=attention_slicing,
            progress=progress,
            stats=stats,
        )
        return cls(Session(options, kinds), keep_encoders=keep_encoders)

    # ------------------------------------------------------------------------------------------ parts
    @property
    def space(self) -> AlignedSpace:
        if self.session.space is None:
            raise ConfigError(
                "this pipeline was built with keep_encoders=False and has decoded once, which freed its encoders; "
                "build it with keep_encoders=True to call it again."
            )
        return self.session.space

    @property
    def decoder(self) -> DiffusersDecoder:
        """The decoder, loaded on first use when the encoders are freed first."""
        if self._decoder is None:
            self._decoder = self.session.load_decoder(keep_space=False)
        return self._decoder

    @property
    def stats(self) -> EmbeddingStats:
        """The decoder's embedding-norm calibration every condition is rescaled to."""
        return self.session.stats

    @property
    def modalities(self) -> list[str]:
        return [k for k in CONDITION_KINDS if self.session.space is not None and k in self.session.space.towers]

    # ---------------------------------------------------------------------------------------- encoding
    def embed(self, text: str | None = None, audio: Any = None, image: Any = None) -> dict[str, torch.Tensor]:
        """Raw embeddings ``{kind: (1, d)}`` of the given inputs (before blending and calibration).

        Args:
            text: a prompt. audio: a file path or ``(waveform, sample_rate)``. image: a file path or PIL image.

        Raises:
            ConfigError: no input, empty text, an input kind the space cannot encode, a decoder/space mismatch.
            InputFileError: an unreadable file. EmbeddingError: a NaN/inf embedding.
        """
        given = _given(text, audio, image)
        self.space  # noqa: B018 - a one-call pipeline that has decoded says so here
        return {kind: self.session.encode_value(kind, value, _label(kind, value)) for kind, value in given.items()}

    def decode(self, embeds: torch.Tensor, *, seed: int | list[int] = 0, **sampling: Any) -> list[Image.Image]:
        """Images of ``(B, d)`` embeddings or directions, each rescaled to the decoder's calibrated norm first.

        Args:
            embeds: one row per image (e.g. blends of many items, as the FID harness makes).
            seed: the first seed (row ``i`` gets ``seed + i``) or one seed per row.
            sampling: ``steps``, ``guidance``, ``noise_level``, ``batch_size``, ``height``, ``width``.

        Returns:
            the PIL images, in row order.
        """
        options = self._options(seed if isinstance(seed, int) else 0, sampling)
        return self.decoder(
            rescale(embeds, self.stats), seed=seed, **options.call_kwargs(self.session.info.kind, self.argument_names)
        )

    def sampling_record(self, **sampling: Any) -> dict[str, Any]:
        """The steps and guidance (and noise level) a call with ``sampling`` uses, for provenance records."""
        return self._options(0, sampling).record(self.decoder, self.session.info.kind)

    def _warnings(self, prompts: list[Any]) -> dict[str, list[str]]:
        """``{"warnings": [...]}`` for the record when a prompt will not steer the image (none of its words is one
        the space's text tower learned), else nothing."""
        warnings = [w for w in (self.space.prompt_warning(p) for p in prompts if isinstance(p, str)) if w]
        return {"warnings": warnings} if warnings else {}

    def _options(self, seed: int, sampling: Mapping[str, Any]) -> DecodeOptions:
        unknown = sorted(set(sampling) - set(SAMPLING_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown sampling options {unknown}; use {', '.join(SAMPLING_OPTIONS)}.")
        options = replace(DecodeOptions(seed=seed), **sampling)
        options.check(self.argument_names)
        return options

    # --------------------------------------------------------------------------------------- generation
    def __call__(
        self,
        text: str | None = None,
        audio: Any = None,
        image: Any = None,
        *,
        weights: Mapping[str, float] | None = None,
        mode: str = "slerp",
        num_images: int = 4,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        noise_level: int | None = None,
        batch_size: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> GenAlignOutput:
        """``num_images`` images of the blend of the given inputs (image ``i`` uses seed ``seed + i``).

        Args:
            text, audio, image: the inputs, as in :meth:`embed` (at least one).
            weights: blend weight per input kind (default equal), e.g. ``{"text": 0.7, "audio": 0.3}``.
            mode: ``"slerp"`` (weighted mean on the sphere) or ``"lerp"`` (normalised weighted sum).
            num_images, seed: how many images, and the first seed.
            steps, guidance: denoising steps and classifier-free guidance (default: the decoder's).
            noise_level: Stable UnCLIP's embedding noise level 0..999. batch_size: images per decoder call.
            height, width: output size (default: the decoder's own).

        Returns:
            :class:`GenAlignOutput` with the PIL images and the record (inputs, weights, sampling, norms).
        """
        names = self.argument_names
        choice(mode, names["mode"], MODES)
        num_images = integer(num_images, names["num_images"], low=1)
        decode = DecodeOptions(seed, steps, guidance, noise_level, batch_size, height, width)
        decode.check(names)
        given = _given(text, audio, image)
        blend_weights = validate_weights(weights, list(given))
        call_kwargs = decode.call_kwargs(self.session.info.kind, names)
        raw = self.embed(text, audio, image)
        warnings = self._warnings([text])  # before decoding: a one-call pipeline frees its encoders then
        direction, z = blended(raw, blend_weights, mode, self.stats)
        images = self.decoder(z.expand(num_images, -1), seed=seed, **call_kwargs)
        record = {
            "library_version": __version__,
            **self.session.describe(),
            "inputs": {k: _label(k, v) for k, v in given.items()},
            "weights": blend_weights,
            "mode": mode,
            **decode.record(self.decoder, self.session.info.kind),
            "size": list(images[0].size),
            "embedding": embedding_report(raw, direction, z, self.stats),
            **warnings,
        }
        return GenAlignOutput(images=images, record=record)

    def interpolate(
        self,
        start: Mapping[str, Any],
        end: Mapping[str, Any],
        *,
        frames: int = 8,
        mode: str = "slerp",
        seed: int = 0,
        **sampling: Any,
    ) -> GenAlignOutput:
        """``frames`` images along the arc from ``start`` to ``end`` (endpoints included), one seed for all.

        Args:
            start, end: one input each, e.g. ``{"text": "a dog"}`` and ``{"audio": "bark.wav"}``.
            frames: number of images (≥ 2). mode: ``"slerp"`` or ``"lerp"``. seed: the seed of every frame.
            sampling: ``steps``, ``guidance``, ``noise_level``, ``batch_size``, ``height``, ``width``.

        Returns:
            :class:`GenAlignOutput`; its record holds the positions ``t`` and the embedding norms.
        """
        names = self.argument_names
        choice(mode, names["mode"], MODES)
        frames = integer(frames, names["frames"], low=2, hint="(the two endpoints are always included)")
        decode = self._options(seed, sampling)
        call_kwargs = decode.call_kwargs(self.session.info.kind, names)
        endpoints = []
        for name, spec in (("start", start), ("end", end)):
            if not isinstance(spec, Mapping) or len(spec) != 1:
                raise ConfigError(f"{name} must be one input such as {{'text': 'a dog'}}, got {spec!r}.")
            ((kind, value),) = spec.items()
            if kind not in CONDITION_KINDS:
                raise ConfigError(f"{name}: unknown input kind {kind!r}; use one of {CONDITION_KINDS}.")
            endpoints.append((kind, value, self.embed(**{kind: value})[kind]))
        (ka, va, a), (kb, vb, b) = endpoints
        warnings = self._warnings([v for k, v in ((ka, va), (kb, vb)) if k == "text"])
        directions, z = interpolated(a, b, frames, mode, self.stats)
        images = self.decoder(z, seed=[seed] * frames, **call_kwargs)
        record = {
            "library_version": __version__,
            **self.session.describe(),
            "start": {ka: _label(ka, va)},
            "end": {kb: _label(kb, vb)},
            "frames": frames,
            "t": [i / (frames - 1) for i in range(frames)],
            "mode": mode,
            "seed": seed,
            **decode.record(self.decoder, self.session.info.kind),
            "size": list(images[0].size),
            "embedding": embedding_report({"start": a, "end": b}, directions, z, self.stats),
            **warnings,
        }
        return GenAlignOutput(images=images, record=record)
