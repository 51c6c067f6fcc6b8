"""A CLIP BPE tokenizer learned from the mini world's captions (Sennrich et al.'s merge learning).

The result is a standard ``transformers.CLIPTokenizer`` (``vocab.json`` + ``merges.txt``): CLIP's lower-casing
and word splitting, byte-to-unicode symbols, ``</w>`` word ends. The vocabulary holds every byte symbol in both
forms (so unseen words still tokenize, character by character) plus the learned merges, so frequent caption
words become single tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

from gen_align.errors import InputDataError

START, END = "<|startoftext|>", "<|endoftext|>"


def _base_vocab() -> dict[str, int]:
    """The special tokens and every byte symbol, alone and as a word end."""
    vocab = {START: 0, END: 1}
    for suffix in ("", "</w>"):
        for symbol in sorted(ByteLevel.alphabet()):
            vocab.setdefault(symbol + suffix, len(vocab))
    return vocab


def _splitter():
    """CLIP's own normaliser + pre-tokeniser (lower case, word/digit/punctuation runs, bytes as symbols)."""
    backend = CLIPTokenizer(vocab=_base_vocab(), merges=[]).backend_tokenizer
    return lambda text: [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


def learn_merges(texts: Iterable[str], max_merges: int = 1000, min_count: int = 2) -> list[tuple[str, str]]:
    """The most frequent adjacent symbol pairs, merged greedily until none occurs ``min_count`` times."""
    split = _splitter()
    counts = Counter((*w[:-1], w[-1] + "</w>") for text in texts for w in split(text) if w)
    if not counts:
        raise InputDataError("cannot learn a tokenizer from no text; the captions are empty.")
    words = {w: c for w, c in counts.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best, count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < min_count:
            break
        merges.append(best)
        words = {_merge(word, best): c for word, c in words.items()}
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_tokenizer(texts: Iterable[str], *, max_length: int = 32, max_merges: int = 1000) -> CLIPTokenizer:
    """A CLIPTokenizer whose merges are learned from ``texts`` (context ``max_length`` tokens)."""
    merges = learn_merges(texts, max_merges)
    vocab = _base_vocab()
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
