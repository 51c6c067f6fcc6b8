"""The Gradio modality-interpolation demo: mix text, audio and an image, see what the decoder makes of the blend.

A thin layer over :class:`~gen_align.pipelines.pipeline.GenAlignPipeline`: the page's inputs become checked
:class:`Condition` s and go to one shared pipeline (space and decoder loaded once at startup), exactly as
``gen-align generate`` / ``interpolate`` do — only nothing is written to disk. Every :class:`GenAlignError`
reaches the page as a ``gr.Error`` message.

A selector in the page offers the presets whose weights are present (plus the ``--space`` checkpoint); the one the
command chose is loaded at startup, the others on first use (:class:`ModelPool`, at most ``keep`` loaded at once).
"""

from __future__ import annotations

import functools
import gc
import json
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from gen_align.checks import choice, integer
from gen_align.encoders.audio_io import load_audio
from gen_align.errors import ConfigError, GenAlignError, InputFileError
from gen_align.mini import shipped
from gen_align.pipelines.blend import MODES, validate_weights
from gen_align.pipelines.decoders import DiffusersDecoder, EmbeddingStats
from gen_align.pipelines.generate import DecodeOptions
from gen_align.pipelines.pipeline import GenAlignOutput, GenAlignPipeline
from gen_align.pipelines.presence import available_presets, default_preset
from gen_align.pipelines.render import strip
from gen_align.pipelines.session import CONDITION_KINDS, Condition, RuntimeOptions, Session, check_condition
from gen_align.space import AlignedSpace

MAX_IMAGES = 8
MAX_FRAMES = 12
EXAMPLE_PROMPTS = ("a dog barking in the rain", "a church bell at dawn", "waves crashing on a rocky beach")


def space_kinds(options: RuntimeOptions) -> tuple[RuntimeOptions, list[str]]:
    """The options with the space pinned (``--space``, ``--preset``, else the smallest present preset) and the
    input kinds it can encode (its towers; audio only with a trained audio head)."""
    if options.preset and options.space:
        raise ConfigError("pass either --preset or --space, not both.")
    source = options.space or options.preset or default_preset(["text"], options.weights_dir)
    config = AlignedSpace.from_pretrained(source, modalities=[]).config
    kinds = [k for k in CONDITION_KINDS if k in config["towers"] and (k != "audio" or "audio" in config["heads"])]
    if not options.space:
        options = replace(options, preset=source)
    return options, kinds


