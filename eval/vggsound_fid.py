"""FID of generated images against a manifest's reference frames, per condition (the paper's Table 3).

For every manifest item (the test clips) and every condition — ``text`` (T2I), ``audio`` (A2I), ``text+audio``
(a blend, (T+A)→I) and ``image`` (the decoder's self-reconstruction, the upper bound) — one image is generated
with seed ``seed + item index`` and written atomically as ``OUT/<condition>/<id>.png``. A rerun reuses the valid
PNGs already there and generates only the missing ones (``OUT/generation.json`` records the settings; other
settings are refused). Items lacking a condition's inputs are skipped for it and reported. A bad item (a corrupt or
silent input file, an empty caption, an unreadable reference frame) is left out, listed with its reason under
``failed`` in ``fid.json`` and tried again by a rerun; ``strict`` stops at the first one instead.

FID (and optionally KID) per condition is computed against the statistics of the items' ``image`` files, taken
from the reference-statistics cache (keyed by the manifest hash, the extractor and the resize mode) when present.
Writes ``OUT/fid.json``, ``OUT/fid.md`` (the table) and ``OUT/grids/<condition>.png``.

Under ``accelerate launch`` (``WORLD_SIZE`` > 1) the missing images are split over the processes
(``missing[rank::world]``), the reference statistics are computed jointly, and the main process computes the
scores after all have finished.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from gen_align import __version__
from gen_align.checks import choice, integer
from gen_align.data.manifest import Manifest, ManifestItem, manifest_hash, read_manifest
from gen_align.errors import BAD_INPUT_ERRORS, ConfigError, GenAlignError, InputFileError
from gen_align.io import FolderLock, write_json_atomic, write_text_atomic

from .features import INCEPTION, RESIZE_FILTERS, FeatureStatistics
from .fid import RankDeficientCovarianceWarning, feature_stats, kernel_inception_distance
from .stats_cache import reference_statistics

CONDITIONS = ("text", "audio", "text+audio", "image")
INPUTS = {"text": ("text",), "audio": ("audio",), "text+audio": ("text", "audio"), "image": ("image",)}
COLUMNS = {"text": "T2I", "audio": "A2I", "text+audio": "(T+A)→I", "image": "I→I (recon.)"}
GRID_MAX = 16
SETTINGS_FILE = "generation.json"


@dataclass(frozen=True)
class FIDOptions:
    """What to evaluate and how (see ``gen-align fid --help``)."""

    manifest: str
    conditions: tuple[str, ...] = CONDITIONS
    weights: dict[str, float] | None = None
    mode: str = "slerp"
    limit: int | None = None
    extractor: str = "inception"
    antialias: bool = True
    resize: str = "bicubic"
    kid: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    cache_dir: str | None = None
    refresh_reference: bool = False
    out: str = "results/fid"
    strict: bool = False
    max_audio_seconds: float | None = None


@dataclass
class FIDResult:
    """The written files and the JSON record (``record`` is empty on non-main processes)."""

    files: list[Path] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    generated: int = 0


def argument_names(names: Mapping[str, str] | None = None) -> dict[str, str]:
    """How the harness's messages name its arguments: each :class:`FIDOptions` field and each argument of the
    pipeline (:data:`gen_align.pipelines.arguments.ARGUMENT_NAMES`) by its own name, unless ``names`` says otherwise
    (``gen-align fid`` passes its flags)."""
    from gen_align.pipelines.arguments import ARGUMENT_NAMES

    return {**ARGUMENT_NAMES, **{f.name: f.name for f in dataclasses.fields(FIDOptions)}, **(names or {})}


def parse_conditions(
    spec: str | list[str] | tuple[str, ...], names: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """``"text,audio,text+audio,image"`` → a tuple of known conditions (no duplicates); ``names``: as
    :func:`argument_names`."""
    flag = argument_names(names)["conditions"]
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"{flag} is empty; pass some of {','.join(CONDITIONS)}.")
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ConfigError(f"unknown condition(s) {unknown}; use a comma-separated subset of {','.join(CONDITIONS)}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"{flag} names a condition twice: {names}.")
    return tuple(names)


def load_extractor(
    spec: str,
    *,
    antialias: bool = True,
    resize: str = "bicubic",
    names: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> FeatureStatistics:
    """A :class:`FeatureStatistics` for ``spec``: ``inception`` (the FID Inception), a TorchScript file, or
    ``package.module:Name`` (an ``nn.Module`` instance, or a class/factory called without arguments); ``names``: as
    :func:`argument_names`."""
    names = argument_names(names)
    resize = choice(resize, names["resize"], tuple(RESIZE_FILTERS))
    flag = names["extractor"]
    if spec in ("inception", INCEPTION):
        return FeatureStatistics(INCEPTION, antialias=antialias, resize=resize, **kwargs)
    module, name = _extractor_module(spec, flag)
    try:
        return FeatureStatistics(module, antialias=antialias, resize=resize, extractor_name=name, **kwargs)
    except GenAlignError as err:
        raise ConfigError(f"{flag} {spec}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a user module failing its dummy forward is a bad extractor
        raise ConfigError(
            f"{flag} {spec} does not map a (B, 3, H, W) uint8 batch to (B, F) features ({type(err).__name__}: {err})."
        ) from err


def _extractor_module(spec: str, flag: str) -> tuple[nn.Module, str]:
    hint = "pass inception, a TorchScript file (torch.jit.save) or package.module:Name naming an nn.Module"
    path = Path(spec)
    if path.is_file():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                return torch.jit.load(str(path), map_location="cpu"), f"torchscript:{path.name}"
        except Exception as err:  # noqa: BLE001 - any load failure means the file is not a TorchScript module
            raise ConfigError(f"{flag} {spec} is not a loadable TorchScript module ({err}); {hint}.") from err
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{flag} {spec!r} is neither inception, an existing file nor MODULE:NAME; {hint}.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module) and callable(obj):
            obj = obj()
    except Exception as err:  # noqa: BLE001 - import/attribute/constructor errors all mean "does not load"
        raise ConfigError(f"{flag} {spec} could not be loaded ({type(err).__name__}: {err}); {hint}.") from err
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"{flag} {spec} gives a {type(obj).__name__}, not an nn.Module; {hint}.")
    return obj, f"module:{spec}"


def image_name(item_id: str) -> str:
    """The file name of an item's generated image (ids with unsafe characters are percent-encoded)."""
    safe = item_id if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", item_id) else urllib.parse.quote(item_id, safe="")
    return f"{safe}.png"


