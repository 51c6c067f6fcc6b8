"""The public surface: lazy top-level names, GenAlignPipeline on the shipped mini preset, and the docstring examples."""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import gen_align
from gen_align.errors import ConfigError
from gen_align.mini.shipped import MINI_EXAMPLES

EXAMPLE_WAV = MINI_EXAMPLES / "large-blue-circle-plain.wav"


def test_import_is_lazy_and_every_public_name_resolves():
    code = "import sys, gen_align; print('torch' in sys.modules, 'gen_align.pipelines.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]  # `import gen_align` loads neither torch nor the pipeline
    for name in gen_align.__all__:
        assert getattr(gen_align, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gen_align.nope  # noqa: B018
    assert set(gen_align.list_presets()) >= {"mini", "stable-unclip-h", "kandinsky-2.2"}


@pytest.fixture(scope="module")
def pipe():
    return gen_align.GenAlignPipeline.from_pretrained("mini", progress=False)


def test_pipeline_generates_from_text_audio_and_a_blend(pipe):
    out = pipe(text="a small red star on stripes", audio=str(EXAMPLE_WAV), num_images=2, steps=2, seed=3)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    record = out.record
    assert record["inputs"]["audio"] == str(EXAMPLE_WAV.resolve()) and record["weights"] == {"text": 0.5, "audio": 0.5}
    assert record["steps"] == 2 and record["preset"] == "mini"
    # every input reaches the decoder at its calibrated norm (the space's output norm)
    assert record["embedding"]["norm_after"] == pytest.approx(pipe.stats.mean_norm, rel=1e-5)
    again = pipe(text="a small red star on stripes", audio=str(EXAMPLE_WAV), num_images=2, steps=2, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, again.images, strict=True))


def test_pipeline_takes_in_memory_inputs(pipe):
    import soundfile as sf

    wave, rate = sf.read(str(EXAMPLE_WAV), dtype="float32")
    from_file = pipe.embed(audio=str(EXAMPLE_WAV))["audio"]
    from_memory = pipe.embed(audio=(torch.from_numpy(wave), rate))["audio"]
    torch.testing.assert_close(from_memory, from_file, rtol=1e-5, atol=1e-6)
    image = pipe(text="a large green square on dots", num_images=1, steps=2).images[0]
    z = pipe.embed(image=image.convert("L"))["image"]  # any PIL mode
    assert z.shape == (1, pipe.decoder.embedding_dim)
    assert pipe.embed(image=image.convert("L"))["image"].shape == z.shape
    assert pipe(image=image, num_images=1, steps=2).record["inputs"]["image"].startswith("<PIL image")


def test_pipeline_interpolates(pipe):
    out = pipe.interpolate({"text": "a small red star on stripes"}, {"audio": str(EXAMPLE_WAV)}, frames=3, steps=2)
    assert len(out.images) == 3 and out.record["t"] == [0.0, 0.5, 1.0]


def test_pipeline_errors_name_the_arguments(pipe):
    for kwargs, message in (
        ({}, "no input given: pass at least one of text=, audio= or image="),
        ({"text": "  "}, "text is empty"),
        ({"text": "a", "num_images": 0}, "num_images must be an integer >= 1"),
        ({"text": "a", "mode": "cubic"}, "unknown mode 'cubic'"),
        ({"text": "a", "noise_level": 3}, "noise_level applies to the stable-unclip decoder only"),
        ({"text": "a", "seed": -1}, "seed must be an integer >= 0"),
        ({"text": "a", "weights": {"audio": 1.0}}, "audio"),
    ):
        with pytest.raises(ConfigError, match=message):
            pipe(**kwargs)
    with pytest.raises(ConfigError, match="start must be one input"):
        pipe.interpolate({"text": "a", "audio": str(EXAMPLE_WAV)}, {"text": "b"})
    with pytest.raises(ConfigError, match="cannot encode"):
        gen_align.GenAlignPipeline.from_pretrained("mini", modalities=["video"])


def test_one_call_pipeline_frees_its_encoders_and_says_so():
    one = gen_align.GenAlignPipeline.from_pretrained("mini", progress=False, keep_encoders=False)
    assert len(one(text="a small red star", num_images=1, steps=1).images) == 1
    with pytest.raises(ConfigError, match="keep_encoders=False"):
        one(text="again", num_images=1, steps=1)


