"""The decoder contract and what the unCLIP adapters share: statistics, device/dtype, loading, batching, seeds.

A decoder exposes ``embedding_dim``, the embedding statistics it was trained on (``stats``), and
``__call__(embeds, *, seed, steps, guidance, …) -> list[PIL.Image]``. ``embeds`` are ``(B, d)`` embeddings at
the decoder's own scale (blend directions, then :func:`gen_align.pipelines.calibration.rescale`).

Seeds: image ``i`` of a call is drawn with its own CPU ``torch.Generator`` seeded ``seed[i]`` (an int seed
``s`` means ``s, s+1, …``), so the same inputs and seed give the same image whatever the device, the batch
size or the image's position in the batch (up to the float differences of batched kernels).
"""

from __future__ import annotations

import abc
import importlib
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from PIL import Image

from gen_align.checks import integer, non_negative
from gen_align.errors import ConfigError, DecoderOutOfMemoryError, EmbeddingError, GenAlignError, InputFileError
from gen_align.weights import load_from_source

from .arguments import ARGUMENT_NAMES, memory_hint

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PIPELINE_KINDS = {
    "StableUnCLIPImg2ImgPipeline": "stable-unclip",
    "KandinskyV22Pipeline": "kandinsky-2.2",
    "MiniUnCLIPPipeline": "mini",
}


@dataclass(frozen=True)
class EmbeddingStats:
    """Norm statistics of a decoder's own image embeddings (the scale its conditioning was trained on)."""

    mean_norm: float
    std_norm: float | None = None
    count: int | None = None
    embedding_dim: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.mean_norm, (int, float)) and math.isfinite(self.mean_norm) and self.mean_norm > 0):
            raise ConfigError(
                f"embedding statistics need a positive finite mean norm, got {self.mean_norm!r} ({self.source}); "
                "re-run `gen-align calibrate`."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Decoder(Protocol):
    """What generation needs from a decoder."""

    embedding_dim: int
    stats: EmbeddingStats | None

    def __call__(
        self, embeds: torch.Tensor, *, seed: int | Sequence[int] = 0, steps: int | None = None, **kwargs: Any
    ) -> list[Image.Image]: ...


# ---------------------------------------------------------------------------------------- device / dtype
def resolve_device(device: str | torch.device | None, names: Mapping[str, str] = ARGUMENT_NAMES) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU. An unavailable CUDA device is a ConfigError (its
    message names the arguments as ``names`` does)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{names['device']} {device} was asked for but this torch ({torch.__version__}) sees no CUDA GPU; "
            f"use {names['device']} cpu (or leave {names['device']} out to pick the GPU when there is one)."
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported; use cpu or cuda.")
    return device


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, names: Mapping[str, str] = ARGUMENT_NAMES
) -> torch.dtype:
    """``None``: fp16 on CUDA, fp32 on the CPU. fp16 asked for on the CPU falls back to fp32 (with a warning)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of {tuple(DTYPES)}.")
        dtype = DTYPES[dtype]
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"unsupported dtype {dtype}; choose one of {tuple(DTYPES)}.")
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 is not supported well on the CPU; using fp32 instead.", UserWarning, stacklevel=2)
        return torch.float32
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"this GPU has no bfloat16 support; use {names['dtype']} fp16.")
    return dtype


def make_generators(seed: int | Sequence[int], count: int) -> list[torch.Generator]:
    """One CPU generator per image: ``seed + i`` for an int seed, else the given per-image seeds."""
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = [integer(s, "seed", low=0) for s in seed]
        if len(seeds) != count:
            raise ConfigError(f"got {len(seeds)} seeds for {count} embeddings; give one per embedding or one int.")
    else:
        first = integer(seed, "seed", low=0)
        seeds = [first + i for i in range(count)]
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class DecoderInfo:
    """What a decoder folder/hub repo is, read from its JSON configs only (no weights loaded)."""

    kind: str
    embedding_dim: int
    location: str
    source: str


def _local_or_hub(read: Callable[[str], Any], what: str) -> Callable[..., Any]:
    """Wrap a loader so that failures on an existing local folder become InputFileError (hub misses stay OSError,
    which :func:`load_from_source` turns into a WeightsNotFoundError naming every place looked at)."""

    def loader(location: str, **kwargs: Any) -> Any:
        try:
            return read(location, **kwargs)
        except GenAlignError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, json.JSONDecodeError) as err:
            if not Path(location).exists():
                raise
            raise InputFileError(
                f"{what} at {location} could not be loaded ({type(err).__name__}: {err}). The folder is incomplete "
                "or its weights/configs do not parse; download it again (hf download ... --local-dir)."
            ) from err

    return loader


def inspect_decoder(
    source: str, *, weights_dir: str | None = None, names: Mapping[str, str] = ARGUMENT_NAMES
) -> DecoderInfo:
    """Kind and embedding dimension of the decoder at ``source`` (folder, ``$GEN_ALIGN_HOME/<id>`` or hub id)."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    def read(location: str, **_: Any) -> DecoderInfo:
        name = DiffusionPipeline.load_config(location).get("_class_name")
        if name not in PIPELINE_KINDS:
            raise ConfigError(
                f"{location} holds a {name} pipeline; gen-align decodes embeddings with "
                f"{' or '.join(PIPELINE_KINDS)} ({names['decoder']} stabilityai/stable-diffusion-2-1-unclip or "
                "kandinsky-community/kandinsky-2-2-decoder)."
            )
        unet = UNet2DConditionModel.load_config(location, subfolder="unet")
        kind = PIPELINE_KINDS[name]
        return DecoderInfo(
            kind=kind, embedding_dim=decoder_class(kind).unet_embedding_dim(unet), location=location, source=source
        )

    return load_from_source(
        _local_or_hub(read, f"decoder {source}"), source, what=f"decoder {source}", weights_dir=weights_dir
    )


