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


class WeightsNotFoundError(GenAlignError, FileNotFoundError):
    """Model weights are neither in the given directory, the weights home, nor reachable on the hub."""


class InputDataError(GenAlignError, ValueError):
    """An in-memory input (texts, waveform array, image array) has the wrong type, shape or content."""


class CheckpointError(GenAlignError, ValueError):
    """A checkpoint is unreadable, not in the expected format, or does not match its config."""


class DecoderOutOfMemoryError(GenAlignError, MemoryError):
    """The GPU ran out of memory loading or running a decoder (try --offload or a smaller --n)."""


BAD_INPUT_ERRORS = (InputFileError, InputDataError)
"""What an encoder raises for one bad input (a missing, corrupt, silent or too long file, an empty text), as opposed
to a broken encoder or configuration: the errors a batch job skips and reports unless told to be strict."""
