"""Where the shipped mini preset lives inside the package (written by ``gen-align mini train --ship``).

The space and decoder paths are the preset table's (:mod:`gen_align.presets`, a lower floor); the classifier and
the example inputs are the mini world's own.
"""

from __future__ import annotations

from gen_align.presets import MINI_DECODER, MINI_SPACE, MINI_WEIGHTS

MINI_CLASSIFIER = MINI_WEIGHTS / "classifier"
MINI_EXAMPLES = MINI_WEIGHTS / "examples"

__all__ = ["MINI_CLASSIFIER", "MINI_DECODER", "MINI_EXAMPLES", "MINI_SPACE", "MINI_WEIGHTS"]
