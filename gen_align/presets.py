"""Named configurations of the aligned space: which frozen towers, which decoder, which dimension.

One table, like open_clip's pretrained tags. A preset's image tower is exactly the image encoder its
decoder was trained on (same weights, same preprocessing, raw projection output), so the anchor
embedding of ``encode_image`` is the embedding the decoder expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_align.errors import ConfigError
from gen_align.weights import BEATS_AS2M, BEATS_HINT

MINI_WEIGHTS = Path(__file__).resolve().parent / "mini" / "weights"
"""Package data: the shipped mini preset (written by ``gen-align mini train --ship``)."""
MINI_SPACE = MINI_WEIGHTS / "space"
MINI_DECODER = MINI_WEIGHTS / "decoder"

__all__ = ["BEATS_AS2M", "BEATS_HINT", "MINI_DECODER", "MINI_SPACE", "PRESETS", "Preset", "get_preset", "list_presets"]


@dataclass(frozen=True)
class Preset:
    """Towers (``{modality: tower config}``), decoder hub id and anchor dimension of a named space.

    ``checkpoint``: a trained space directory the preset loads as it is (towers and heads inside; ``towers`` then
    stays empty) — the shipped mini preset."""

    name: str
    description: str
    embedding_dim: int
    decoder: str
    towers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: str | None = None


PRESETS: dict[str, Preset] = {
    "mini": Preset(
        name="mini",
        description="the mini world (tiny CLIP + tiny BEATs + UniAlign heads -> a 32x32 pixel unCLIP decoder, "
        "64-d); shipped inside the package, works offline",
        embedding_dim=64,
        decoder=str(MINI_DECODER),
        checkpoint=str(MINI_SPACE),
    ),
    "stable-unclip-h": Preset(
        name="stable-unclip-h",
        description="CLIP ViT-H/14 (laion2b_s32b_b79k) + BEATs -> Stable UnCLIP 2.1 (1024-d raw image embeddings)",
        embedding_dim=1024,
        decoder="stabilityai/stable-diffusion-2-1-unclip",
        towers={
            "image": {
                "kind": "clip-vision",
                "source": "stabilityai/stable-diffusion-2-1-unclip",
                "subfolder": "image_encoder",
                "processor_subfolder": "feature_extractor",
            },
            "text": {
                "kind": "clip-text",
                "source": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                "subfolder": None,
                "tokenizer_subfolder": None,
            },
            "audio": {"kind": "beats", "source": BEATS_AS2M, "window_seconds": 10.0},
        },
    ),
    "kandinsky-2.2": Preset(
        name="kandinsky-2.2",
        description="CLIP ViT-bigG/14 (laion2b_s39b_b160k) + BEATs -> Kandinsky 2.2 decoder (1280-d raw embeddings)",
        embedding_dim=1280,
        decoder="kandinsky-community/kandinsky-2-2-decoder",
        towers={
            "image": {
                "kind": "clip-vision",
                "source": "kandinsky-community/kandinsky-2-2-prior",
                "subfolder": "image_encoder",
                "processor_subfolder": "image_processor",
            },
            "text": {
                "kind": "clip-text",
                "source": "kandinsky-community/kandinsky-2-2-prior",
                "subfolder": "text_encoder",
                "tokenizer_subfolder": "tokenizer",
            },
            "audio": {"kind": "beats", "source": BEATS_AS2M, "window_seconds": 10.0},
        },
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {sorted(PRESETS)} (or pass a checkpoint directory)."
        )
    return PRESETS[name]


def list_presets() -> dict[str, str]:
    """Every preset's name with its one-line description, e.g. ``list_presets()["mini"]``.

    Returns:
        ``{name: description}`` in the order of :data:`PRESETS` (the shipped ``mini`` first).
    """
    return {name: preset.description for name, preset in PRESETS.items()}
