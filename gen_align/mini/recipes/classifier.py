"""The mini world's attribute classifier: a small CNN predicting (shape, colour, size, background) of an image.

Two roles: its penultimate features are the FID feature network of the mini world (``forward`` maps a uint8
``(B, 3, H, W)`` batch to ``(B, feature_dim)`` features, the :class:`gen_align.eval.features.FeatureStatistics`
extractor contract), and its predictions give the attribute accuracy of generated images
(:func:`attribute_accuracy`). ``--extractor gen_align.mini.recipes.classifier:shipped_extractor`` loads the
shipped copy.

Checkpoint directory (``save_pretrained`` / ``from_pretrained``)::

    config.json         {"format": "gen-align-mini-classifier", "config": {...}, "attributes": {...}, ...}
    model.safetensors   the state dict
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gen_align.checks import integer
from gen_align.errors import CheckpointError, ConfigError, InputDataError, WeightsNotFoundError
from gen_align.mini.recipes.loop import FitSettings, fit
from gen_align.mini.world.attributes import ATTRIBUTES, NAMES, NUM_LABELS, index_tensor, split_logits
from gen_align.module_checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_module_config, read_module_weights, save_module

__all__ = [
    "AttributeClassifierConfig",
    "AttributeClassifier",
    "train_classifier",
    "attribute_accuracy",
    "shipped_extractor",
]

FORMAT = "gen-align-mini-classifier"
_FIX = "train one with train_classifier(...) and write it with classifier.save_pretrained(directory)"
SHIFT = 2  # training translations: ±SHIFT pixels, edge padded
_MEAN, _STD = 0.5, 0.25  # input normalisation of [0, 1] pixels


@dataclass(frozen=True)
class AttributeClassifierConfig:
    """Channel width of each conv stage (two 3×3 convs each, 2× max-pool between stages), feature size, input size."""

    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    image_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Sequence) or not self.widths:
            raise ConfigError(
                f"widths must be a non-empty list of channel counts like (16, 32, 64), got {self.widths!r}."
            )
        object.__setattr__(self, "widths", tuple(integer(w, "widths[i]") for w in self.widths))
        integer(self.feature_dim, "feature_dim")
        low = 2 ** (len(self.widths) - 1)
        integer(self.image_size, "image_size", low=low, hint=f"({len(self.widths)} stages halve it {low}× in all)")


class AttributeClassifier(nn.Module):
    """Small CNN: conv stages → global max pool → Linear + SiLU (the features) → one head over all attributes.

    ``forward(images)`` returns the ``(B, feature_dim)`` features of a uint8 (or float in [0, 1]) ``(B, 3, H, W)``
    batch; other sizes are resized (bilinear, antialiased) to ``image_size``. Put it in eval mode for inference.
    """

    def __init__(self, config: AttributeClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AttributeClassifierConfig()
        self.num_features = self.config.feature_dim
        self.input_size = self.config.image_size
        layers: list[nn.Module] = []
        channels = 3
        for stage, width in enumerate(self.config.widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [*_conv(channels, width), *_conv(width, width)]
            channels = width
        self.trunk = nn.Sequential(*layers)
        # SiLU rather than ReLU: no dead (constant) feature dimensions, so FID covariances stay full rank
        self.project = nn.Sequential(nn.Linear(channels, self.config.feature_dim), nn.SiLU())
        self.head = nn.Linear(self.config.feature_dim, NUM_LABELS)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, feature_dim)`` penultimate features (the FID extractor output)."""
        return self.features(self.prepare(images))

    def logits(self, images: Tensor) -> Tensor:
        """``(B, NUM_LABELS)`` logits, one block per attribute (see :func:`split_logits`)."""
        return self.head(self(images))

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """``{attribute: (B,) long}`` predicted value indices (into :data:`ATTRIBUTES`)."""
        return {name: block.argmax(dim=-1) for name, block in split_logits(self.logits(images)).items()}

    def prepare(self, images: Tensor) -> Tensor:
        """Checked, resized and normalised float input of the trunk."""
        x = check_images(images).to(self._device())
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - _MEAN) / _STD

    def features(self, x: Tensor) -> Tensor:
        """Features of an already :meth:`prepare`-d batch."""
        # global max pooling: "is there a corner / star tip / cross arm anywhere" learns shapes far faster than
        # average pooling (0.9 vs 0.4 held-out shape accuracy after 250 steps on 400 images)
        return self.project(self.trunk(x).amax(dim=(2, 3)))

    def _device(self) -> torch.device:
        return self.head.weight.device

    # ------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if missing)."""
        meta = {
            "format": FORMAT,
            "config": dataclasses.asdict(self.config),
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        }
        return save_module(directory, self, meta, training=getattr(self, "training_record", None))

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device | None = None
    ) -> AttributeClassifier:
        """Load a directory written by :meth:`save_pretrained` (eval mode)."""
        directory = Path(directory)
        model = cls(_read_config(directory))
        model.load_state_dict(read_module_weights(directory, model, what="attribute classifier", fix=_FIX))
        model.eval()
        return model.to(device) if device is not None else model


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def check_images(images: object, name: str = "images") -> Tensor:
    """``images`` if it is a uint8 (or finite float in [0, 1]) ``(B, 3, H, W)`` tensor, else InputDataError."""
    if not isinstance(images, Tensor):
        raise InputDataError(
            f"{name} must be a torch tensor (B, 3, H, W), got {type(images).__name__}; "
            "for PIL images or paths use attribute_accuracy or FeatureStatistics, which decode them."
        )
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise InputDataError(
            f"{name} must have shape (B, 3, H, W) with B >= 1, got {tuple(images.shape)}; "
            "add a batch axis with images[None] or move channels first with images.permute(0, 3, 1, 2)."
        )
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise InputDataError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}.")
    if not bool(torch.isfinite(images).all()):
        raise InputDataError(f"{name} contain NaN/inf values; check how the images were produced.")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise InputDataError(
            f"float {name} must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
            "divide uint8-range floats by 255 or pass a uint8 tensor."
        )
    return images


