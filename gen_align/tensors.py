"""Validation and normalisation of embedding batches shared by objectives, diagnostics and heads.

Contract: an embedding batch is ``dict[str, Tensor]`` keyed by modality, each ``(B, d)`` float.
Every check raises :class:`~gen_align.errors.EmbeddingError` with a message that says what was wrong and
how to fix it; one device sync per tensor at most (the row norms are checked, which also catches NaN/inf).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch

from gen_align.errors import ConfigError, EmbeddingError

EmbeddingDict = Mapping[str, torch.Tensor]


def as_embeddings(z: torch.Tensor | np.ndarray, name: str = "z", min_batch: int = 1) -> torch.Tensor:
    """Return ``z`` as a floating ``(B, d)`` tensor, or raise :class:`EmbeddingError`.

    NumPy arrays are converted (no copy where possible). Integer tensors are refused rather than
    silently cast, since they usually mean token ids or labels were passed by mistake.
    """
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(z)
    if not isinstance(z, torch.Tensor):
        raise EmbeddingError(f"{name}: expected a torch.Tensor or numpy array of shape (B, d), got {type(z).__name__}.")
    if z.ndim != 2:
        raise EmbeddingError(
            f"{name}: expected shape (B, d), got {tuple(z.shape)}. "
            "Pool token features to one vector per item first (e.g. mean over time) and stack them."
        )
    if not z.is_floating_point():
        raise EmbeddingError(f"{name}: expected a floating-point tensor, got {z.dtype}; call .float() on embeddings.")
    if z.shape[0] < min_batch:
        raise EmbeddingError(
            f"{name}: this quantity needs a batch of at least {min_batch} items, got {z.shape[0]}. "
            "Use a larger batch (or drop_last=True in the DataLoader)."
        )
    if z.shape[1] == 0:
        raise EmbeddingError(f"{name}: embedding dimension is 0.")
    return z


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32; float32 and float64 pass through unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _ScaleRows(torch.autograd.Function):
    """y = z / ‖z‖ given the row norms, with the projected backward (g − y⟨g, y⟩) / ‖z‖ in three passes
    over (B, d) (autograd's generic division + norm backward takes about seven, with broadcast divisions)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        inverse = norms.reciprocal()
        y = z * inverse
        ctx.save_for_backward(y, inverse)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        y, inverse = ctx.saved_tensors
        radial = torch.linalg.vecdot(grad, y).unsqueeze(-1)
        return torch.addcmul(grad, y, radial, value=-1.0).mul_(inverse), None


def unit(z: torch.Tensor, name: str = "z") -> torch.Tensor:
    """L2-normalise rows in at least float32; raise on NaN/inf or all-zero rows (no direction)."""
    z = at_least_float32(z)
    norms = torch.linalg.vector_norm(z.detach(), dim=-1, keepdim=True)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        rows = torch.nonzero(bad.squeeze(-1)).flatten()[:5].tolist()
        raise EmbeddingError(
            f"{name}: {int(bad.sum())} row(s) are NaN/inf or all zero, or their norm under/overflows "
            f"(first rows: {rows}); "
            "such an embedding has no direction. Check the encoder output (fp16 overflow, empty input, "
            "a silent audio clip) before computing the loss."
        )
    return _ScaleRows.apply(z, norms)


def check_embedding_dict(
    z_dict: EmbeddingDict,
    *,
    min_modalities: int = 1,
    min_batch: int = 1,
    anchor: str | None = None,
) -> dict[str, torch.Tensor]:
    """Validate a ``{modality: (B, d)}`` batch: same B and d everywhere, anchor present."""
    if not isinstance(z_dict, Mapping):
        raise EmbeddingError(
            f"expected a dict {{modality: (B, d) tensor}}, got {type(z_dict).__name__}; "
            "e.g. {'image': z_img, 'text': z_txt, 'audio': z_aud}."
        )
    if len(z_dict) < min_modalities:
        raise EmbeddingError(
            f"this objective needs at least {min_modalities} modalities, got {len(z_dict)}: {sorted(z_dict)}."
        )
    out = {str(k): as_embeddings(v, name=f"z[{k!r}]", min_batch=min_batch) for k, v in z_dict.items()}
    devices = {k: str(v.device) for k, v in out.items()}
    if len(set(devices.values())) > 1:
        raise EmbeddingError(f"all modalities must be on one device, got {devices}; move them with .to(device).")
    dtype = functools.reduce(torch.promote_types, (v.dtype for v in out.values()))
    out = {k: v.to(dtype) for k, v in out.items()}  # e.g. float64 NumPy next to float32 torch
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    if len(set(shapes.values())) > 1:
        raise EmbeddingError(
            f"all modalities must share batch size and dimension (paired samples in one space), got {shapes}. "
            "Project every modality to the anchor dimension with its head before the loss."
        )
    if anchor is not None and anchor not in out:
        raise EmbeddingError(
            f"anchor modality {anchor!r} is missing from the batch {sorted(out)}; pass anchor=<one of these>."
        )
    return out


def unit_dict(z_dict: EmbeddingDict) -> dict[str, torch.Tensor]:
    """L2-normalise every modality of an already-validated batch."""
    return {k: unit(v, name=f"z[{k!r}]") for k, v in z_dict.items()}


def check_weight_table(weights: object, what: str) -> None:
    """A weight table must map names to real numbers (a config's ``weights.text=0.5``), else ConfigError."""
    if not isinstance(weights, Mapping):
        raise ConfigError(f"{what} must be a table of name = weight (e.g. weights.text=0.5), got {weights!r}.")
    bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, (int, float, np.number))}
    if bad:
        raise ConfigError(f"{what} must be numbers, got {bad}.")


def normalized_weights(weights: Mapping[str, float] | None, keys: list[str], what: str = "weights") -> dict:
    """Validate non-negative weights over ``keys`` (default uniform) and normalise them to sum 1."""
    if weights is None:
        return {k: 1.0 / len(keys) for k in keys}
    check_weight_table(weights, what)
    unknown = sorted(set(weights) - set(keys))
    if unknown:
        raise ConfigError(f"{what}: unknown keys {unknown}; expected a subset of {keys}.")
    values = {k: float(weights.get(k, 0.0)) for k in keys}
    if any(not np.isfinite(v) or v < 0 for v in values.values()):
        raise ConfigError(f"{what} must be finite and non-negative, got {values}.")
    total = sum(values.values())
    if total <= 0:
        raise ConfigError(f"{what} are all zero ({values}); give at least one a positive weight.")
    return {k: v / total for k, v in values.items()}