@pytest.mark.parametrize(
    "module",
    [
        "gen_align.pipelines.pipeline",
        "gen_align.space",
        "gen_align.objectives.registry",
        "gen_align.retrieval.metrics",
        "gen_align.train.engine",
        "gen_align.retrieval.invgc",
        "gen_align.retrieval.gare",
        "gen_align.retrieval.gravi_head",
        "gen_align.eval.fid",
    ],
)
def test_docstring_examples_run(module):
    """The examples in the public entry points' docstrings run (doctest) and print what they show."""
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's five lines, as written (the example clip's path made absolute, run in a scratch folder)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = readme.split("## Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("gen_align/mini/weights/examples/", f"{MINI_EXAMPLES}/")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README
    assert (tmp_path / "star.png").is_file()


def test_pipeline_sampling_options_and_decoder_kinds_are_checked(pipe):
    from gen_align.pipelines.decoders import decoder_class

    with pytest.raises(ConfigError, match=r"unknown sampling options \['step'\]; use steps"):
        pipe.decode(torch.randn(1, 64), step=3)
    with pytest.raises(ConfigError, match=r"unknown sampling options \['cfg'\]"):
        pipe.interpolate({"text": "a"}, {"text": "b"}, cfg=2.0)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        pipe.decode(torch.randn(1, 64), steps=0)
    with pytest.raises(ConfigError, match="no decoder adapter for kind 'dalle'"):
        decoder_class("dalle")
    # a direction of any norm is rescaled to the calibrated norm before decoding: the same image as its unit vector,
    # up to the float rounding of z / ‖z‖ (at most one grey level here)
    z = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    a, b = pipe.decode(z, seed=4, steps=2)[0], pipe.decode(5 * z, seed=4, steps=2)[0]
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_fid_harness_example_runs(tmp_path, monkeypatch):
    """run_fid's docstring example, as written, on a 4-item mini world (1 decoder step)."""
    import inspect
    import textwrap

    from gen_align.eval.vggsound_fid import run_fid
    from gen_align.mini.world.dataset import build_world

    build_world(tmp_path / "world", seed=3, train=0, test=4, progress=False)
    block = inspect.getdoc(run_fid).split("classifier::\n", 1)[1].split("(``tests/", 1)[0]
    code = textwrap.dedent(block).replace("DecodeOptions(steps=10)", "DecodeOptions(steps=1)")
    code = code.replace('RuntimeOptions(preset="mini")', 'RuntimeOptions(preset="mini", progress=False)')
    assert "run_fid(" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "run_fid docstring", "exec"), {})  # noqa: S102 - our own docstring
    record = json.loads((tmp_path / "results" / "fid" / "fid.json").read_text(encoding="utf-8"))
    assert record["manifest"]["used"] == 4 and record["models"]["preset"] == "mini"
    for condition in ("text", "audio", "text+audio", "image"):
        assert record["conditions"][condition]["images"] == 4
        assert math.isfinite(record["conditions"][condition]["fid"])


def test_library_messages_name_arguments_and_the_cli_names_flags(pipe, capsys):
    """The same mistakes, made from Python and from the command line: each message names what the caller typed."""
    from gen_align.cli import main
    from gen_align.pipelines.session import check_condition, parse_weights

    with pytest.raises(ConfigError, match=r"^offload \(model CPU offload\) needs a CUDA GPU"):
        gen_align.GenAlignPipeline.from_pretrained("mini", offload=True)
    with pytest.raises(ConfigError, match=r"^text is empty"):
        check_condition("text", "   ")
    with pytest.raises(ConfigError, match=r"^cannot parse weights 'text0\.5'"):
        parse_weights("text0.5", ["text"])
    with pytest.raises(ConfigError, match=r"got height 64; leave height/width out"):
        pipe(text="a red star", num_images=1, steps=1, height=64)
    with pytest.raises(ConfigError, match=r"^num_images must be an integer >= 1"):
        pipe(text="a red star", num_images=0)
    for argv, flag in (
        (["--offload"], "--offload (model CPU offload) needs a CUDA GPU"),
        (["--height", "64", "--steps", "1", "--n", "1"], "leave --height/--width out"),
        (["--n", "0"], "--n must be an integer >= 1"),
    ):
        assert main(["generate", "--preset", "mini", "--text", "a red star", *argv]) == 2
        assert flag in capsys.readouterr().err
