"""Gram volume of paired modality vectors (Eq. 12), with a finite gradient at degenerate tuples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gen_align.errors import EmbeddingError
from gen_align.objectives.geometry import safe_sqrt, unit_gram_determinant
from gen_align.tensors import check_embedding_dict, unit_dict


def paired_cosines(units: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Per-sample cosines ⟨z_i^a, z_i^b⟩ for every pair a < b of unit-vector batches (O(B d) each)."""
    return {(a, b): (units[a] * units[b]).sum(dim=-1) for a in range(len(units)) for b in range(a + 1, len(units))}


def volume_from_cosines(cosines: dict[tuple[int, int], torch.Tensor], k: int) -> torch.Tensor:
    """sqrt(det G) per sample from the off-diagonal Gram entries of k unit vectors (diagonal = 1)."""
    return safe_sqrt(unit_gram_determinant(cosines, k))


def gram_volume(*zs: torch.Tensor) -> torch.Tensor:
    """Per-sample volume of the parallelotope spanned by the L2-normalised vectors (Eq. 12):

        Vol_i = sqrt(det G_i),  (G_i)_kl = ⟨ẑ_i^k, ẑ_i^l⟩,   0 for collinear sets, 1 for orthonormal sets.

    Returns shape (B,). The determinant is a polynomial in the Gram entries (exact adjugate gradient at
    singular G) and the square root has a clipped derivative at 0, so the gradient is finite everywhere —
    including when two modality vectors coincide, where GRAM's reference code gives inf/NaN.
    """
    if len(zs) < 2:
        raise EmbeddingError(
            f"gram_volume needs at least 2 modality batches, got {len(zs)}: gram_volume(z_a, z_b, ...)."
        )
    z_dict = check_embedding_dict({f"zs[{i}]": z for i, z in enumerate(zs)})
    units = list(unit_dict(z_dict).values())
    return volume_from_cosines(paired_cosines(units), len(units))
