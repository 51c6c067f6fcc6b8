"""Mini-world captions: a random template filled with a random synonym of every attribute value.

Synonyms never overlap between values (no "dot" for a circle: "dots" is a background), so every caption
names all four attributes unambiguously.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc", "round disc"),
        "square": ("square", "square tile", "block"),
        "triangle": ("triangle", "three-sided shape", "triangular shape"),
        "star": ("star", "five-pointed star", "star shape"),
        "cross": ("cross", "plus sign", "plus shape"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "tangerine", "amber"),
        "yellow": ("yellow", "lemon", "golden"),
        "green": ("green", "emerald", "grass-green"),
        "blue": ("blue", "cobalt", "sapphire"),
        "purple": ("purple", "violet", "amethyst"),
    },
    "size": {
        "small": ("small", "tiny", "little"),
        "large": ("large", "big", "huge"),
    },
    "background": {
        "plain": ("a plain background", "a plain backdrop", "a blank grey background", "an empty backdrop"),
        "stripes": ("stripes", "a striped background", "a striped backdrop", "grey stripes"),
        "dots": ("dots", "a dotted background", "polka dots", "a spotted backdrop"),
    },
}

TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on {background}",
    "a {size} {colour} {shape} over {background}",
    "there is a {size} {colour} {shape} on {background}",
    "an image of a {size} {colour} {shape} against {background}",
    "a {colour} {shape}, {size}, on {background}",
    "a picture of a {size} {shape} in {colour} on {background}",
    "{background} behind a {size} {colour} {shape}",
)


def _fix_articles(text: str) -> str:
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), text)


def make_caption(attributes: Mapping[str, str], rng: np.random.Generator) -> str:
    """A caption of ``attributes`` from a random template and random synonyms."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = {name: options[rng.integers(len(options))] for name, options in _options(attributes).items()}
    return _fix_articles(template.format(**words))


def _options(attributes: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    return {name: SYNONYMS[name][attributes[name]] for name in SYNONYMS}


def vocabulary() -> list[str]:
    """The words that name an attribute value in mini-world captions (every synonym's words but the articles),
    sorted: a prompt with none of them tells a text tower trained on these captions nothing."""
    phrases = [phrase for values in SYNONYMS.values() for options in values.values() for phrase in options]
    return sorted({w for phrase in phrases for w in re.findall(r"[a-z][a-z-]*", phrase)} - {"a", "an"})


def vocabulary_hint() -> str:
    """What the mini world's captions talk about, for messages."""
    return "; ".join(f"{name}: {', '.join(values)}" for name, values in SYNONYMS.items())
