"""Feature statistics for FID: a torchmetrics-style accumulator of (μ, Σ, n) in float64 with a pluggable extractor.

Input to :meth:`FeatureStatistics.update`:

* precomputed features — a floating (B, F) tensor or NumPy array;
* images — a uint8 tensor (B, 3, H, W) in [0, 255], passed to the extractor as it is (the default Inception
  resizes to 299×299 itself, with ``antialias`` deciding how); or PIL images / file paths / (H, W, 3) uint8
  arrays (one or a list), decoded with :func:`gen_align.encoders.image_io.load_images` and resized with PIL
  (``resize`` filter) to ``image_size`` × ``image_size`` before batching.

The states (feature sum, sum of outer products, count; float64) are summed across processes when
``torch.distributed`` is initialised (accelerate included), exactly like torchmetrics' ``FrechetInceptionDistance``.
As there, Σ = (Σ x xᵀ − n μ μᵀ) / (n − 1) loses about log10(μ²/σ²) digits of float64 to cancellation: nothing for
Inception-like features (μ² ≈ σ²); for features with a large common offset, use
:func:`gen_align.eval.fid.feature_stats` on the stacked features, which centres first.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchmetrics import Metric
from tqdm.auto import tqdm

from gen_align.checks import choice, integer
from gen_align.encoders.image_io import load_images
from gen_align.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingError,
    GenAlignError,
    InputDataError,
    WeightsNotFoundError,
)
from gen_align.weights import weights_home

from .fid import FeatureStats

INCEPTION = "inception-v3"
INCEPTION_FEATURES = 2048
INCEPTION_SIZE = 299
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
RESIZE_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


class FeatureStatistics(Metric):
    """Accumulates the mean and covariance of image features in float64; ``compute()`` → :class:`FeatureStats`.

    ``extractor``: ``"inception-v3"`` (default: torchmetrics' / torch-fidelity's FID Inception, 2048-d, loaded on
    the first image batch), any ``nn.Module`` mapping a (B, 3, H, W) batch — uint8, or float in [0, 1] with
    ``float_input=True`` — to (B, F) features (put in eval mode here), or None for precomputed features only.
    ``num_features``: F; read from ``extractor.num_features`` or a dummy forward when not given.
    ``antialias``: the default Inception's internal resize to 299 (True: torchmetrics' default, antialiased
    bilinear; False: torch-fidelity's TF1-compatible bilinear of the original TF FID; True changes values vs
    pytorch-fid / clean-fid). ``image_size`` / ``resize``: PIL
    inputs are resized to this square size with this PIL filter (default: the extractor's ``input_size`` attribute,
    299 for Inception; None keeps sizes, which must then agree). ``weights_path``: a local copy of the Inception
    weights. Other keyword arguments go to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``, ``process_group``).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    feature_sum: torch.Tensor
    outer_sum: torch.Tensor
    num_samples: torch.Tensor

    def __init__(
        self,
        extractor: nn.Module | str | None = INCEPTION,
        *,
        num_features: int | None = None,
        antialias: bool = True,
        image_size: int | None = None,
        resize: str = "bicubic",
        float_input: bool = False,
        batch_size: int = 64,
        weights_path: str | os.PathLike | None = None,
        extractor_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.resize = choice(resize, "resize", tuple(RESIZE_FILTERS))
        self.batch_size = integer(batch_size, "batch_size")
        self.float_input = bool(float_input)
        self.antialias = bool(antialias)
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.extractor: nn.Module | None = None
        self._weights_id: str | None = None
        if isinstance(extractor, str):
            choice(extractor, "extractor", (INCEPTION,))
            if num_features not in (None, INCEPTION_FEATURES):
                raise ConfigError(
                    f"the default Inception gives {INCEPTION_FEATURES}-d features, not num_features={num_features}; "
                    "pass your own extractor module for other dimensions."
                )
            if self.float_input:
                raise ConfigError("the default Inception takes uint8 images; drop float_input=True.")
            self.kind = INCEPTION
            self.extractor_name = extractor_name or "torch-fidelity/inception-v3-compat/2048"
            self.num_features = INCEPTION_FEATURES
            self.image_size = INCEPTION_SIZE if image_size is None else integer(image_size, "image_size")
        elif isinstance(extractor, nn.Module):
            self.kind = "module"
            self.extractor = extractor.eval()
            self.extractor_name = extractor_name or f"{type(extractor).__module__}.{type(extractor).__qualname__}"
            size = image_size if image_size is not None else getattr(extractor, "input_size", None)
            self.image_size = None if size is None else integer(size, "image_size")
            self.num_features = self._infer_num_features(extractor, num_features)
        elif extractor is None:
            if num_features is None:
                raise ConfigError("extractor=None (precomputed features) needs num_features=F.")
            self.kind = "features"
            self.extractor_name = extractor_name or "precomputed-features"
            self.num_features = integer(num_features, "num_features")
            self.image_size = None
        else:
            raise ConfigError(
                f"extractor must be 'inception-v3', an nn.Module or None, got {type(extractor).__name__}."
            )
        dim = self.num_features
        self.add_state("feature_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer_sum", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: Any) -> None:
        """Add a batch: (B, F) features, a uint8 (B, 3, H, W) tensor, or PIL images / paths (one or a list)."""
        for features in self._feature_batches(batch):
            self.feature_sum += features.sum(dim=0)
            self.outer_sum.addmm_(features.T, features)
            self.num_samples += features.shape[0]

    def compute(self) -> FeatureStats:
        """Mean, unbiased covariance (float64) and sample count of everything seen (synced across processes)."""
        n = int(self.num_samples)
        if n < 2:
            raise EmbeddingError(
                f"feature statistics need at least 2 samples, got {n}; call update() with more images first."
            )
        mu = self.feature_sum / n
        sigma = (self.outer_sum - n * torch.outer(mu, mu)) / (n - 1)
        return FeatureStats(mu, (sigma + sigma.T) * 0.5, n)

    def forward(self, batch: Any) -> None:
        """Same as :meth:`update` (a per-batch covariance is not meaningful, so nothing is returned)."""
        self.update(batch)

    def extract(self, batch: Any) -> torch.Tensor:
        """The float64 (B, F) features of ``batch`` without accumulating them."""
        return torch.cat(list(self._feature_batches(batch)))

    def fingerprint(self) -> dict[str, Any]:
        """What determines the features: extractor name and weights hash, and the preprocessing (cache keys)."""
        return {
            "extractor": {"name": self.extractor_name, "weights": self.weights_id(), "num_features": self.num_features},
            "preprocessing": {
                "image_size": self.image_size,
                "resize": f"pil-{self.resize}" if self.image_size is not None else None,
                "antialias": self.antialias if self.kind == INCEPTION else None,
                "input": "float[0,1]" if self.float_input else "uint8",
            },
        }

    def weights_id(self) -> str | None:
        """``sha256:<hash>`` of a custom extractor's state dict, or of an explicit Inception ``weights_path``; the
        release file name for the official Inception weights (known without loading them: a cache hit needs no
        weights)."""
        if self._weights_id is None:
            if self.kind == "module":
                self._weights_id = "sha256:" + state_dict_sha256(self.extractor)
            elif self.kind == INCEPTION:
                path = self._inception_weights_file() if self.weights_path is not None else None
                self._weights_id = INCEPTION_WEIGHTS_FILE if path is None else "sha256:" + _file_sha256(path)
        return self._weights_id

    # ------------------------------------------------------------------------------------------- internals

    def _feature_batches(self, batch: Any) -> Iterable[torch.Tensor]:
        if isinstance(batch, (torch.Tensor, np.ndarray)) and batch.ndim == 2:
            yield self._check_features(batch, "features")
            return
        if isinstance(batch, torch.Tensor):
            for chunk in _check_image_tensor(batch).split(self.batch_size):
                yield self._run_extractor(chunk)
            return
        if isinstance(batch, np.ndarray) and batch.ndim != 3:
            raise InputDataError(
                f"got a NumPy array of shape {batch.shape}: pass features as (B, F) floats, one image as (H, W, 3) "
                "uint8, or a batch as a uint8 torch tensor (B, 3, H, W) (torch.from_numpy(a).permute(0, 3, 1, 2))."
            )
        sources = [batch] if isinstance(batch, (str, os.PathLike, Image.Image, np.ndarray)) else batch
        if not isinstance(sources, (list, tuple)):
            raise InputDataError(
                f"cannot compute features from a {type(batch).__name__}; pass (B, F) features, a uint8 tensor "
                "(B, 3, H, W), or PIL images / image paths."
            )
        if not sources:
            raise InputDataError("no images given (empty list); pass at least one image.")
        if any(isinstance(s, torch.Tensor) for s in sources):
            raise InputDataError("got a list of tensors; stack them into one uint8 (B, 3, H, W) tensor instead.")
        starts = range(0, len(sources), self.batch_size)
        for start in tqdm(starts, desc="image features", unit="batch", disable=len(starts) <= 1):
            yield self._run_extractor(self._pil_batch(sources[start : start + self.batch_size]))

    def _pil_batch(self, sources: list) -> torch.Tensor:
        images = load_images(sources, progress=False)
        if self.image_size is not None:
            size = (self.image_size, self.image_size)
            images = [im if im.size == size else im.resize(size, RESIZE_FILTERS[self.resize]) for im in images]
        elif len({im.size for im in images}) > 1:
            raise InputDataError(
                f"images of different sizes {sorted({im.size for im in images})[:4]} cannot be batched; "
                "pass image_size=... to resize them (or give the extractor an input_size attribute)."
            )
        arrays = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
        return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()

    def _run_extractor(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "features":
            raise ConfigError(
                "this FeatureStatistics has no extractor (extractor=None): pass (B, F) features, or construct it "
                "with an extractor module / 'inception-v3' to feed images."
            )
        extractor = self._load_extractor()
        x = images.to(self.device)
        if self.float_input:
            x = x.to(torch.float32) / 255.0
        with torch.no_grad():
            out = extractor(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return self._check_features(out, f"output of the extractor {self.extractor_name}", images.shape[0])

    def _check_features(self, features: Any, name: str, batch: int | None = None) -> torch.Tensor:
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
            shape = tuple(features.shape) if hasattr(features, "shape") else type(features).__name__
            raise EmbeddingError(
                f"{name}: expected floating (B, {self.num_features}) features, got {shape}"
                f"{'' if not isinstance(features, torch.Tensor) else ' ' + str(features.dtype)}; "
                "an extractor must end with torch.flatten(x, 1) (one vector per image)."
            )
        if features.shape[1] != self.num_features or (batch is not None and features.shape[0] != batch):
            raise EmbeddingError(
                f"{name}: expected shape ({batch if batch is not None else 'B'}, {self.num_features}), got "
                f"{tuple(features.shape)}; the feature dimension must match num_features={self.num_features}."
            )
        features = features.detach().to(device=self.device, dtype=torch.float64)
        finite = torch.isfinite(features).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten()[:5].tolist()
            raise EmbeddingError(
                f"{name}: {int((~finite).sum())} row(s) contain NaN/inf (first rows: {rows}); "
                "check the images and the extractor's input range."
            )
        return features

    def _infer_num_features(self, extractor: nn.Module, num_features: int | None) -> int:
        if num_features is not None:
            return integer(num_features, "num_features")
        declared = getattr(extractor, "num_features", None)
        if isinstance(declared, torch.Tensor) and declared.numel() == 1:
            declared = int(declared.item())
        if declared is not None:
            return integer(declared, f"{self.extractor_name}.num_features")
        size = self.image_size or INCEPTION_SIZE
        device = next(iter(extractor.parameters()), torch.empty(0)).device
        dummy = torch.zeros(2, 3, size, size, dtype=torch.uint8, device=device)
        with torch.no_grad():
            out = extractor(dummy.float() / 255.0 if self.float_input else dummy)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ConfigError(
                f"could not infer the feature dimension of {self.extractor_name}: it returned "
                f"{getattr(out, 'shape', type(out).__name__)} for a (2, 3, {size}, {size}) batch, not (2, F); "
                "pass num_features=F or give the module a num_features attribute."
            )
        return int(out.shape[1])

    def _load_extractor(self) -> nn.Module:
        if self.extractor is None:
            module = load_inception(antialias=self.antialias, weights_path=self._inception_weights_file())
            self.extractor = module.to(self.device)
        return self.extractor

    def _inception_weights_file(self) -> Path | None:
        if self.weights_path is not None:
            if not self.weights_path.is_file():
                raise WeightsNotFoundError(
                    f"Inception weights file {self.weights_path} does not exist; download {INCEPTION_URL} there, "
                    "or drop weights_path to use the default locations."
                )
            return self.weights_path
        for place in inception_weight_places():
            if place.is_file():
                return place
        return None


def inception_weight_places() -> list[Path]:
    """Local files checked for the FID Inception weights: ``$GEN_ALIGN_HOME/fid/``, then torch hub's cache."""
    return [
        weights_home() / "fid" / INCEPTION_WEIGHTS_FILE,
        Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE,
    ]


def load_inception(antialias: bool = True, weights_path: str | os.PathLike | None = None) -> nn.Module:
    """torchmetrics' FID Inception (torch-fidelity weights, 2048-d pool features, uint8 input, eval mode).

    Without ``weights_path`` torch-fidelity downloads the weights into torch hub's cache; offline this raises
    :class:`WeightsNotFoundError` saying where to put the file and how to use another extractor.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as err:  # pragma: no cover - torchmetrics is a hard dependency
        raise ConfigError(f"the default FID extractor needs torchmetrics ({err}); pip install torchmetrics.") from err
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ConfigError(
            "the default FID extractor (Inception v3) needs torch-fidelity: pip install torch-fidelity, "
            "or pass a custom extractor module: FeatureStatistics(extractor=my_module)."
        )
    if weights_path is not None:
        _check_weights_file(Path(weights_path))
    try:
        module = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(INCEPTION_FEATURES)],
            feature_extractor_weights_path=None if weights_path is None else str(weights_path),
            antialias=antialias,
        )
    except (URLError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, GenAlignError):
            raise
        places = "\n  - ".join(str(p) for p in inception_weight_places())
        raise WeightsNotFoundError(
            f"the FID Inception weights ({INCEPTION_WEIGHTS_FILE}) are not available and could not be downloaded "
            f"({type(err).__name__}: {err}). Looked in:\n  - {places}\nTo fix: on a machine with network run "
            f"`curl -L -o {inception_weight_places()[0]} {INCEPTION_URL}` (or copy the file into either place, or "
            "pass weights_path=...), or use another feature extractor: FeatureStatistics(extractor=my_module) with any "
            "nn.Module mapping uint8 (B, 3, H, W) images to (B, F) features."
        ) from err
    return module.eval()


def _check_weights_file(path: Path) -> None:
    """Refuse pickles that hold more than tensors before torch-fidelity loads them (it uses weights_only=False)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise WeightsNotFoundError(f"Inception weights file {path} does not exist; download {INCEPTION_URL}.") from err
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"{path} is not a readable tensor checkpoint ({type(err).__name__}: {err}); re-download {INCEPTION_URL}."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; re-download {INCEPTION_URL}.")


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict: sorted names, dtypes, shapes and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_image_tensor(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        raise InputDataError(
            f"got one image tensor of shape {tuple(images.shape)}; add the batch dimension: images[None]."
        )
    if images.ndim != 4:
        raise InputDataError(
            f"image tensors must be (B, 3, H, W), got shape {tuple(images.shape)}; features must be (B, F)."
        )
    if images.dtype != torch.uint8:
        raise InputDataError(
            f"image tensors must be uint8 in [0, 255], got {images.dtype}; for floats in [0, 1] pass "
            "(x * 255).round().to(torch.uint8)."
        )
    if images.shape[1] != 3:
        hint = " It looks channels-last: use images.permute(0, 3, 1, 2)." if images.shape[-1] == 3 else ""
        raise InputDataError(f"image tensors must have 3 (RGB) channels in dim 1, got {tuple(images.shape)}.{hint}")
    if 0 in images.shape:
        raise InputDataError(f"image tensor of shape {tuple(images.shape)} is empty.")
    return images
