"""Every component a preset needs, checked before anything slow, and fetched in one command.

:func:`check_preset` looks for all of a preset's components at once (decoder, towers, calibration) and raises one
:class:`~gen_align.errors.WeightsNotFoundError` that lists each missing one, where it was looked for, its size when
the hub can say, and the single command that fetches everything: ``gen-align download PRESET``.

:func:`download_preset` is that command: hub sources go to ``$GEN_ALIGN_HOME/<owner>/<name>`` (the first place
:func:`gen_align.weights.load_from_source` looks), only the files the loaders read (configs, tokenizers and one
weights file per folder, safetensors preferred; no fp16 variants, no single-file checkpoints); files that are not on
the hub (the BEATs and ImageBind checkpoints) come from their official URLs. Both resume: the hub client keeps
partial files, and :func:`fetch_url` continues a ``.part`` file with an HTTP range request.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gen_align.errors import OutputError, WeightsNotFoundError
from gen_align.presets import BEATS_AS2M, Preset, get_preset
from gen_align.weights import IMAGEBIND_HUGE, IMAGEBIND_URL, local_candidates, looks_like_hub_id, weights_home

from .calibration import calibration_file, calibration_path
from .presence import Requirement, is_present, requirements

OFFICIAL_FILES = {
    BEATS_AS2M: (
        "https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M.pt?sv=2020-08-04&st=2023-03-01T07%3A51"
        "%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl&sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D",
        "BEATs iter3+ (AS2M), the pre-trained checkpoint linked from the microsoft/unilm beats/ README",
    ),
    IMAGEBIND_HUGE: (
        IMAGEBIND_URL,
        "ImageBind (huge), the released whole-model checkpoint of facebookresearch/ImageBind (4.5 GB; CC BY-NC 4.0: "
        "non-commercial use only)",
    ),
}
"""Files a preset needs that are not on the hub: the path under ``$GEN_ALIGN_HOME`` → (official URL, what it is)."""
WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin",
                "diffusion_pytorch_model.bin")  # fmt: skip
"""The weights file of a transformers / diffusers folder, in order of preference (the loaders read safetensors
first)."""
SMALL_FILES = (".json", ".txt", ".model")
"""Configs, tokenizer vocabularies and merges: always taken."""
CHUNK = 1 << 20


@dataclass(frozen=True)
class Missing:
    """A component that is not on this machine: what it is, where it was looked for, and its size if known."""

    what: str
    source: str
    looked: tuple[str, ...]
    size: int | None = None
    fix: str | None = None


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers (False under ``HF_HUB_OFFLINE=1``); one TCP connect, nothing sent."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def preset_components(preset: Preset, modalities: Iterable[str] | None = None) -> list[Requirement]:
    """The weight sources of ``preset`` for ``modalities`` (default: every tower), each once."""
    wanted = sorted(preset.towers) if modalities is None else sorted(set(modalities))
    seen, out = set(), []
    for req in requirements(preset, wanted):
        if (req.source, req.subfolder) not in seen:
            seen.add((req.source, req.subfolder))
            out.append(req)
    return out


def missing_components(
    preset: Preset,
    modalities: Iterable[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    *,
    calibration: bool = True,
    decoder: bool = True,
    sizes: Callable[[Requirement], int | None] | None = None,
) -> list[Missing]:
    """Every component of ``preset`` that is neither under the weights home nor in the hub cache (nothing is
    downloaded); ``calibration`` also asks for the measured embedding norm the decoder is fed at, ``decoder`` for
    the preset's decoder (False when another one is given). ``sizes`` gives a missing hub source's download size
    (e.g. :func:`hub_size` when online)."""
    missing = []
    for req in preset_components(preset, modalities):
        if (req.what == "decoder" and not decoder) or is_present(req, weights_dir):
            continue
        looked = [str(p) for p in local_candidates(req.source, req.subfolder, None, weights_dir)]
        if looks_like_hub_id(req.source):
            looked.append(f"the Hugging Face cache ({req.source})")
        fix = None if looks_like_hub_id(req.source) else _official_fix(req.source)
        size = sizes(req) if sizes is not None and looks_like_hub_id(req.source) else None
        missing.append(Missing(req.what, _label(req), tuple(looked), size, fix))
    if calibration and not preset.checkpoint:
        path = calibration_path(preset.name, weights_dir)
        if calibration_file(preset.name, weights_dir) is None:
            missing.append(
                Missing(
                    "calibration",
                    str(path),
                    (str(path),),
                    fix=f"measure it once: gen-align calibrate --preset {preset.name} --images DIR (any folder of a "
                    "few hundred natural images)",
                )
            )
    return missing


def check_preset(
    name: str,
    modalities: Iterable[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    *,
    calibration: bool = True,
    decoder: bool = True,
) -> None:
    """Raise one WeightsNotFoundError naming every missing component of preset ``name`` (see the module doc)."""
    preset = get_preset(name)
    kwargs = {"calibration": calibration, "decoder": decoder}
    missing = missing_components(preset, modalities, weights_dir, **kwargs)
    if not missing:
        return
    online = hub_reachable()
    if online:
        missing = missing_components(preset, modalities, weights_dir, sizes=hub_size, **kwargs)
    raise WeightsNotFoundError(missing_message(preset.name, missing, online, weights_home(weights_dir)))


def missing_message(name: str, missing: list[Missing], online: bool, home: Path) -> str:
    """The report of :func:`check_preset`: each component, where it was looked for, its size, the one command."""
    network = "" if online else " This machine is offline (the Hugging Face hub cannot be reached)."
    lines = [f"the preset {name} lacks {len(missing)} component(s) on this machine.{network}"]
    for m in missing:
        size = f", {format_size(m.size)}" if m.size else ""
        lines.append(f"  - {m.what}: {m.source}{size}")
        lines.append(f"      looked in: {'; '.join(m.looked)}")
        if m.fix:
            lines.append(f"      {m.fix}")
    fetchable = [m for m in missing if m.what != "calibration"]
    if fetchable:
        where = "" if online else " on a machine with network, then copy that folder here"
        lines.append(
            f"To fix: `gen-align download {name} --weights-dir {home}` fetches every component{where} (or set "
            "GEN_ALIGN_HOME / pass --weights-dir where they already are)."
        )
    return "\n".join(lines)


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------------------------------------- hub files
def select_files(files: Iterable[str], subfolder: str | None = None) -> list[str]:
    """The files of a hub repository the loaders read, under ``subfolder`` (None: the whole repository): in every
    folder its configs and tokenizer files and one weights file (:data:`WEIGHT_FILES` order); fp16 / other variants,
    single-file checkpoints and ONNX or Flax exports are left out."""
    folders: dict[str, list[str]] = {}
    for name in files:
        path = PurePosixPath(name)
        parent = str(path.parent)
        if subfolder is not None and parent != subfolder.strip("/"):
            continue
        folders.setdefault(parent, []).append(path.name)
    chosen = []
    for parent, names in sorted(folders.items()):
        prefix = "" if parent == "." else f"{parent}/"
        chosen += [prefix + n for n in sorted(names) if n.endswith(SMALL_FILES)]
        weights = next((w for w in WEIGHT_FILES if w in names), None)
        if weights:
            chosen.append(prefix + weights)
    return chosen


def hub_plan(req: Requirement, extra_subfolders: Iterable[str] = ()) -> tuple[str, list[str]]:
    """(repo id, files) that :func:`download_preset` takes for ``req`` (lists the repository: needs the network)."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(req.source)
    if req.subfolder is None:
        return req.source, select_files(files)
    chosen = [f for sub in (req.subfolder, *extra_subfolders) for f in select_files(files, sub)]
    return req.source, chosen


