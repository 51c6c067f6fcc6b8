"""The Gradio modality-interpolation demo: mix text, audio and an image, see what the decoder makes of the blend.

A thin layer over :class:`~gen_align.pipelines.pipeline.GenAlignPipeline`: the page's inputs become checked
:class:`Condition` s and go to one shared pipeline (space and decoder loaded once at startup), exactly as
``gen-align generate`` / ``interpolate`` do — only nothing is written to disk. Every :class:`GenAlignError`
reaches the page as a ``gr.Error`` message.

A selector in the page offers the presets whose weights are present (plus the ``--space`` checkpoint); the one the
command chose is loaded at startup, the others on first use (:class:`ModelPool`, at most ``keep`` loaded at once).

This module builds and launches the page; its parts live beside it: ``models`` (the shared pipelines and the
selector's pool), ``requests`` (one generation or interpolation per request), ``examples`` (one-click inputs).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from gen_align.checks import integer
from gen_align.errors import GenAlignError
from gen_align.pipelines.blend import MODES
from gen_align.pipelines.generate import DecodeOptions
from gen_align.pipelines.pipeline import MAX_SEED
from gen_align.pipelines.session import CONDITION_KINDS

from .examples import EXAMPLE_PROMPTS, ExampleSet, example_audio, examples, shipped_examples
from .models import ModelPool, Models, header, selector_choices, space_kinds
from .requests import (
    MAX_FRAMES,
    MAX_IMAGES,
    models_report,
    normalised_weights,
    run_generate,
    run_interpolate,
    weights_text,
)

__all__ = [
    "EXAMPLE_PROMPTS",
    "MAX_FRAMES",
    "MAX_IMAGES",
    "ExampleSet",
    "ModelPool",
    "Models",
    "build_demo",
    "example_audio",
    "examples",
    "header",
    "launch",
    "models_report",
    "normalised_weights",
    "run_generate",
    "run_interpolate",
    "selector_choices",
    "shipped_examples",
    "space_kinds",
    "weights_text",
]


def _page_errors(fn: Any) -> Any:
    """``fn`` with every GenAlignError turned into a ``gr.Error`` (a message in the page, no traceback)."""

    @functools.wraps(fn)  # keeps the signature, so Gradio still sees the gr.Progress parameter
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GenAlignError as err:
            raise gr.Error(str(err)) from err

    return wrapped


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
            gr.Number(value=base.seed, label="seed", precision=0, minimum=0, maximum=MAX_SEED),
            gr.Slider(1, max(100, steps), value=steps, step=1, label="steps"),
            gr.Slider(0, max(20.0, guidance), value=guidance, step=0.5, label="guidance"),
        )

    def inputs(suffix: str = "", key: str = "main") -> tuple[gr.Textbox, gr.Audio, gr.Image]:
        return (
            gr.Textbox(label=f"text{suffix}", placeholder="a small red star on stripes", elem_id=f"{key}-text"),
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