def is_valid_png(path: Path) -> bool:
    """Whether ``path`` is a readable, complete image."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is regenerated
        return False


def run_fid(options: Any, fid: FIDOptions, decode: Any = None, *, names: Mapping[str, str] | None = None) -> FIDResult:
    """Generate the images each condition lacks, then score every condition against the reference frames.

    Args:
        options: where the models come from (a :class:`gen_align.pipelines.session.RuntimeOptions`: preset or space,
            decoder, device, dtype).
        fid: what to evaluate (:class:`FIDOptions`: the manifest, the conditions, the extractor, the output).
        decode: the sampling options (a :class:`gen_align.pipelines.pipeline.DecodeOptions`; default its
            defaults, seed 0).
        names: how messages name the arguments (default :func:`argument_names`; the CLI passes its flags).

    Returns:
        a :class:`FIDResult`: the files written (``fid.json``, ``fid.md``, the grids), the JSON record (empty on
        processes other than the main one under ``accelerate launch``) and the number of images generated.

    Raises:
        ConfigError: a bad option, an extractor that does not load, or an ``out`` folder holding images made with
            other settings.
        InputFileError: a manifest with fewer than 2 items, or items without a reference image.
        WeightsNotFoundError: the preset's or the space's weights are missing.

    Example:
        The mini world's test clips, through the shipped ``mini`` preset, scored with its attribute classifier::

            from gen_align.eval.vggsound_fid import FIDOptions, run_fid
            from gen_align.pipelines.session import RuntimeOptions
            from gen_align.pipelines.pipeline import DecodeOptions

            extractor = "gen_align.mini.recipes.classifier:shipped_extractor"
            fid = FIDOptions("world/test/manifest.jsonl", extractor=extractor)
            result = run_fid(RuntimeOptions(preset="mini"), fid, DecodeOptions(steps=10))
            print(result.record["conditions"]["audio"]["fid"])

        (``tests/test_public_api.py`` runs this example on a small world.)
    """
    from gen_align.pipelines.blend import MODES, validate_weights
    from gen_align.pipelines.decoders import resolve_device
    from gen_align.pipelines.pipeline import DecodeOptions

    names = argument_names(names)
    conditions = parse_conditions(fid.conditions, names)
    choice(fid.mode, names["mode"], MODES)
    decode = decode or DecodeOptions()
    decode.check(names)
    limit = None if fid.limit is None else integer(fid.limit, names["limit"])
    kid_subsets = integer(fid.kid_subsets, names["kid_subsets"])
    kid_subset_size = integer(fid.kid_subset_size, names["kid_subset_size"], low=2)
    if fid.weights is not None and "text+audio" not in conditions:
        raise ConfigError(
            f"{names['weights']} applies to the text+audio condition; add it to {names['conditions']} or drop "
            f"{names['weights']}."
        )
    weights = validate_weights(fid.weights, ["text", "audio"])
    device = resolve_device(options.device)
    rank, world, state = _process_state(device)
    if state is not None and device.type == "cuda":
        device = state.device  # one GPU per process
        options = dataclasses.replace(options, device=str(device))

    manifest = read_manifest(fid.manifest)
    full_hash = manifest_hash(manifest)
    subset = _limited(manifest, limit)
    lacking = subset.lacking("image")
    if lacking:
        shown = ", ".join(item_id for item_id, _ in lacking[:5])
        raise InputFileError(
            f"{len(lacking)} of {len(subset)} items in {manifest.path} have no reference image file (e.g. {shown}); "
            "FID needs every item's frame: add the images or remove those items."
        )
    bad_frames: list[dict[str, str]] = []
    if not fid.strict:
        subset, bad_frames = _without_bad_frames(subset)
    if len(subset) < 2:
        raise InputFileError(f"{manifest.path} has {len(subset)} item(s) in use; FID needs at least 2.")
    statistics = load_extractor(fid.extractor, antialias=fid.antialias, resize=fid.resize, names=names).to(device)
    reference = reference_statistics(subset, statistics, cache_dir=fid.cache_dir, refresh=fid.refresh_reference)
    reference_cached = int(statistics.num_samples) == 0

    with FolderLock(fid.out, f"rank{rank}"):  # a second run into the same folder is refused while this one runs
        out = Path(fid.out)
        plan = {c: _plan(subset, c, out) for c in conditions}
        missing = [
            (c, index, item) for c in conditions for index, item, path in plan[c]["todo"] if not is_valid_png(path)
        ]
        settings = _settings(options, decode, weights, fid.mode, full_hash)
        saved = _read_settings(out / SETTINGS_FILE)
        if saved is not None and saved.get("settings") != settings:
            differ = sorted(k for k in settings if saved.get("settings", {}).get(k) != settings[k])
            raise ConfigError(
                f"{out / SETTINGS_FILE} records images made with other settings (differing: {', '.join(differ)}); "
                f"pass another {names['out']}, or delete that folder to regenerate everything."
            )
        mine = missing[rank::world]
        models = saved.get("models") if saved is not None else None
        failures: list[dict[str, str]] = []
        if mine or (rank == 0 and models is None):
            models = _generate(
                options, decode, weights, fid.mode, mine, out, settings, names,
                write_settings=rank == 0, failures=None if fid.strict else failures,
                max_audio_seconds=fid.max_audio_seconds,
            )  # fmt: skip
        write_json_atomic(out / f"failed-rank{rank}.json", failures)
        if state is not None:
            state.wait_for_everyone()
            if rank != 0:
                return FIDResult(generated=len(mine))
            models = (_read_settings(out / SETTINGS_FILE) or {}).get("models", models)

        failed = _read_failures(out, world)
        result = FIDResult(generated=len(missing) - len(failed))
        reference_features = statistics.extract([item.image for item in subset.items]) if fid.kid else None
        scores: dict[str, Any] = {}
        for condition in conditions:
            lost = {f["id"]: f["error"] for f in failed if f["condition"] == condition}
            paths = [path for _, item, path in plan[condition]["todo"] if item.id not in lost]
            entry: dict[str, Any] = {
                "column": COLUMNS[condition],
                "images": len(paths),
                "skipped": plan[condition]["skipped"],
                "failed": [{"id": i, "error": e} for i, e in lost.items()],
                "folder": condition,
            }
            if len(paths) < 2:
                entry |= {"fid": None, "note": f"{len(paths)} image(s): FID needs at least 2"}
                scores[condition] = entry
                continue
            features = statistics.extract([str(p) for p in paths])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RankDeficientCovarianceWarning)
                entry["fid"] = reference.fid(feature_stats(features, f"{condition} features"))
            notes = [str(w.message) for w in caught if issubclass(w.category, RankDeficientCovarianceWarning)]
            if notes:
                entry["warnings"] = sorted(set(notes))
            if reference_features is not None:
                size = min(kid_subset_size, reference_features.shape[0], features.shape[0])
                mean, std = kernel_inception_distance(reference_features, features, kid_subsets, size, seed=decode.seed)
                entry["kid"] = {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": size}
            grid_path = out / "grids" / image_name(condition.replace("+", "_"))
            result.files.append(_save_grid(paths[:GRID_MAX], grid_path))
            entry["grid"] = str(grid_path.relative_to(out))
            scores[condition] = entry

        record = {
            "library_version": __version__,
            "manifest": {"path": str(manifest.path), "hash": full_hash, "items": len(manifest), "used": len(subset)},
            "limit": limit,
            "models": models,
            "settings": settings,
            "seeds": {"base": decode.seed, "rule": "seed + item index (manifest order)"},
            "extractor": {**statistics.fingerprint(), "spec": fid.extractor},
            "reference": {"n": reference.n, "cached": reference_cached, "cache_dir": fid.cache_dir},
            "generated_this_run": len(missing) - len(failed),
            "bad_reference_frames": bad_frames,
            "conditions": scores,
            "average": _average(scores),
        }
        result.record = record
        result.files.append(write_json_atomic(out / "fid.json", record))
        result.files.append(write_text_atomic(out / "fid.md", fid_table(record)))
        return result


def fid_warnings(record: dict[str, Any]) -> list[str]:
    """What makes a score of ``record`` unreliable: rank-deficient covariances (fewer images than feature
    dimensions) and negative KIDs (the unbiased estimate below zero: within noise of 0 at this item count)."""
    notes = []
    for condition, entry in record["conditions"].items():
        notes += [f"{COLUMNS[condition]}: {w}" for w in entry.get("warnings", [])]
        if "kid" in entry and entry["kid"]["mean"] < 0:
            notes.append(
                f"{COLUMNS[condition]}: KID {entry['kid']['mean']:.3g} < 0, the unbiased estimate is within noise of 0 "
                f"with {entry['images']} images; use more items."
            )
    return notes


def fid_table(record: dict[str, Any]) -> str:
    """The Markdown table of Table 3's shape: decoder × method rows; T2I, A2I, (T+A)→I, Avg, I→I columns."""
    scores = record["conditions"]
    models = record.get("models") or {}
    decoder = (models.get("decoder") or {}).get("kind", "?")
    method = models.get("method", "?")
    header = ["Decoder", "Method", COLUMNS["text"], COLUMNS["audio"], COLUMNS["text+audio"], "Avg", COLUMNS["image"]]
    cells = [decoder, method]
    for condition in ("text", "audio", "text+audio"):
        cells.append(_cell(scores.get(condition)))
    cells.append("—" if record["average"] is None else f"{record['average']:.2f}")
    cells.append(_cell(scores.get("image")))
    lines = [
        f"FID ↓ against {record['reference']['n']} reference frames of {Path(record['manifest']['path']).name} "
        f"(extractor {record['extractor']['extractor']['name']}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|",
        "| " + " | ".join(cells) + " |",
    ]
    if any("kid" in s for s in scores.values()):
        lines += ["", "| Condition | KID mean | KID std |", "|---|---:|---:|"]
        lines += [
            f"| {COLUMNS[c]} | {s['kid']['mean']:.4g} | {s['kid']['std']:.2g} |"
            for c, s in scores.items()
            if "kid" in s
        ]
    notes = [f"{COLUMNS[c]}: {len(s['skipped'])} item(s) skipped (no input)" for c, s in scores.items() if s["skipped"]]
    notes += [
        f"{COLUMNS[c]}: {len(s['failed'])} item(s) left out (bad input, listed in fid.json)"
        for c, s in scores.items()
        if s.get("failed")
    ]
    if record.get("bad_reference_frames"):
        notes.append(f"{len(record['bad_reference_frames'])} item(s) left out: unreadable reference frame")
    notes += fid_warnings(record)
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry.get("fid") is None:
        return "—"
    return f"{entry['fid']:.2f}"