def hub_size(req: Requirement) -> int | None:
    """The download size of ``req``'s files (None when the hub does not answer)."""
    from huggingface_hub import HfApi

    try:
        _, files = hub_plan(req)
        info = HfApi().model_info(req.source, files_metadata=True)
    except Exception:  # noqa: BLE001 - a size is a nicety: any hub failure means "unknown"
        return None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    return sum(sizes.get(f, 0) for f in files) or None


# ---------------------------------------------------------------------------------------------- download
def download_preset(
    name: str,
    modalities: Iterable[str] | None = None,
    weights_dir: str | os.PathLike | None = None,
    *,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Fetch every component of preset ``name`` into the weights home (resumable, with progress); returns the
    folders and files written. Components already present are skipped."""
    from huggingface_hub import snapshot_download

    preset = get_preset(name)
    home = weights_home(weights_dir)
    if preset.checkpoint:
        say(f"{name} ships inside gen-align: nothing to download.")
        return []
    components = preset_components(preset, modalities)
    hub = [r for r in components if looks_like_hub_id(r.source)]
    if hub and not hub_reachable():
        raise WeightsNotFoundError(
            f"cannot download {name}: the Hugging Face hub cannot be reached from this machine (offline, or "
            "HF_HUB_OFFLINE=1). Run `gen-align download` on a machine with network and copy "
            f"{home} here (or point GEN_ALIGN_HOME at the copy)."
        )
    written = []
    for req in components:
        if looks_like_hub_id(req.source):  # always asked: the hub client completes a folder an earlier run began
            extra = _processor_subfolders(preset, req)
            repo, files = hub_plan(req, extra)
            target = home / repo
            say(f"{req.what}: {repo} ({len(files)} files) -> {target}")
            snapshot_download(repo, allow_patterns=files, local_dir=target)
            written.append(target)
        elif is_present(req, weights_dir):
            say(f"{req.what}: {_label(req)} is here already")
        else:
            url, what = _official(req.source)
            target = home / req.source
            say(f"{req.what}: {what} -> {target}")
            written.append(fetch_url(url, target))
    if not preset.checkpoint and calibration_file(name, weights_dir) is None:
        say(
            f"Last step, once: gen-align calibrate --preset {name} --images DIR (a few hundred natural images) "
            "measures the embedding norm the decoder is fed at."
        )
    return written


def fetch_url(url: str, target: str | os.PathLike, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``target``: into ``target.part`` first, continued with an HTTP range request when a
    partial file is there (a server that ignores the range restarts it), renamed when complete.

    Raises:
        WeightsNotFoundError: the server cannot be reached or the transfer broke off (the part is kept: running
            again continues it).
        OutputError: the file cannot be written (e.g. a full disk).
    """
    from tqdm.auto import tqdm

    target = Path(target)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
        raise WeightsNotFoundError(
            f"cannot download {url}: {err}. Check the network and run the same command again."
        ) from err
    with response:
        resumed = have > 0 and response.status == 206
        done = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = None if length is None else int(length) + done
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(part, "ab" if resumed else "wb")
        except OSError as err:
            raise OutputError(f"cannot write {part}: {err}. Pass another --weights-dir.") from err
        with (
            out,
            tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    chunk, broke = b"", err
                else:
                    broke = None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as err:
                    raise OutputError(
                        f"cannot write {part}: {err}. Free some space (or pass another --weights-dir) and run the "
                        "same command again: it continues from the part already fetched."
                    ) from err
                done += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if broke is not None or (total is not None and done != total):
        reason = f" ({type(broke).__name__})" if broke is not None else ""
        of = f" of {total}" if total is not None else ""
        raise WeightsNotFoundError(
            f"the download of {url.split('?')[0]} stopped at {done}{of} bytes{reason}; run the same command again to "
            f"continue it (the part is kept in {part})."
        )
    os.replace(part, target)
    return target


def _processor_subfolders(preset: Preset, req: Requirement) -> list[str]:
    """A tower's tokenizer / image-processor folder, which sits beside its model folder in the same repository."""
    extra = []
    for tower in preset.towers.values():
        if tower.get("source") == req.source and tower.get("subfolder") == req.subfolder:
            extra += [tower[k] for k in ("processor_subfolder", "tokenizer_subfolder") if tower.get(k)]
    return extra


def _official(source: str) -> tuple[str, str]:
    if source not in OFFICIAL_FILES:
        raise WeightsNotFoundError(
            f"{source} is not on the hub and gen-align knows no official URL for it; place the file under "
            "--weights-dir / GEN_ALIGN_HOME yourself."
        )
    return OFFICIAL_FILES[source]


def _official_fix(source: str) -> str | None:
    if source not in OFFICIAL_FILES:
        return None
    url, what = OFFICIAL_FILES[source]
    return f"not on the hub: {what}, {url.split('?')[0]}"


def _label(req: Requirement) -> str:
    return req.source + (f" (subfolder {req.subfolder})" if req.subfolder else "")