def _read_config(directory: Path) -> AttributeClassifierConfig:
    raw = read_module_config(directory, fmt=FORMAT, what="mini attribute classifier", fix=_FIX)
    path = directory / CONFIG_NAME
    saved = raw.get("attributes")
    if saved != {k: list(v) for k, v in ATTRIBUTES.items()}:
        raise CheckpointError(
            f"{path} was trained on the attribute table {saved}, which differs from this version's {dict(ATTRIBUTES)}; "
            "retrain the classifier (gen-align mini train) with this version."
        )
    try:
        return AttributeClassifierConfig(**raw["config"])
    except (TypeError, ConfigError) as err:
        raise CheckpointError(
            f"{path}: invalid classifier config {raw['config']} ({err}); re-save it with this gen-align version."
        ) from err


# ---------------------------------------------------------------------------------------------- training
def train_classifier(
    images: Tensor,
    indices: Tensor,
    *,
    settings: FitSettings,
    config: AttributeClassifierConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    augment: bool = True,
) -> AttributeClassifier:
    """Train a classifier on uint8 ``(N, 3, S, S)`` images with ``(N, 4)`` attribute indices (columns in
    :data:`NAMES` order); the loss is the sum of the per-attribute cross-entropies. ``augment``: random ±2 px
    translations (edge padded), flips and 90° rotations — nothing that changes colour or size. Returns the trained
    model (its EMA copy when ``settings.ema_decay`` is set) in eval mode."""
    config = config if config is not None else AttributeClassifierConfig()
    _check_training_data(images, indices, config.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = AttributeClassifier(config)

    def loss_fn(net: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        x = images[batch].float() / 255.0
        if augment:
            x = augment_batch(x, generator)
        blocks = split_logits(net.head(net.features((x - _MEAN) / _STD)))
        return sum(F.cross_entropy(blocks[n], indices[batch, i]) for i, n in enumerate(NAMES))

    trained = fit(
        model,
        loss_fn,
        images.shape[0],
        settings,
        desc="mini classifier",
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    trained.training_record = {"settings": dataclasses.asdict(settings), "items": images.shape[0], "augment": augment}
    return trained


def _check_training_data(images: object, indices: object, size: int) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise InputDataError(f"training images must be a uint8 tensor (N, 3, {size}, {size}), got {got}.")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise InputDataError(
            f"training images must have shape (N, 3, {size}, {size}), got {tuple(images.shape)}; render them at "
            f"{size}×{size} or set AttributeClassifierConfig(image_size=...)."
        )
    if not isinstance(indices, Tensor) or indices.dtype != torch.long or indices.ndim != 2 or indices.shape[1] != 4:
        got = (tuple(indices.shape), indices.dtype) if isinstance(indices, Tensor) else type(indices).__name__
        raise InputDataError(
            f"indices must be an (N, 4) long tensor of attribute indices in {list(NAMES)} order, got {got}; "
            "build it with gen_align.mini.world.attributes.index_tensor(attribute_dicts)."
        )
    if indices.shape[0] != images.shape[0]:
        raise InputDataError(f"{images.shape[0]} images but {indices.shape[0]} index rows; give one row per image.")
    _check_index_range(indices)


def _check_index_range(indices: Tensor) -> None:
    for column, name in enumerate(NAMES):
        values = indices[:, column]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= len(ATTRIBUTES[name])):
            raise InputDataError(
                f"indices[:, {column}] ({name}) must lie in [0, {len(ATTRIBUTES[name]) - 1}] "
                f"(values {list(ATTRIBUTES[name])}), got values in [{int(values.min())}, {int(values.max())}]."
            )


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Attribute-preserving augmentation of a float ``(B, 3, S, S)`` batch: per image a random translation by up
    to ±:data:`SHIFT` px (edge padded), a horizontal flip and a 90° rotation."""
    b, _, h, w = x.shape
    padded = F.pad(x, (SHIFT,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * SHIFT + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    x = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    turns = torch.randint(0, 4, (b,), generator=generator)
    out = x.clone()
    for k in range(1, 4):
        mask = turns == k
        if bool(mask.any()):
            out[mask] = torch.rot90(x[mask], k, dims=(2, 3))
    return out


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def attribute_accuracy(
    classifier: AttributeClassifier,
    images: Any,
    labels: Tensor | np.ndarray | Sequence[Mapping[str, str]],
    batch_size: int = 256,
) -> dict[str, float]:
    """Accuracy of ``classifier`` on ``images`` (a uint8 ``(N, 3, H, W)`` tensor, or PIL images / paths) against
    ``labels`` (``(N, 4)`` attribute indices or a list of attribute dicts): ``{attribute: acc, "mean": mean of the
    four, "all_correct": fraction with all four right}``."""
    integer(batch_size, "batch_size")
    truth = _label_tensor(labels)
    batches = _image_batches(images, classifier.config.image_size, batch_size)
    hits = []
    for batch in batches:
        predicted = classifier.predict(batch)
        hits.append(torch.stack([predicted[n].cpu() for n in NAMES], dim=1))
    correct = torch.cat(hits) if hits else torch.empty(0, 4, dtype=torch.long)
    if correct.shape[0] != truth.shape[0]:
        raise InputDataError(f"{correct.shape[0]} images but {truth.shape[0]} labels; give one label per image.")
    correct = correct == truth
    result = {n: float(correct[:, i].float().mean()) for i, n in enumerate(NAMES)}
    result["mean"] = float(correct.float().mean())
    result["all_correct"] = float(correct.all(dim=1).float().mean())
    return result


def _label_tensor(labels: object) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if isinstance(labels, Tensor):
        if labels.ndim != 2 or labels.shape[1] != 4 or labels.is_floating_point() or labels.is_complex():
            raise InputDataError(
                f"labels must be (N, 4) integer attribute indices in {list(NAMES)} order, got "
                f"{tuple(labels.shape)} {labels.dtype}; or pass a list of attribute dicts."
            )
        labels = labels.long().cpu()
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        labels = index_tensor(list(labels))
    else:
        raise InputDataError(
            f"labels must be an (N, 4) index tensor or a list of attribute dicts, got {type(labels).__name__}."
        )
    if labels.shape[0] == 0:
        raise InputDataError("no labels given; pass one label per image.")
    _check_index_range(labels)
    return labels


def _image_batches(images: object, size: int, batch_size: int) -> list[Tensor]:
    if isinstance(images, Tensor):
        return list(check_images(images).split(batch_size))
    from gen_align.encoders.image_io import load_images

    if isinstance(images, np.ndarray):
        raise InputDataError(
            "got a NumPy array: pass a uint8 torch tensor (N, 3, H, W) (torch.from_numpy(a).permute(0, 3, 1, 2)) "
            "or a list of PIL images / paths."
        )
    sources = [images] if isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel") else images
    if not isinstance(sources, (list, tuple)):
        raise InputDataError(
            f"cannot read images from a {type(images).__name__}; pass a uint8 tensor or a list of PIL images / paths."
        )
    batches = []
    for start in range(0, len(sources), batch_size):
        pil = load_images(sources[start : start + batch_size], progress=False)
        batches.append(torch.cat([_pil_tensor(im, size) for im in pil]))
    return batches


def _pil_tensor(image: Any, size: int) -> Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) == (size, size):
        return x
    resized = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- shipped
def shipped_extractor() -> AttributeClassifier:
    """The shipped classifier (``gen_align.mini.shipped.MINI_CLASSIFIER``), for ``--extractor
    gen_align.mini.recipes.classifier:shipped_extractor``."""
    from gen_align.mini import shipped

    directory = Path(shipped.MINI_CLASSIFIER)  # read at call time (tests and tools may repoint it)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise WeightsNotFoundError(
            f"no shipped mini attribute classifier in {directory}; reinstall gen-align (the wheel ships it) "
            "or train and ship one with `gen-align mini train --ship`."
        )
    return AttributeClassifier.from_pretrained(directory)