def _average(scores: dict[str, Any]) -> float | None:
    values = [scores[c]["fid"] for c in ("text", "audio", "text+audio") if c in scores and scores[c]["fid"] is not None]
    return sum(values) / len(values) if values else None


def _limited(manifest: Manifest, limit: int | None) -> Manifest:
    if limit is None or limit >= len(manifest):
        return manifest
    items = manifest.items[:limit]
    ids = {item.id for item in items}
    missing = [m for m in manifest.missing if m[0] in ids]
    return Manifest(manifest.path, manifest.root, items, missing, manifest.modalities)


def _plan(manifest: Manifest, condition: str, out: Path) -> dict[str, Any]:
    todo, skipped = [], []
    for index, item in enumerate(manifest.items):
        if all(manifest.available(item, m) for m in INPUTS[condition]):
            todo.append((index, item, out / condition / image_name(item.id)))
        else:
            skipped.append(item.id)
    return {"todo": todo, "skipped": skipped}


def _settings(options: Any, decode: Any, weights: Any, mode: str, manifest: str) -> dict[str, Any]:
    """What determines the generated images (a rerun with other values refuses to mix them)."""
    d = asdict(decode)
    d.pop("batch_size", None)
    return {
        "preset": options.preset,
        "space": None if options.space is None else str(Path(options.space).resolve()),
        "decoder": options.decoder,
        "manifest": manifest,
        "weights": weights,
        "mode": mode,
        **d,
    }