DECODER_CLASSES = {
    "stable-unclip": "gen_align.pipelines.stable_unclip:StableUnCLIPDecoder",
    "kandinsky-2.2": "gen_align.pipelines.kandinsky:KandinskyDecoder",
    "mini": "gen_align.pipelines.mini:MiniDecoder",
}
"""The adapter class of each decoder kind, by import path (as diffusers names pipeline classes): this base module
never imports its subclasses."""


def decoder_class(kind: str) -> type[DiffusersDecoder]:
    """The adapter class registered for ``kind`` in :data:`DECODER_CLASSES`."""
    if kind not in DECODER_CLASSES:
        raise ConfigError(f"no decoder adapter for kind {kind!r}; known kinds: {sorted(DECODER_CLASSES)}.")
    module, _, name = DECODER_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def load_decoder(source: str | DecoderInfo, *, weights_dir: str | None = None, **kwargs: Any) -> DiffusersDecoder:
    """The adapter for the pipeline at ``source`` (Stable UnCLIP, Kandinsky 2.2 or mini); ``kwargs`` go to its
    ``from_pretrained`` (device, dtype, offload, attention_slicing, stats, names, …)."""
    names = kwargs.get("names", ARGUMENT_NAMES)
    info = source if isinstance(source, DecoderInfo) else inspect_decoder(source, weights_dir=weights_dir, names=names)
    return decoder_class(info.kind).from_pretrained(info.location, weights_dir=weights_dir, **kwargs)