class Models:
    """One :class:`GenAlignPipeline` (space and decoder loaded once) shared by every request, behind one lock."""

    def __init__(self, options: RuntimeOptions, *, max_audio_seconds: float = 30.0) -> None:
        options, self.kinds = space_kinds(replace(options, progress=True))  # bars feed the page's progress
        self.options = options
        self.name: str = options.space or options.preset  # its entry in the page's selector
        self.max_audio_seconds = max_audio_seconds
        self.pipe = GenAlignPipeline(Session(options, self.kinds), keep_encoders=True)
        self.lock = threading.Lock()

    @property
    def session(self) -> Session:
        return self.pipe.session

    @property
    def decoder(self) -> DiffusersDecoder:
        return self.pipe.decoder

    @property
    def stats(self) -> EmbeddingStats:
        return self.pipe.stats

    def condition(self, kind: str, value: Any) -> Condition | None:
        """A checked condition for one input of the page (``None`` when it is empty)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if kind not in self.kinds:
            raise ConfigError(f"this space cannot encode {kind} (it takes {', '.join(self.kinds)}); leave it empty.")
        condition = check_condition(kind, str(value))
        if kind == "audio":
            load_audio(condition.value, max_seconds=self.max_audio_seconds)  # too long or unreadable: a clear error
        return condition

    def conditions(self, text: str | None, audio: str | None, image: str | None) -> list[Condition]:
        """The non-empty inputs of the page as conditions, in the order text, audio, image."""
        given = (self.condition(k, v) for k, v in zip(CONDITION_KINDS, (text, audio, image), strict=True))
        return [c for c in given if c is not None]

    def generate(
        self, conditions: list[Condition], weights: dict[str, float], mode: str, n: int, options: DecodeOptions
    ) -> GenAlignOutput:
        """``n`` images of the blend of ``conditions`` (the pipeline's call, under the lock)."""
        inputs = {c.kind: c.value for c in conditions}
        with self.lock:
            return self.pipe(**inputs, weights=weights, mode=mode, num_images=n, **_sampling(options))

    def interpolate(self, a: Condition, b: Condition, frames: int, mode: str, options: DecodeOptions) -> GenAlignOutput:
        """``frames`` images from ``a`` to ``b`` (the pipeline's interpolation, under the lock)."""
        with self.lock:
            return self.pipe.interpolate(
                {a.kind: a.value}, {b.kind: b.value}, frames=frames, mode=mode, **_sampling(options)
            )


def _sampling(options: DecodeOptions) -> dict[str, Any]:
    """The pipeline's sampling arguments from the page's options."""
    fields = ("seed", "steps", "guidance", "noise_level", "batch_size", "height", "width")
    return {name: getattr(options, name) for name in fields}


def header(models: Models) -> str:
    """Markdown line naming the active space, decoder, device and input kinds."""
    desc = models.session.describe()
    return (
        f"Space `{desc['space']}` → {desc['decoder']['kind']} decoder `{desc['decoder']['source']}` "
        f"on {desc['device']} ({desc['dtype']}). Inputs: {', '.join(models.kinds)}."
    )


def selector_choices(options: RuntimeOptions) -> list[tuple[str, str]]:
    """``(label, value)`` of the page's preset selector: the ``--space`` checkpoint (if any), then the presets whose
    weights are present, smallest first; the preset the command chose is always among them."""
    presets = available_presets(["text"], options.weights_dir)
    if options.preset and options.preset not in presets:
        presets.insert(0, options.preset)
    space = [(f"{Path(options.space).name} (--space {options.space})", options.space)] if options.space else []
    return space + [(name, name) for name in presets]


class ModelPool:
    """The models behind the page's preset selector: the command's choice is loaded already, every other entry on
    first use; at most ``keep`` stay loaded (least recently used dropped first), so no preset is held twice."""

    def __init__(self, models: Models, *, keep: int = 2) -> None:
        self.keep = integer(keep, "--keep-models", low=1)
        self.default = models.name
        self.base = models.options
        self.max_audio_seconds = models.max_audio_seconds
        self.choices = selector_choices(models.options)
        self.names = [value for _, value in self.choices]
        self._loaded: OrderedDict[str, Models] = OrderedDict([(models.name, models)])
        self._lock = threading.Lock()

    def options(self, name: str) -> RuntimeOptions:
        """The runtime options of entry ``name``: the command's own for its choice; another preset gets its own
        decoder (``--decoder`` applies to the command's choice only)."""
        if name == self.default:
            return self.base
        if name not in self.names:
            raise ConfigError(
                f"unknown or absent preset {name!r}; this app offers {self.names} (a preset is offered when its "
                "weights are present under --weights-dir or in the Hugging Face cache)."
            )
        return replace(self.base, preset=name, space=None, decoder=None)

    def kinds(self) -> list[str]:
        """The input kinds any entry can encode (configs only, nothing loaded), in page order."""
        found = {kind for name in self.names for kind in space_kinds(self.options(name))[1]}
        return [k for k in CONDITION_KINDS if k in found]

    @property
    def loaded(self) -> list[str]:
        """Entries loaded now, least recently used first."""
        return list(self._loaded)

    def get(self, name: str | None = None) -> Models:
        """The models of entry ``name`` (default: the command's choice), loaded once."""
        name = name or self.default
        options = self.options(name)
        with self._lock:
            models = self._loaded.pop(name, None)
            if models is None:
                while len(self._loaded) >= self.keep:  # free before loading: peak memory stays at ``keep`` models
                    self._loaded.popitem(last=False)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                models = Models(options, max_audio_seconds=self.max_audio_seconds)
            self._loaded[name] = models
        return models


def normalised_weights(kinds: list[str], values: list[float]) -> dict[str, float]:
    """The weights of the given inputs, normalised to sum 1 (the same check as the blend)."""
    return validate_weights(dict(zip(kinds, (float(v) for v in values), strict=True)), kinds)


def weights_text(text: str | None, audio: str | None, image: str | None, wt: float, wa: float, wi: float) -> str:
    """Markdown line with the normalised weights of the inputs given so far."""
    given = [(k, w) for k, v, w in zip(CONDITION_KINDS, (text, audio, image), (wt, wa, wi), strict=True) if v]
    if not given:
        return "Normalised weights: give at least one input."
    try:
        weights = normalised_weights([k for k, _ in given], [w for _, w in given])
    except GenAlignError as err:
        return f"Normalised weights: {err}"
    return "Normalised weights: " + ", ".join(f"{k} **{v:.2f}**" for k, v in weights.items())


def _given(value: float | None, name: str) -> float:
    if value is None:
        raise ConfigError(f"{name} is empty; enter a number.")
    return value


def _bounded(value: float | None, name: str, low: int, high: int) -> int:
    number = integer(int(_given(value, name)), name, low=low)
    if number > high:
        raise ConfigError(f"{name} must be at most {high} in the demo, got {number}; use the CLI for more.")
    return number


def _decode_options(
    base: DecodeOptions, seed: float | None, steps: float | None, guidance: float | None
) -> DecodeOptions:
    seed, steps, guidance = (_given(v, k) for v, k in ((seed, "seed"), (steps, "steps"), (guidance, "guidance")))
    options = replace(base, seed=int(seed), steps=int(steps), guidance=float(guidance))
    options.check()
    return options


def models_report(models: Models) -> dict[str, Any]:
    """The space and decoder that made a result (as in the CLI's sidecars)."""
    desc = models.session.describe()
    return {"space": desc["space"], "decoder": desc["decoder"]}


def run_generate(
    models: Models,
    base: DecodeOptions,
    text: str | None,
    audio: str | None,
    image: str | None,
    w_text: float,
    w_audio: float,
    w_image: float,
    mode: str,
    seed: float,
    steps: float,
    guidance: float,
    n: float,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """``n`` images of the blend of the given inputs (image ``i`` seeded ``seed + i``) and the embedding report."""
    conditions = models.conditions(text, audio, image)
    if not conditions:
        raise ConfigError("nothing given: type a text, upload or record audio, or upload an image.")
    by_kind = dict(zip(CONDITION_KINDS, (w_text, w_audio, w_image), strict=True))
    weights = normalised_weights([c.kind for c in conditions], [by_kind[c.kind] for c in conditions])
    choice(mode, "blend mode", MODES)
    n = _bounded(n, "number of images", 1, MAX_IMAGES)
    options = _decode_options(base, seed, steps, guidance)
    output = models.generate(conditions, weights, mode, n, options)
    weights = {k: round(v, 4) for k, v in weights.items()}
    return output.images, {"weights": weights, "mode": mode, **output.record["embedding"], **models_report(models)}


def run_interpolate(
    models: Models,
    base: DecodeOptions,
    a_text: str | None,
    a_audio: str | None,
    a_image: str | None,
    b_text: str | None,
    b_audio: str | None,
    b_image: str | None,
    frames: float,
    mode: str,
    seed: float,
    steps: float,
    guidance: float,
) -> tuple[Image.Image, dict[str, Any]]:
    """A strip of ``frames`` images from input A to input B (endpoints included, one seed for all)."""
    ends = []
    for name, values in (("A", (a_text, a_audio, a_image)), ("B", (b_text, b_audio, b_image))):
        given = models.conditions(*values)
        if len(given) != 1:
            raise ConfigError(f"input {name}: give exactly one of text, audio or image (got {len(given)}).")
        ends.append(given[0])
    choice(mode, "interpolation mode", MODES)
    frames = _bounded(frames, "frames", 2, MAX_FRAMES)
    options = _decode_options(base, seed, steps, guidance)
    output = models.interpolate(ends[0], ends[1], frames, mode, options)
    record = output.record
    report = {
        "start": record["start"],
        "end": record["end"],
        "t": [round(t, 4) for t in record["t"]],
        "mode": mode,
        **record["embedding"],
        **models_report(models),
    }
    return strip(output.images), report


def _page_errors(fn: Any) -> Any:
    """``fn`` with every GenAlignError turned into a ``gr.Error`` (a message in the page, no traceback)."""

    @functools.wraps(fn)  # keeps the signature, so Gradio still sees the gr.Progress parameter
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GenAlignError as err:
            raise gr.Error(str(err)) from err

    return wrapped


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


def build_demo(
    models: Models | ModelPool,
    *,
    decode: DecodeOptions | None = None,
    concurrency: int = 1,
    examples_dir: str | Path | None = None,
    keep: int = 2,
) -> gr.Blocks:
    """The page on ``models``: a preset selector, a Generate tab, an Interpolate tab, an embeddings panel; queued
    with at most ``concurrency`` requests running at once. ``decode`` supplies the sampling defaults (CLI options);
    a plain :class:`Models` becomes a :class:`ModelPool` keeping at most ``keep`` presets loaded."""
    pool = models if isinstance(models, ModelPool) else ModelPool(models, keep=keep)
    base = decode or DecodeOptions()
    base.check()
    concurrency = integer(concurrency, "--concurrency", low=1)
    first = pool.get()
    kinds = pool.kinds()
    shown_examples = examples("audio" in kinds, examples_dir)

    def sampling_defaults(models: Models) -> tuple[int, float]:
        steps = base.steps or models.decoder.default_steps
        return steps, models.decoder.default_guidance if base.guidance is None else base.guidance

    steps, guidance = sampling_defaults(first)

    # Explicit positional parameters: Gradio injects gr.Progress only there; track_tqdm shows the decoder's
    # denoising progress bar in the page while a generation runs.
    def generate(  # noqa: PLR0913
        text: Any,
        audio: Any,
        image: Any,
        wt: Any,
        wa: Any,
        wi: Any,
        mode: Any,
        seed: Any,
        steps: Any,
        guidance: Any,
        n: Any,
        preset: Any,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple[list[Image.Image], dict[str, Any]]:
        return run_generate(pool.get(preset), base, text, audio, image, wt, wa, wi, mode, seed, steps, guidance, n)

    def interpolate_strip(  # noqa: PLR0913
        a_text: Any,
        a_audio: Any,
        a_image: Any,
        b_text: Any,
        b_audio: Any,
        b_image: Any,
        frames: Any,
        mode: Any,
        seed: Any,
        steps: Any,
        guidance: Any,
        preset: Any,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple[Image.Image, dict[str, Any]]:
        args = (a_text, a_audio, a_image, b_text, b_audio, b_image, frames, mode, seed, steps, guidance)
        return run_interpolate(pool.get(preset), base, *args)

    def select(preset: Any, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:  # noqa: B008
        models = pool.get(preset)  # loads it now (once), so the next generation starts at once
        steps, guidance = sampling_defaults(models)
        return header(models), steps, guidance, steps, guidance

    def sampling() -> tuple[gr.Number, gr.Slider, gr.Slider]:
        return (
            gr.Number(value=base.seed, label="seed", precision=0, minimum=0),
            gr.Slider(1, max(100, steps), value=steps, step=1, label="steps"),
            gr.Slider(0, max(20.0, guidance), value=guidance, step=0.5, label="guidance"),
        )

    def inputs(suffix: str = "", key: str = "main") -> tuple[gr.Textbox, gr.Audio, gr.Image]:
        return (
            gr.Textbox(label=f"text{suffix}", placeholder="a dog barking in the rain", elem_id=f"{key}-text"),
            gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label=f"audio{suffix} (at most {pool.max_audio_seconds:g} s)",
                visible="audio" in kinds,
                elem_id=f"{key}-audio",
            ),
            gr.Image(type="filepath", label=f"image{suffix}", visible="image" in kinds, elem_id=f"{key}-image"),
        )

    with gr.Blocks(title="gen-align: modality interpolation") as demo:
        gr.Markdown("# gen-align: mix text, audio and an image")
        with gr.Row():
            preset = gr.Dropdown(pool.choices, value=pool.default, label="space / decoder", scale=1, elem_id="preset")
            active = gr.Markdown(header(first), elem_id="active-models")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    text, audio, image = inputs()
                    wt = gr.Slider(0, 1, value=1, step=0.05, label="text weight")
                    wa = gr.Slider(0, 1, value=1, step=0.05, label="audio weight", visible="audio" in kinds)
                    wi = gr.Slider(0, 1, value=1, step=0.05, label="image weight", visible="image" in kinds)
                    shown = gr.Markdown(weights_text(None, None, None, 1, 1, 1))
                    mode = gr.Radio(list(MODES), value="slerp", label="blend mode")
                    seed, steps_in, guidance_in = sampling()
                    n = gr.Slider(1, MAX_IMAGES, value=min(4, MAX_IMAGES), step=1, label="number of images")
                    button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column():
                    gallery = gr.Gallery(label="images", columns=4, elem_id="gallery")
                    report = gr.JSON(label="embeddings: cosine similarities, norms before/after calibration")
            watched = [text, audio, image, wt, wa, wi]
            for component in watched:
                component.change(weights_text, watched, shown, queue=False, api_visibility="private")
            button.click(
                _page_errors(generate),
                [text, audio, image, wt, wa, wi, mode, seed, steps_in, guidance_in, n, preset],
                [gallery, report],
                api_name="generate",
            )
            named = {"text": text, "audio": audio}
            gr.Examples(shown_examples.generate, [named[c] for c in shown_examples.generate_inputs], label="examples")
        with gr.Tab("Interpolate"):
            with gr.Row():
                with gr.Column():
                    gr.Markdown("Input A (one of them)")
                    a_inputs = inputs(" A", "a")
                with gr.Column():
                    gr.Markdown("Input B (one of them)")
                    b_inputs = inputs(" B", "b")
            frames = gr.Slider(2, MAX_FRAMES, value=5, step=1, label="frames (k, endpoints included)")
            i_mode = gr.Radio(list(MODES), value="slerp", label="interpolation mode")
            i_seed, i_steps, i_guidance = sampling()
            i_button = gr.Button("Interpolate", variant="primary")
            strip_out = gr.Image(label="A → B", type="pil")
            i_report = gr.JSON(label="interpolation")
            i_button.click(
                _page_errors(interpolate_strip),
                [*a_inputs, *b_inputs, frames, i_mode, i_seed, i_steps, i_guidance, preset],
                [strip_out, i_report],
                api_name="interpolate",
            )
            ends = {f"a_{k}": c for k, c in zip(CONDITION_KINDS, a_inputs, strict=True)}
            ends |= {f"b_{k}": c for k, c in zip(CONDITION_KINDS, b_inputs, strict=True)}
            gr.Examples(
                [shown_examples.interpolate], [ends[c] for c in shown_examples.interpolate_inputs], label="examples"
            )
        preset.change(
            _page_errors(select),
            preset,
            [active, steps_in, guidance_in, i_steps, i_guidance],
            api_name="select_preset",
            api_visibility="undocumented",
        )
    demo.queue(default_concurrency_limit=concurrency)
    demo.examples_dir = str(shown_examples.folder) if shown_examples.folder else None
    demo.pool = pool
    return demo


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_file_size: str = "20mb",
    block: bool = True,
) -> str:
    """Serve ``demo`` on ``host:port`` (a public share link only with ``share``); returns the local URL."""
    allowed = [demo.examples_dir] if getattr(demo, "examples_dir", None) else None
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        allowed_paths=allowed,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return url