def _read_settings(path: Path) -> dict[str, Any] | None:
    import json

    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(f"{path} is unreadable ({err}); delete it together with the images next to it.") from err
    return data if isinstance(data, dict) else None


def _generate(
    options: Any,
    decode: Any,
    weights: dict[str, float] | None,
    mode: str,
    missing: list[tuple[str, int, ManifestItem]],
    out: Path,
    settings: dict[str, Any],
    names: Mapping[str, str],
    *,
    write_settings: bool,
    failures: list[dict[str, str]] | None = None,
    max_audio_seconds: float | None = None,
) -> dict[str, Any]:
    """Encode the inputs of ``missing``, decode them in chunks and save each PNG; returns the models record.

    With a ``failures`` list, an item whose input the encoder refuses is appended to it (``{"condition", "id",
    "error"}``) and not generated; without one, the error is raised. Audio files longer than ``max_audio_seconds``
    (from their header) are such inputs."""
    from gen_align.encoders.audio_io import check_duration
    from gen_align.pipelines.blend import blend
    from gen_align.pipelines.pipeline import GenAlignPipeline
    from gen_align.pipelines.render import save_png
    from gen_align.pipelines.session import Session

    kinds = sorted({kind for condition, _, _ in missing for kind in INPUTS[condition]}) or ["text"]
    session = Session(options, kinds, names)
    pipe = GenAlignPipeline(session, keep_encoders=False)  # every input is encoded before the decoder loads
    sampling = decode.sampling()
    decode.call_kwargs(session.info.kind, names)  # a wrong option fails before any encoding
    config = session.space.config if session.space is not None else {}
    objective = (config.get("training") or {}).get("objective")
    objective = objective.get("name") if isinstance(objective, dict) else objective  # the trainer records a dict
    method = objective or config.get("preset") or Path(session.source).name
    models = {**session.describe(), "method": method}
    embeds: dict[tuple[str, str], torch.Tensor | GenAlignError] = {}
    directions, kept = [], []
    for entry in missing:
        condition, _, item = entry
        raw = {}
        for kind in INPUTS[condition]:
            if (item.id, kind) not in embeds:
                try:
                    if kind == "audio" and max_audio_seconds is not None:
                        check_duration(item.get(kind), max_audio_seconds, hint=f"{names['max_audio_seconds']} sets it")
                    embeds[(item.id, kind)] = pipe.embed(**{kind: str(item.get(kind))})[kind]
                except BAD_INPUT_ERRORS as err:
                    if failures is None:
                        raise
                    embeds[(item.id, kind)] = err
            raw[kind] = embeds[(item.id, kind)]
        errors = [f"{kind}: {value}" for kind, value in raw.items() if isinstance(value, GenAlignError)]
        if errors:
            failures.append({"condition": condition, "id": item.id, "error": "; ".join(errors)})  # type: ignore[union-attr]
            continue
        directions.append(blend(raw, weights if condition == "text+audio" else None, mode))
        kept.append(entry)
    missing = kept
    models["sampling"] = pipe.sampling_record(**sampling)
    if write_settings:
        write_json_atomic(out / SETTINGS_FILE, {"settings": settings, "models": models})
    chunk = decode.batch_size or 32
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        z = torch.cat(directions[start : start + chunk])
        images = pipe.decode(z, seed=[decode.seed + index for _, index, _ in part], **sampling)
        for (condition, _, item), image in zip(part, images, strict=True):
            save_png(image, out / condition / image_name(item.id))
    return models