class DiffusersDecoder(abc.ABC):
    """A diffusers unCLIP pipeline behind the :class:`Decoder` contract; subclasses name the pipeline's own inputs
    (``_pipeline_inputs``)."""

    pipeline_class: ClassVar[Any]
    kind: ClassVar[str]
    default_guidance: ClassVar[float]
    default_steps: ClassVar[int] = 25
    call_options: ClassVar[dict[str, Any]] = {}
    """Extra call arguments this decoder takes, with their defaults (Stable UnCLIP: ``{"noise_level": 0}``)."""
    wants_image_tower: ClassVar[bool] = False
    """Whether the space's image tower gives this decoder something when loaded beside it (see :meth:`space_kwargs`)."""

    @classmethod
    def unet_embedding_dim(cls, unet: dict[str, Any]) -> int:
        """The image-embedding dimension this decoder's UNet config implies (its added-condition projection input)."""
        return int(unet["projection_class_embeddings_input_dim"])

    @classmethod
    def space_kwargs(cls, space: Any) -> dict[str, Any]:
        """What this adapter takes from the aligned ``space`` it is loaded beside (``from_pretrained`` keyword
        arguments); nothing by default. Decoder specifics stay here, not in the callers."""
        return {}

    def __init__(
        self,
        pipe: Any,
        *,
        stats: EmbeddingStats | None = None,
        device: str | torch.device | None = None,
        offload: bool = False,
        attention_slicing: bool = False,
        progress: bool = True,
        names: Mapping[str, str] = ARGUMENT_NAMES,
    ) -> None:
        self.pipe = pipe
        self.stats = stats
        self.names = names  # how messages name the arguments (a command passes its flags)
        self.device = resolve_device(device, names)
        if offload and self.device.type != "cuda":
            raise ConfigError(f"{names['offload']} (model CPU offload) needs a CUDA GPU; leave it out on the CPU.")
        try:
            if offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
        except torch.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise DecoderOutOfMemoryError(
                f"the GPU ran out of memory loading the {self.kind} decoder; {memory_hint(names)}."
            ) from err
        if attention_slicing:
            pipe.enable_attention_slicing()
        pipe.set_progress_bar_config(disable=not progress, desc=f"{self.kind} denoising")

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        weights_dir: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> DiffusersDecoder:
        """Load the pipeline from a folder, ``$GEN_ALIGN_HOME/<id>`` or the hub, in ``dtype`` on ``device``."""
        names = kwargs.get("names", ARGUMENT_NAMES)
        torch_dtype = resolve_dtype(dtype, resolve_device(device, names), names)
        what = f"{cls.kind} decoder {source}"
        with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype; older ones only know torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = load_from_source(
                _local_or_hub(cls.pipeline_class.from_pretrained, what),
                source,
                what=what,
                weights_dir=weights_dir,
                torch_dtype=torch_dtype,
            )
        return cls(pipe, device=device, **kwargs)

    # ------------------------------------------------------------------------------------- properties
    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Dimension of the image embeddings the decoder takes."""

    @property
    @abc.abstractmethod
    def native_size(self) -> int:
        """Default output side in pixels (the UNet sample size times the autoencoder's scale factor)."""

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def execution_device(self) -> torch.device:
        return self.pipe._execution_device

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for sidecars."""
        return {"kind": self.kind, "embedding_dim": self.embedding_dim, "dtype": DTYPE_NAMES.get(self.dtype)}

    # ------------------------------------------------------------------------------------------- calls
    def check_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds`` as a finite float ``(B, embedding_dim)`` tensor, or an EmbeddingError saying what is wrong."""
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
            raise EmbeddingError(f"decoder input must be a float tensor (B, d), got {type(embeds).__name__}.")
        if embeds.ndim == 1:
            embeds = embeds.unsqueeze(0)
        if embeds.ndim != 2 or embeds.shape[0] == 0:
            raise EmbeddingError(f"decoder input must have shape (B, d), got {tuple(embeds.shape)}.")
        if embeds.shape[1] != self.embedding_dim:
            raise EmbeddingError(
                f"the {self.kind} decoder takes {self.embedding_dim}-d image embeddings but got {embeds.shape[1]}-d "
                f"ones; use the space made for this decoder (its preset) or pass the matching {self.names['decoder']}."
            )
        if not bool(torch.isfinite(embeds).all()):
            raise EmbeddingError(
                "the embeddings contain NaN/inf values; the encoder probably overflowed — encode in float32."
            )
        return embeds

    def __call__(
        self,
        embeds: torch.Tensor,
        *,
        seed: int | Sequence[int] = 0,
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int | None = None,
        height: int | None = None,
        width: int | None = None,
        **kwargs: Any,
    ) -> list[Image.Image]:
        """Images for ``embeds (B, d)``: ``steps`` denoising steps, classifier-free ``guidance`` (default: the
        pipeline's), ``batch_size`` images per pipeline call (default: all), one seed per image."""
        embeds = self.check_embeds(embeds)
        generators = make_generators(seed, len(embeds))
        names = self.names
        steps = integer(self.default_steps if steps is None else steps, names["steps"], low=1)
        guidance = non_negative(self.default_guidance if guidance is None else guidance, names["guidance"])
        batch = integer(batch_size or len(embeds), names["batch_size"], low=1)
        height, width = (self._side(v, name) for v, name in ((height, "height"), (width, "width")))
        images: list[Image.Image] = []
        for start in range(0, len(embeds), batch):
            chunk = embeds[start : start + batch].to(self.execution_device, self.dtype)
            try:
                images += self._generate(
                    chunk, generators[start : start + batch], steps, guidance, height, width, **kwargs
                )
            except torch.OutOfMemoryError as err:
                torch.cuda.empty_cache()
                raise DecoderOutOfMemoryError(
                    f"the GPU ran out of memory generating {len(chunk)} {width}x{height} image(s) with the "
                    f"{self.kind} decoder; {memory_hint(self.names)}."
                ) from err
        return images

    def _side(self, value: int | None, name: str) -> int:
        value = integer(self.native_size if value is None else value, self.names[name], low=8)
        if value % 8:
            raise ConfigError(f"{self.names[name]} must be a multiple of 8 (the autoencoder's grid), got {value}.")
        return value

    def _generate(
        self,
        embeds: torch.Tensor,
        generators: list[torch.Generator],
        steps: int,
        guidance: float,
        height: int,
        width: int,
        **options: Any,
    ) -> list[Image.Image]:
        """Run the pipeline on calibrated embeddings, one generator per image: the sampling arguments every
        diffusers pipeline takes, plus the adapter's own inputs (:meth:`_pipeline_inputs`)."""
        unknown = sorted(set(options) - set(self.call_options))
        if unknown:
            raise ConfigError(f"the {self.kind} decoder got unknown options {unknown}.")
        out = self.pipe(
            **self._pipeline_inputs(embeds, height=height, width=width, **options),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="pil",
        )
        return list(out.images)

    @abc.abstractmethod
    def _pipeline_inputs(self, embeds: torch.Tensor, *, height: int, width: int, **options: Any) -> dict[str, Any]:
        """The pipeline's own keyword arguments for calibrated ``embeds``: the embeddings, the output size where
        the pipeline takes one, and what else it needs (a negative, a noise level); ``options`` are the adapter's
        :attr:`call_options`."""
