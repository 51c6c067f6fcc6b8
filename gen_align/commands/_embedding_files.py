"""One modality of a loaded ``{modality: (N, d)}`` embeddings file, or a message naming the ones it holds."""

from __future__ import annotations


def modality(embeddings: dict, name: str, path: str) -> object:
    from gen_align.errors import ConfigError

    if name not in embeddings:
        raise ConfigError(f"{path} has no {name!r} embeddings; it holds {sorted(embeddings)}. Pick one of those.")
    return embeddings[name]
