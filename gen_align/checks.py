"""Validation of scalar hyperparameters: one ConfigError message shape for every option in the library."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: object, name: str, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number > 0 (NumPy scalars included), else ConfigError."""
    from gen_align.errors import ConfigError

    if not (_real(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}. {hint}".rstrip())
    return float(value)


def non_negative(value: object, name: str, hint: str = "") -> float:
    """``value`` as a float if it is a finite real number ≥ 0, else ConfigError."""
    from gen_align.errors import ConfigError

    if not (_real(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative finite number, got {value!r}. {hint}".rstrip())
    return float(value)


def integer(value: object, name: str, low: int = 1, hint: str = "", *, high: int | None = None) -> int:
    """``value`` as an int if it is an integer in ``low..high`` (NumPy integers included, bools refused)."""
    from gen_align.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}. {hint}".rstrip())
    if high is not None and value > high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}. {hint}".rstrip())
    return int(value)


def choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ConfigError listing them."""
    from gen_align.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {tuple(choices)}.")
    return value


def flag(value: object, name: str) -> bool:
    """``value`` if it is a bool, else a ConfigError (a string such as "false" would otherwise count as true)."""
    from gen_align.errors import ConfigError

    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}.")
    return value
