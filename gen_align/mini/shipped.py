"""Where the shipped mini preset lives inside the package (written by ``gen-align mini train --ship``)."""

from __future__ import annotations

from pathlib import Path

MINI_WEIGHTS = Path(__file__).resolve().parent / "weights"
MINI_SPACE = MINI_WEIGHTS / "space"
MINI_DECODER = MINI_WEIGHTS / "decoder"
MINI_CLASSIFIER = MINI_WEIGHTS / "classifier"
MINI_EXAMPLES = MINI_WEIGHTS / "examples"
