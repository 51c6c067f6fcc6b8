"""Alignment objectives: plain functions over ``(B, d)`` tensors, and a registry for training.

Each function computes the UniAlign paper's equation it names (docs/objectives.md), with the paper's τ.
Every objective L2-normalises its inputs, works in at least float32, and raises
:class:`~gen_align.errors.EmbeddingError` / :class:`~gen_align.errors.ConfigError` on bad input.
"""

from gen_align.objectives.alignment import anchor_alignment
from gen_align.objectives.gram import gram_loss, gram_similarity
from gen_align.objectives.gravi import gravi_score
from gen_align.objectives.infonce import infonce_loss
from gen_align.objectives.registry import OBJECTIVES_VERSION, TASK_PRESETS, Objective, get_objective, list_objectives
from gen_align.objectives.transport import local_covariance_loss, sinkhorn_ot_loss
from gen_align.objectives.unialign import unialign_loss, unialign_terms
from gen_align.objectives.uniformity import centroid_uniformity, uniformity
from gen_align.objectives.volume import gram_volume

__all__ = [
    "OBJECTIVES_VERSION",
    "TASK_PRESETS",
    "Objective",
    "anchor_alignment",
    "centroid_uniformity",
    "get_objective",
    "gram_loss",
    "gram_similarity",
    "gram_volume",
    "gravi_score",
    "infonce_loss",
    "list_objectives",
    "local_covariance_loss",
    "sinkhorn_ot_loss",
    "unialign_loss",
    "unialign_terms",
    "uniformity",
]
