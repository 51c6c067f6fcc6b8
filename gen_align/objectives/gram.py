"""GRAM baseline: volume-contrastive loss between a query modality and tuples of the others (as published)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gen_align.checks import integer
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.objectives.geometry import safe_sqrt, unit_gram_determinant
from gen_align.objectives.uniformity import check_tau
from gen_align.tensors import as_embeddings, at_least_float32, check_embedding_dict, unit, unit_dict


def _check_tuple_batches(text: torch.Tensor, others: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list]:
    if isinstance(others, torch.Tensor) or not others:
        raise EmbeddingError("others must be a non-empty list of (B, d) tensors, e.g. [z_video, z_audio].")
    t = as_embeddings(text, name="text")
    tuple_units = list(unit_dict(check_embedding_dict({f"others[{i}]": o for i, o in enumerate(others)})).values())
    if t.shape[1] != tuple_units[0].shape[1]:
        raise EmbeddingError(
            f"text has dimension {t.shape[1]} but the tuple modalities have {tuple_units[0].shape[1]}; "
            "project all modalities into one space first."
        )
    t = unit(t, name="text")
    dtype = torch.promote_types(t.dtype, tuple_units[0].dtype)
    return t.to(dtype), [o.to(dtype) for o in tuple_units]


def _negative_volumes(t: torch.Tensor, tuple_units: list[torch.Tensor]) -> torch.Tensor:
    """−sqrt(det G_ij) for every (text i, tuple j): G_ij is the Gram of [t_i, o_j^1, ..., o_j^{k-1}].
    One B×B product per tuple modality (text–tuple cosines); the within-tuple cosines are per tuple and
    broadcast over the text rows."""
    cosines = {}
    for a, o in enumerate(tuple_units, start=1):
        cosines[(0, a)] = at_least_float32(t @ o.mT)
        for b in range(a + 1, len(tuple_units) + 1):
            cosines[(a, b)] = (o * tuple_units[b - 1]).sum(dim=-1)
    return -safe_sqrt(unit_gram_determinant(cosines, len(tuple_units) + 1))


def gram_similarity(text: torch.Tensor, others: Sequence[torch.Tensor], chunk_size: int | None = None) -> torch.Tensor:
    """GRAM retrieval score: the (B_text, B_tuple) matrix of −Vol(t_i, o_j^1, ..., o_j^{k−1}), with Vol the
    Gram volume of Eq. 12 on L2-normalised vectors (higher = better match). ``chunk_size`` bounds memory
    to chunk_size × B_tuple × k² for large galleries."""
    if chunk_size is not None:
        integer(chunk_size, "chunk_size", hint="It is the number of text rows scored per block.")
    t, tuple_units = _check_tuple_batches(text, others)
    if chunk_size is None or chunk_size >= t.shape[0]:
        return _negative_volumes(t, tuple_units)
    return torch.cat([_negative_volumes(c, tuple_units) for c in t.split(chunk_size)], dim=0)


def check_label_smoothing(label_smoothing: float) -> float:
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not (0.0 <= label_smoothing < 1.0)
    ):
        raise ConfigError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r} (GRAM uses 0.1).")
    return float(label_smoothing)


def gram_loss(
    text: torch.Tensor,
    others: Sequence[torch.Tensor],
    tau: float | torch.Tensor = 0.07,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """GRAM's volume-contrastive loss as published (Cicchetti et al.; ispamm/GRAM ``model/gram.py``):

        L = ½ [ CE_ε(−V/τ, I) + CE_ε(−Vᵀ/τ, I) ],  V_ij = sqrt(det G(t_i, o_j^1, …, o_j^{k−1})),

    the matching pairs on the diagonal, CE_ε the cross-entropy with label smoothing ε (0.1 in GRAM; 0 gives
    the plain cross-entropy). ``tau`` is a float or a learnable 0-dim tensor (GRAM trains it from 0.07: the
    registry's ``learnable_tau``). Unlike GRAM's code, the volume has a finite gradient at collinear tuples.
    """
    if isinstance(tau, torch.Tensor):
        if tau.ndim != 0 or not bool(tau.detach() > 0):
            raise EmbeddingError(f"tau must be a positive 0-dim tensor, got {tau.detach().tolist()!r}.")
    else:
        check_tau(tau)
    label_smoothing = check_label_smoothing(label_smoothing)
    t, tuple_units = _check_tuple_batches(text, others)
    if t.shape[0] != tuple_units[0].shape[0]:
        raise EmbeddingError(
            f"gram_loss needs paired batches: text has {t.shape[0]} rows, the tuples {tuple_units[0].shape[0]}."
        )
    logits = _negative_volumes(t, tuple_units) / tau
    targets = torch.arange(t.shape[0], device=t.device)
    return 0.5 * (
        F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.mT, targets, label_smoothing=label_smoothing)
    )
