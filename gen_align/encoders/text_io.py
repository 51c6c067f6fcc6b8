"""Text checks for the encoders: validated, NFC-normalised prompts and tokenizer-agnostic truncation."""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence

from gen_align.checks import integer
from gen_align.errors import InputDataError

_SHOWN = 5  # offending indices named in one message


def _indices(bad: list[int], what: str = "texts") -> str:
    shown = ", ".join(f"{what}[{i}]" for i in bad[:_SHOWN])
    return shown + (f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")


def check_texts(texts: str | Iterable[str]) -> list[str]:
    """One string or an iterable of strings → a list of stripped, NFC-normalised, non-empty strings.

    Raises :class:`InputDataError` naming the indices of non-string items and of empty or whitespace-only strings.
    """
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        raise InputDataError(
            f"texts must be a string or a list of strings, got {type(texts).__name__}. "
            + ("Decode bytes first, e.g. data.decode('utf-8')." if isinstance(texts, (bytes, bytearray)) else "")
        )
    else:
        items = list(texts)
    if not items:
        raise InputDataError("no texts given (empty list); pass at least one prompt.")
    wrong = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if wrong:
        example = items[wrong[0]]
        raise InputDataError(
            f"{_indices(wrong)} {'is' if len(wrong) == 1 else 'are'} not a string "
            f"(texts[{wrong[0]}] is {type(example).__name__}: {example!r:.60}); "
            "pass only str items (convert with str() or decode bytes with .decode('utf-8'))."
        )
    cleaned = [unicodedata.normalize("NFC", t).strip() for t in items]
    empty = [i for i, t in enumerate(cleaned) if not t]
    if empty:
        raise InputDataError(
            f"{_indices(empty)} {'is' if len(empty) == 1 else 'are'} empty or whitespace-only; "
            "remove them or give them real text (an empty prompt has no meaning to the encoder)."
        )
    return cleaned


def truncate_token_ids(
    ids: Sequence[Sequence[int]],
    max_length: int,
    *,
    end_token_id: int | None = None,
    warn_name: str = "text",
) -> list[list[int]]:
    """Cut every token-id row to ``max_length``; warn once, saying how many rows were cut and the limit.

    With ``end_token_id`` the last kept token of a cut row is replaced by it, so every row still ends with the
    end-of-text token (what CLIP pools on). Rows within the limit are returned unchanged (as lists).
    """
    max_length = integer(max_length, "max_length", low=1 if end_token_id is None else 2)
    rows = [list(row) for row in ids]
    long_rows = [i for i, row in enumerate(rows) if len(row) > max_length]
    if not long_rows:
        return rows
    longest = max(len(rows[i]) for i in long_rows)
    for i in long_rows:
        rows[i] = rows[i][:max_length]
        if end_token_id is not None:
            rows[i][-1] = end_token_id
    warnings.warn(
        f"{len(long_rows)} of {len(rows)} {warn_name} inputs ({_indices(long_rows, 'inputs')}) were longer than "
        f"the {max_length}-token limit (longest: {longest} tokens) and were truncated; their endings are ignored. "
        "Shorten them to keep every word.",
        UserWarning,
        stacklevel=2,
    )
    return rows
