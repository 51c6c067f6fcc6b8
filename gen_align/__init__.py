"""gen-align: one image-anchored CLIP embedding space for text, audio and vision.

Encoders are aligned with the UniAlign objective (or its baselines); the same embeddings drive unCLIP
image decoders, FID evaluation and cross-modal retrieval. The public names below load on first use, so
``import gen_align`` (and ``gen-align --help``) stays fast::

    from gen_align import GenAlignPipeline

    pipe = GenAlignPipeline.from_pretrained("mini")
    out = pipe(text="a small red star on stripes", audio="large-blue-circle-plain.wav")
    out.images[0].save("star.png")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GenAlignPipeline": "gen_align.pipelines.pipeline",
    "GenAlignOutput": "gen_align.pipelines.pipeline",
    "AlignedSpace": "gen_align.space",
    "list_presets": "gen_align.presets",
    "get_preset": "gen_align.presets",
    "blend": "gen_align.pipelines.blend",
    "get_objective": "gen_align.objectives",
    "list_objectives": "gen_align.objectives",
    "uniformity": "gen_align.objectives",
    "centroid_uniformity": "gen_align.objectives",
    "anchor_alignment": "gen_align.objectives",
    "gram_volume": "gen_align.objectives",
    "unialign_loss": "gen_align.objectives",
    "infonce_loss": "gen_align.objectives",
    "gram_loss": "gen_align.objectives",
    "holder_divergence": "gen_align.diagnostics",
    "conflict_metrics": "gen_align.diagnostics",
    "modality_gap": "gen_align.diagnostics",
    "retrieval_metrics": "gen_align.retrieval",
    "invgc": "gen_align.retrieval",
    "AnnIndex": "gen_align.retrieval",
    "two_stage_search": "gen_align.retrieval",
    "GenAlignError": "gen_align.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gen_align' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
