"""The one-click examples: the shipped mini world's captions and clips, else built-in prompts and a tone."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_align.errors import InputFileError
from gen_align.mini import shipped

EXAMPLE_PROMPTS = ("a dog barking in the rain", "a church bell at dawn", "waves crashing on a rocky beach")


def example_audio(directory: str | Path | None = None) -> Path:
    """A 2 s rising-tone wav written at startup (into a temp dir by default) for the one-click examples."""
    import soundfile as sf

    folder = Path(directory or tempfile.mkdtemp(prefix="gen-align-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(32000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (220 + 220 * t) * t) * np.minimum(1, 10 * (2 - t))
    path = folder / "rising_tone.wav"
    sf.write(path, wave.astype(np.float32), 16000)
    return path


def shipped_examples() -> list[tuple[str, Path]]:
    """``(caption, wav)`` of the mini preset's shipped example items (``MINI_EXAMPLES/examples.json``, read now);
    ``[]`` when the package ships none."""
    folder = Path(shipped.MINI_EXAMPLES)
    index = folder / "examples.json"
    if not index.is_file():
        return []
    try:
        items = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(f"{index} is unreadable ({err}); reinstall gen-align.") from err
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("text"), str) and isinstance(i.get("audio"), str) for i in items
    ):
        raise InputFileError(f'{index} is not a list of {{"text": ..., "audio": ...}} items; reinstall gen-align.')
    return [(item["text"], folder / item["audio"]) for item in items]


@dataclass(frozen=True)
class ExampleSet:
    """One-click examples: rows for the Generate tab's ``generate_inputs`` and one row for the Interpolate tab's
    ``interpolate_inputs`` (input names such as ``text`` or ``b_audio``); ``folder`` holds their files."""

    generate_inputs: tuple[str, ...]
    generate: list[list[str | None]]
    interpolate_inputs: tuple[str, ...]
    interpolate: list[str | None]
    folder: Path | None


def examples(audio: bool, directory: str | Path | None = None) -> ExampleSet:
    """The shipped mini examples when the package has them (captions, clips, a caption + another item's clip;
    interpolation from a caption to another item's clip), else :data:`EXAMPLE_PROMPTS` and a generated tone
    (written into ``directory``); audio ones only when ``audio`` (some entry of the page takes audio)."""
    items = shipped_examples()
    if items:
        captions, clips, folder = [t for t, _ in items], [str(w) for _, w in items], items[0][1].parent
    else:
        wav = example_audio(directory) if audio else None
        captions, clips, folder = list(EXAMPLE_PROMPTS), [str(wav)] if wav else [], wav.parent if wav else None
    if not audio:
        return ExampleSet(("text",), [[t] for t in captions[:3]], ("a_text", "b_text"), captions[:2], folder)
    rows = [[t, None] for t in captions[:3]] + [[None, c] for c in clips[:2]]
    if items and len(items) > 1:  # two different items: the caption of one with the clip of another
        rows.append([captions[0], clips[1]])
        return ExampleSet(("text", "audio"), rows, ("a_text", "b_audio"), [captions[0], clips[1]], folder)
    ends = captions[:2] if len(captions) > 1 else [captions[0], EXAMPLE_PROMPTS[0]]
    return ExampleSet(("text", "audio"), rows, ("a_text", "b_text"), ends, folder)