def _without_bad_frames(manifest: Manifest) -> tuple[Manifest, list[dict[str, str]]]:
    """``manifest`` without the items whose reference frame does not load as an image, and those items' reasons."""
    from gen_align.encoders.image_io import load_image

    bad = []
    for item in manifest.items:
        try:
            load_image(item.image)
        except BAD_INPUT_ERRORS as err:
            bad.append({"id": item.id, "error": str(err)})
    if not bad:
        return manifest, []
    ids = {b["id"] for b in bad}
    items = [item for item in manifest.items if item.id not in ids]
    missing = [m for m in manifest.missing if m[0] not in ids]
    return Manifest(manifest.path, manifest.root, items, missing, manifest.modalities), bad


def _read_failures(out: Path, world: int) -> list[dict[str, str]]:
    """The items each process could not generate in this run (``failed-rank{r}.json``)."""
    import json

    failed = []
    for rank in range(world):
        try:
            failed += json.loads((out / f"failed-rank{rank}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return failed


def _save_grid(paths: list[Path], path: Path) -> Path:
    from gen_align.pipelines.render import grid, save_png

    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return save_png(grid(images, columns=math.ceil(math.sqrt(len(images)))), path)


def _process_state(device: torch.device) -> tuple[int, int, Any]:
    """(rank, world size, accelerate PartialState or None) — a state only when launched with several processes
    (``accelerate launch`` / ``torchrun``; gloo on the CPU, one GPU per process on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    return state.process_index, state.num_processes, state
