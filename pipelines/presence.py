"""Which preset to use when none is named (the smallest whose weights are here), and how to get weights.

"Here" means: under ``--weights-dir`` / ``$GEN_ALIGN_HOME`` in the hub layout (``<home>/<owner>/<name>``), or in
the Hugging Face cache. Presets are ordered by embedding dimension, which follows their size
(stable-unclip-h: ViT-H/14 + SD 2.1 UNet; kandinsky-2.2: ViT-bigG/14 + a 1.2B UNet).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from gen_align.errors import WeightsNotFoundError
from gen_align.presets import PRESETS, Preset
from gen_align.weights import local_candidates, looks_like_hub_id, weights_home

FILE_LABELS = {"beats": "BEATs", "imagebind-audio": "ImageBind"}
"""Tower kinds whose source is one official checkpoint file (not a hub folder), with their names."""


@dataclass(frozen=True)
class Requirement:
    """One weight source a preset needs for some inputs."""

    source: str
    subfolder: str | None
    marker: str | None  # a file whose presence in the hub cache means the source is cached
    what: str


def needs_image_tower(preset: Preset) -> bool:
    """Kandinsky decoders take the zero-image embedding of the image tower as their negative."""
    return "kandinsky" in preset.decoder


def requirements(preset: Preset, modalities: Iterable[str]) -> list[Requirement]:
    """Decoder + the towers for ``modalities`` (+ the image tower where the decoder needs it)."""
    reqs = [Requirement(preset.decoder, None, "model_index.json", "decoder")]
    if preset.checkpoint:
        return [*reqs, Requirement(preset.checkpoint, None, None, "space")]
    wanted = set(modalities) | ({"image"} if needs_image_tower(preset) else set())
    for modality in sorted(wanted & set(preset.towers)):
        tower = preset.towers[modality]
        marker = None if tower["kind"] in FILE_LABELS else "config.json"
        reqs.append(Requirement(tower["source"], tower.get("subfolder"), marker, f"{modality} tower"))
    return reqs


def is_present(req: Requirement, weights_dir: str | os.PathLike | None = None) -> bool:
    """True if ``req`` is on disk locally or in the Hugging Face cache (nothing is downloaded)."""
    if any(p.exists() for p in local_candidates(req.source, req.subfolder, None, weights_dir)):
        return True
    if req.marker is None or not looks_like_hub_id(req.source):
        return False
    from huggingface_hub import try_to_load_from_cache

    filename = f"{req.subfolder}/{req.marker}" if req.subfolder else req.marker
    return isinstance(try_to_load_from_cache(req.source, filename), str)


def available_presets(modalities: Iterable[str], weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Presets whose weights for ``modalities`` are present, smallest first (nothing is downloaded)."""
    modalities = sorted(set(modalities))
    return [
        preset.name
        for preset in sorted(PRESETS.values(), key=lambda p: p.embedding_dim)
        if all(is_present(r, weights_dir) for r in requirements(preset, modalities))
    ]


def default_preset(modalities: Iterable[str], weights_dir: str | os.PathLike | None = None) -> str:
    """The smallest preset whose weights for ``modalities`` are present (the shipped ``mini`` preset when the
    package has it), else a WeightsNotFoundError that says how to get them."""
    available = available_presets(modalities, weights_dir)
    if available:
        return available[0]
    raise WeightsNotFoundError(download_instructions(modalities, weights_dir))


def download_instructions(modalities: Iterable[str], weights_dir: str | os.PathLike | None = None) -> str:
    """The no-weights message: every preset's hub ids with the ``hf download`` commands that fetch them."""
    home = weights_home(weights_dir)
    modalities = sorted(set(modalities))
    lines = [
        f"no preset has its weights on this machine for inputs {modalities}: looked under {home} "
        "(--weights-dir, else $GEN_ALIGN_HOME, else ~/.cache/gen-align) and in the Hugging Face cache."
    ]
    shipped = [p.name for p in PRESETS.values() if p.checkpoint]
    if shipped:
        lines.append(f"The shipped preset(s) {shipped} are missing from this installation: reinstall gen-align.")
    hub_presets = [p for p in PRESETS.values() if not p.checkpoint]
    for rank, preset in enumerate(sorted(hub_presets, key=lambda p: p.embedding_dim)):
        reqs = requirements(preset, modalities)
        hub = sorted({r.source for r in reqs if looks_like_hub_id(r.source)})
        files = sorted(
            {FILE_LABELS[t["kind"]] for m, t in preset.towers.items() if m in modalities and t["kind"] in FILE_LABELS}
        )
        audio = preset.towers.get("audio", {})
        head = "audio" in modalities and audio and not audio.get("native")
        lines.append(
            f"{'Smallest' if rank == 0 else 'Or'}: --preset {preset.name} ({preset.description}; from {', '.join(hub)}"
            f"{''.join(f' and the official {f} file' for f in files)}"
            f"{'; audio also needs a space trained on it, --space CKPT' if head else ''}), get all of it with:"
        )
        lines.append(f"  gen-align download {preset.name} --weights-dir {home}")
    lines.append(
        "Run the download on a machine with network, then run again here; if you saved it elsewhere, set "
        "GEN_ALIGN_HOME=DIR or pass --weights-dir DIR. To pick a preset or a trained space, pass --preset/--space."
    )
    return "\n".join(lines)
