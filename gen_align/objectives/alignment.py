"""Anchor alignment (Eq. 10): pull every non-anchor modality onto the (stop-gradient) anchor."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gen_align.objectives.uniformity import check_kernel, squared_distance_from_cosine
from gen_align.tensors import check_embedding_dict, unit_dict


def alignment_from_cosines(cosines: list[torch.Tensor], geometry: str) -> torch.Tensor:
    """Eq. 10 from the per-sample cosines ⟨z_i^m, sg[z_i^a]⟩ of each non-anchor modality m."""
    return torch.stack([squared_distance_from_cosine(c, geometry).mean() for c in cosines]).mean()


def anchor_alignment(
    z_dict: Mapping[str, torch.Tensor], anchor: str = "image", geometry: str = "euclidean"
) -> torch.Tensor:
    """Anchor alignment (Eq. 10), averaged over the M−1 non-anchor modalities m:

        L_align = 1/(M−1) Σ_{m≠a} 1/B Σ_i δ(z_i^m, sg[z_i^a])²,  δ = ‖·‖ (Euclidean) or arccos (geodesic),

    on L2-normalised rows. sg = stop-gradient: as in the paper, the anchor is optimised only by the
    uniformity terms, so no gradient of this term reaches the anchor embeddings.
    """
    check_kernel(geometry, "geometry")
    z_dict = check_embedding_dict(z_dict, min_modalities=2, anchor=anchor)
    units = unit_dict(z_dict)
    target = units[anchor].detach()
    cosines = [(z * target).sum(dim=-1) for m, z in units.items() if m != anchor]
    return alignment_from_cosines(cosines, geometry)
