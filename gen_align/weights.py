"""Where model weights come from: a local directory first, then the Hugging Face hub cache / hub.

Search order for a source ``repo_or_path`` (+ optional ``subfolder``):

1. an existing local path (absolute, or relative to the checkpoint directory that names it);
2. ``$GEN_ALIGN_HOME/<repo_or_path>`` (or ``--weights-dir``), e.g. a ``hf download --local-dir`` copy;
3. the hub id itself (the Hugging Face cache; downloads unless ``HF_HUB_OFFLINE=1``).

A source that cannot be found raises :class:`~gen_align.errors.WeightsNotFoundError` naming what is missing,
every place that was looked at, and the command that fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gen_align.errors import WeightsNotFoundError

BEATS_AS2M = "beats/BEATs_iter3_plus_AS2M.pt"
"""Where the released BEATs iter3+ AS2M checkpoint lives under ``$GEN_ALIGN_HOME`` (it is not on the hub)."""
BEATS_HINT = (
    "run `gen-align download stable-unclip-h-beats --modalities audio` (it fetches the official file), or download "
    f"BEATs_iter3+ (AS2M) from the microsoft/unilm `beats/` README and save it as $GEN_ALIGN_HOME/{BEATS_AS2M}"
)
IMAGEBIND_HUGE = "imagebind/imagebind_huge.pth"
"""Where the released ImageBind (huge) whole-model checkpoint lives under ``$GEN_ALIGN_HOME`` (it is not on the hub)."""
IMAGEBIND_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
"""Its official download: the URL ``imagebind_model.imagebind_huge(pretrained=True)`` fetches."""
IMAGEBIND_HINT = (
    "run `gen-align download imagebind-h --modalities audio` (it fetches the official file), or download "
    f"{IMAGEBIND_URL} (CC BY-NC 4.0) and save it as $GEN_ALIGN_HOME/{IMAGEBIND_HUGE}"
)

T = TypeVar("T")

DEFAULT_HOME = Path("~/.cache/gen-align")


def weights_home(weights_dir: str | os.PathLike | None = None) -> Path:
    """``weights_dir`` if given, else ``$GEN_ALIGN_HOME``, else ``~/.cache/gen-align``."""
    chosen = weights_dir or os.environ.get("GEN_ALIGN_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser()


def local_candidates(
    source: str, subfolder: str | None, base_dir: str | os.PathLike | None, weights_dir: str | os.PathLike | None
) -> list[Path]:
    """Local places where ``source`` may live, in search order."""
    places = []
    path = Path(source).expanduser()
    if path.is_absolute():
        places.append(path)
    else:
        if base_dir is not None:
            places.append(Path(base_dir) / path)
        places.append(Path.cwd() / path)
        places.append(weights_home(weights_dir) / path)
    return [p / subfolder if subfolder else p for p in places]


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` without a leading ``.``/``/``/``~``, with exactly one slash, and not a checkpoint file name
    (``beats/BEATs_iter3_plus_AS2M.pt``, ``imagebind/imagebind_huge.pth``)."""
    return (
        source.count("/") == 1 and not source.startswith((".", "/", "~")) and not source.endswith(CHECKPOINT_SUFFIXES)
    )


def load_from_source(
    loader: Callable[..., T],
    source: str,
    *,
    what: str,
    subfolder: str | None = None,
    base_dir: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    hint: str | None = None,
    **kwargs: object,
) -> T:
    """Call ``loader(path_or_hub_id, [subfolder=...], **kwargs)`` on the first place that has the weights.

    ``loader`` is a ``from_pretrained``-style callable (transformers / diffusers) or any loader of a local
    path. Local places are tried first; the hub id last. Every failure is collected into one error message;
    ``hint`` says how to obtain a non-hub source.
    """
    tried = []
    for place in local_candidates(source, subfolder, base_dir, weights_dir):
        if place.exists():
            return loader(str(place), **kwargs)
        tried.append(str(place))
    if looks_like_hub_id(source):
        try:
            return loader(source, **({"subfolder": subfolder} if subfolder else {}), **kwargs)
        except (OSError, ValueError) as err:  # transformers/diffusers raise OSError for missing repos/files
            tried.append(f"hub {source}" + (f" (subfolder {subfolder})" if subfolder else "") + f": {err}")
        include = f" --include '{subfolder}/*'" if subfolder else ""
        hint = (
            f"download it with `hf download {source}{include} --local-dir "
            f"{weights_home(weights_dir) / source}` on a machine with network, "
            "or point --weights-dir / GEN_ALIGN_HOME at a directory that holds it"
        )
    else:
        hint = hint or "pass an existing path, or place the file under --weights-dir / GEN_ALIGN_HOME"
    looked = "\n  - ".join(tried)
    raise WeightsNotFoundError(f"{what} not found. Looked in:\n  - {looked}\nTo fix: {hint}.")
