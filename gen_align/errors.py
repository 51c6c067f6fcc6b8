"""One exception family: every message says what was wrong and how to fix it."""

from __future__ import annotations


class GenAlignError(Exception):
    """Base class of all errors raised by gen-align for bad user input or bad state."""


class EmbeddingError(GenAlignError, ValueError):
    """An embedding batch has the wrong type, shape, dtype, batch size, or non-finite values."""


class ConfigError(GenAlignError, ValueError):
    """A hyperparameter, option or name is invalid."""


class InputFileError(GenAlignError, OSError):
    """A file given by the user is missing, unreadable or in the wrong format."""


class OutputError(GenAlignError, OSError):
    """A result could not be written (missing permission, full disk); nothing partial is left behind."""
