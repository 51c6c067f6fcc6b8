"""Captions for a manifest's frames from a transformers image-captioning model, as ``id → caption`` JSONL.

VGGSound has no captions; the UniAlign paper captions every video with VAST's captioner, which has no transformers
class. Any captioner that ``AutoModelForImageTextToText`` loads works here (BLIP, BLIP-2, GIT, Florence-2 — the last
with ``prompt="<CAPTION>"``). The default is **BLIP large** (``Salesforce/blip-image-captioning-large``): a native
transformers class (no remote code), 470 M parameters, so a 200 k-frame run is practical on one GPU and possible on a
CPU; BSD-3 licensed; trained with captioning-and-filtering (CapFilt) on web images, with COCO captions as its
reference style, which is the register our text towers (CLIP) read best. BLIP-2 / Florence-2 caption in more detail
at 8× the cost.

Each item's ``image`` is captioned (for ``gen-align data vggsound`` the clip's middle frame, or the average of
``--frames`` around it), ``batch_size`` at a time with beam search. The run is resumable: ids already in ``out`` are
skipped, each batch is appended and flushed to disk before the next one starts, so a killed run loses at most one
batch (a line cut by the kill is dropped on the next run). A frame that is missing, unreadable or smaller than
:data:`MIN_SIDE` pixels on a side is reported and skipped — never captioned. Under ``accelerate launch`` process
``r`` of ``w`` captions ``pending[r::w]`` into ``out.rank{r}.part`` and the main process appends them to ``out``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from gen_align.checks import integer
from gen_align.data.manifest import read_manifest
from gen_align.encoders.image_io import load_image
from gen_align.errors import BAD_INPUT_ERRORS, InputDataError, InputFileError, OutputError
from gen_align.io import FolderLock
from gen_align.weights import load_from_source

DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-large"
MIN_SIDE = 8  # pixels: a 1×1 or 4×4 frame is a failed decode, not a picture


class Captioner:
    """A transformers captioning model and its processor: ``caption(images) -> list[str]``."""

    def __init__(
        self,
        source: str = DEFAULT_CAPTION_MODEL,
        *,
        device: str | torch.device | None = None,
        weights_dir: str | os.PathLike | None = None,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 3,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.source, self.prompt = source, prompt
        self.max_new_tokens = integer(max_new_tokens, "max_new_tokens", 1)
        self.num_beams = integer(num_beams, "num_beams", 1)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        what = f"captioning model {source}"
        self.processor = load_from_source(AutoProcessor.from_pretrained, source, what=what, weights_dir=weights_dir)
        model = load_from_source(
            AutoModelForImageTextToText.from_pretrained, source, what=what, weights_dir=weights_dir
        )
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per RGB image (the prompt, when the model echoes it, removed)."""
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=list(images), text=text, return_tensors="pt").to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        if self.prompt:
            texts = [t[len(self.prompt) :] if t.startswith(self.prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]

    def describe(self) -> dict[str, Any]:
        return {"model": self.source, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens,
                "num_beams": self.num_beams}  # fmt: skip


def frame_for_caption(path: str | os.PathLike) -> Image.Image:
    """The frame as RGB, or an InputFileError / InputDataError for a missing, corrupt or degenerate one."""
    image = load_image(path)
    if min(image.size) < MIN_SIDE:
        raise InputDataError(
            f"{path} is {image.size[0]}×{image.size[1]} pixels, smaller than {MIN_SIDE} on a side: a failed frame "
            "decode, not a picture; decode the clip again (gen-align data vggsound --overwrite)."
        )
    return image


def read_done(path: Path) -> dict[str, str]:
    """``id → caption`` of a captions JSONL; a last line cut by a kill is removed from the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    done, good = {}, 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            done[str(record["id"])] = str(record["caption"])
        except (ValueError, KeyError, TypeError):
            if line.endswith(b"\n"):
                raise InputFileError(
                    f'{path} has a line that is not a {{"id", "caption"}} JSON record (byte {good}): it is not a '
                    "captions file of this command; write to another --out."
                ) from None
            break  # torn by a kill: drop it
        good += len(line)
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _append(path: Path, records: list[dict[str, str]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OutputError(
            f"could not append to {path}: {err.strerror or err}. The captions written so far are kept; free space or "
            "fix the permission and run the same command again (it resumes)."
        ) from err


def caption_manifest(
    manifest: str | os.PathLike,
    captioner: Captioner,
    out: str | os.PathLike,
    *,
    batch_size: int = 16,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Caption every item of ``manifest`` that has an image into the JSONL ``out`` (see the module docstring).

    Returns ``{"out", "captioned_now", "already", "skipped": [{"id", "error"}], "without_image": [...]}``; with
    ``strict`` the first bad frame stops the run instead (what was written stays)."""
    from accelerate import PartialState

    batch_size = integer(batch_size, "--batch-size", 1)
    out = Path(out)
    state = PartialState()
    data = read_manifest(manifest)
    target = out if state.num_processes == 1 else out.with_name(f"{out.name}.rank{state.process_index}.part")
    lock = FolderLock(out.parent, f"caption-{out.name}-rank{state.process_index}").acquire()
    try:
        done = read_done(out)
        if target != out:
            done.update(read_done(target))
        with_image = [item for item in data.items if item.image is not None]
        pending = [item for item in with_image if item.id not in done][state.process_index :: state.num_processes]
        skipped: list[dict[str, str]] = []
        written = 0
        bar = tqdm(total=len(pending), desc="caption", unit="frame", disable=not (progress and state.is_main_process))
        for start in range(0, len(pending), batch_size):
            batch, frames = [], []
            for item in pending[start : start + batch_size]:
                try:
                    frames.append(frame_for_caption(item.image))
                    batch.append(item)
                except BAD_INPUT_ERRORS as err:
                    if strict:
                        raise
                    skipped.append({"id": item.id, "error": str(err)})
            if batch:
                captions = captioner.caption(frames)
                records = [{"id": i.id, "caption": c} for i, c in zip(batch, captions, strict=True) if c]
                skipped += [{"id": i.id, "error": "the model returned an empty caption"}
                            for i, c in zip(batch, captions, strict=True) if not c]  # fmt: skip
                _append(target, records)
                written += len(records)
            bar.update(len(pending[start : start + batch_size]))
        bar.close()
    finally:
        lock.release()
    state.wait_for_everyone()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        skipped, written = gather_object(skipped), sum(gather_object([written]))
        if state.is_main_process:
            _merge_parts(out, state.num_processes)
    return {
        "out": str(out),
        "captioner": captioner.describe(),
        "captioned_now": written,
        "already": len(done),
        "skipped": skipped,
        "without_image": [item.id for item in data.items if item.image is None],
    }


def _merge_parts(out: Path, world: int) -> None:
    """Append each process's part to ``out`` (ids already there are not repeated), then remove the parts."""
    lock = FolderLock(out.parent, f"caption-{out.name}-rank0").acquire()
    try:
        have = read_done(out)
        for rank in range(world):
            part = out.with_name(f"{out.name}.rank{rank}.part")
            new = [{"id": i, "caption": c} for i, c in read_done(part).items() if i not in have]
            _append(out, new)
            have.update({r["id"]: r["caption"] for r in new})
            part.unlink(missing_ok=True)
    finally:
        lock.release()
