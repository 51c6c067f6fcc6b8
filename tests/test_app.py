"""`gen-align app`: the Gradio demo on tiny Stable UnCLIP weights, served on 127.0.0.1 and driven by
gradio_client (generate from text / audio / a blend, interpolation, error messages, a queued load test), the preset
selector (only presets whose weights are present; switching loads the other decoder), the shipped mini examples, and
the command's options (defaults bind 127.0.0.1; no model is loaded for --help)."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from tiny_models import PRESET_PATHS, tiny_audio_space, tiny_weights_home  # noqa: E402

from gen_align import cli  # noqa: E402
from gen_align.app import demo as app_demo  # noqa: E402
from gen_align.errors import ConfigError, InputFileError  # noqa: E402
from gen_align.mini import shipped  # noqa: E402
from gen_align.pipelines.generate import DecodeOptions  # noqa: E402
from gen_align.pipelines.presence import available_presets  # noqa: E402
from gen_align.pipelines.session import RuntimeOptions  # noqa: E402
from gen_align.presets import PRESETS  # noqa: E402

SIZE = 16
NORM = 6.0
PRESET_NORMS = {"stable-unclip-h": 4.0, "kandinsky-2.2": 3.0}  # calibration of each tiny preset


@pytest.fixture(autouse=True)
def app_registered(monkeypatch):
    if "app" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "app"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tone(path, seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size), rate)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    home = tiny_weights_home(root / "home")
    (home / "calibration").mkdir()
    for preset, norm in PRESET_NORMS.items():
        record = {"format": "gen-align-calibration", "mean_norm": norm, "embedding_dim": 32, "preset": preset}
        (home / "calibration" / f"{preset}.json").write_text(json.dumps(record))
    space = tiny_audio_space(root / "space", preset="stable-unclip-h", output_norm=NORM)
    Image.fromarray((np.random.default_rng(1).random((40, 48, 3)) * 255).astype("uint8")).save(root / "p.png")
    (root / "not_audio.wav").write_text("this is not a wav file")
    return {
        "home": str(home),
        "space": str(space),
        "audio": tone(root / "bark.wav", 1.0),
        "long": tone(root / "long.wav", 3.0),
        "bad": str(root / "not_audio.wav"),
        "image": str(root / "p.png"),
        "root": root,
    }


@pytest.fixture(scope="module")
def served(world):
    models = app_demo.Models(RuntimeOptions(space=world["space"], weights_dir=world["home"]), max_audio_seconds=2)
    pool = app_demo.ModelPool(models, keep=2)
    decode = DecodeOptions(steps=2, height=SIZE, width=SIZE)
    demo = app_demo.build_demo(pool, decode=decode, concurrency=2, examples_dir=world["root"] / "examples")
    url = app_demo.launch(demo, port=free_port(), block=False)
    client = gradio_client.Client(url, verbose=False)
    yield {"client": client, "url": url, "models": models, "pool": pool, "demo": demo, "decode": decode}
    client.close() if hasattr(client, "close") else None
    demo.close()


def generate(client, text=None, audio=None, image=None, weights=(1, 1, 1), mode="slerp", seed=0, n=1, **preset):
    files = [gradio_client.handle_file(x) if x else None for x in (audio, image)]
    return client.predict(text, *files, *weights, mode, seed, 2, 10, n, api_name="/generate", **preset)


def gallery_images(gallery):
    return [Image.open(item["image"] if isinstance(item["image"], str) else item["image"]["path"]) for item in gallery]


def test_binds_localhost_and_loads_models_once(served):
    assert served["url"].startswith("http://127.0.0.1:")
    assert served["models"].kinds == ["text", "audio", "image"]
    assert served["models"].session.space is not None  # towers kept next to the decoder


def test_long_runs_show_progress_in_the_page(served):
    tracked = {fn.api_name: fn.tracks_progress for fn in served["demo"].fns.values() if fn.api_name}
    assert tracked["generate"] and tracked["interpolate"]


def test_generate_from_text(served):
    gallery, report = generate(served["client"], text="a dog barking in the rain", n=2)
    images = gallery_images(gallery)
    assert len(images) == 2 and all(im.size == (SIZE, SIZE) for im in images)
    assert report["weights"] == {"text": 1.0} and report["cosine_similarity"] == {}
    assert report["norm_after"] == pytest.approx(NORM, rel=1e-4)
    assert report["calibration"]["mean_norm"] == NORM


def test_generate_from_audio(served, world):
    gallery, report = generate(served["client"], audio=world["audio"])
    assert len(gallery_images(gallery)) == 1
    assert set(report["norms_before"]) == {"audio"} and report["weights"] == {"audio": 1.0}


def test_generate_from_a_blend_reports_cosines_and_norms(served, world):
    gallery, report = generate(
        served["client"], text="a dog", audio=world["audio"], image=world["image"], weights=(0.2, 0.6, 0), mode="lerp"
    )
    assert len(gallery_images(gallery)) == 1
    assert report["weights"] == {"text": 0.25, "audio": 0.75, "image": 0.0} and report["mode"] == "lerp"
    assert set(report["cosine_similarity"]) == {"text·audio", "text·image", "audio·image"}
    assert all(-1 <= c <= 1 for c in report["cosine_similarity"].values())
    assert set(report["norms_before"]) == {"text", "audio", "image"}
    assert report["norm_after"] == pytest.approx(NORM, rel=1e-4)


def test_same_seed_same_pixels(served):
    a = gallery_images(generate(served["client"], text="a bell", seed=5)[0])[0]
    b = gallery_images(generate(served["client"], text="a bell", seed=5)[0])[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing given"),
        ({"text": "a dog", "weights": (0, 0, 0)}, "all weights are zero"),
        ({"text": "a dog", "n": 50}, "greater than maximum value 8"),
        ({"audio": "long"}, "over the limit max_seconds=2"),
        ({"audio": "bad"}, "not_audio.wav"),
    ],
)
def test_errors_are_messages_in_the_page(served, world, kwargs, message):
    if "audio" in kwargs:
        kwargs = {"audio": world[kwargs["audio"]]}
    with pytest.raises(Exception) as info:
        generate(served["client"], **kwargs)
    assert message in str(info.value), str(info.value)
    assert "Traceback" not in str(info.value)


def test_interpolate_strip(served, world):
    client = served["client"]
    frames = 3
    audio = gradio_client.handle_file(world["audio"])
    strip, report = client.predict(
        "a dog", None, None, None, audio, None, frames, "slerp", 0, 2, 10, api_name="/interpolate"
    )
    image = Image.open(strip if isinstance(strip, str) else strip["path"])
    cell = SIZE * 8  # 16-pixel images enlarged (nearest) by the smallest whole factor reaching 128 pixels
    assert image.size == (frames * cell, cell)
    assert report["t"] == [0.0, 0.5, 1.0] and set(report["start"]) == {"text"} and set(report["end"]) == {"audio"}
    assert report["norm_after"] == pytest.approx(NORM, rel=1e-4)
    with pytest.raises(Exception, match="input B: give exactly one"):
        client.predict("a dog", None, None, None, None, None, frames, "slerp", 0, 2, 10, api_name="/interpolate")


def test_twenty_concurrent_requests_all_complete(served):
    client = served["client"]

    def one(i):
        return generate(client, text=f"request {i}", seed=i)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    assert all(len(gallery) == 1 and report["weights"] == {"text": 1.0} for gallery, report in results)


def linked_home(world, root, repos):
    """A weights dir holding only ``repos`` (symlinks into the full one) and the calibrations."""
    for repo in [*repos, "calibration"]:
        (root / repo).parent.mkdir(parents=True, exist_ok=True)
        (root / repo).symlink_to(Path(world["home"]) / repo)
    return str(root)


def test_selector_offers_only_the_presets_whose_weights_are_present(served, world, tmp_path, monkeypatch):
    present = available_presets(["text"], world["home"])  # what the page was built with (the shipped mini too)
    monkeypatch.delitem(PRESETS, "mini", raising=False)  # the tiny presets only, from here on
    su, kd = PRESET_PATHS["stable-unclip-h"], PRESET_PATHS["kandinsky-2.2"]
    partial = linked_home(world, tmp_path / "partial", [*su, kd[0]])  # kandinsky's prior (its towers) is missing
    vit_h = ["stable-unclip-h", "stable-unclip-h-beats", "imagebind-h"]  # one decoder and text tower: all present
    assert app_demo.selector_choices(RuntimeOptions(weights_dir=partial)) == [(name, name) for name in vit_h]
    assert app_demo.selector_choices(RuntimeOptions(weights_dir=str(tmp_path / "empty"))) == []
    full = app_demo.selector_choices(RuntimeOptions(space=world["space"], weights_dir=world["home"]))
    assert [value for _, value in full] == [world["space"], *vit_h, "kandinsky-2.2"]
    assert full[0][0] == f"space (--space {world['space']})"
    # The page's dropdown: the --space checkpoint (selected) + every present preset, smallest first.
    (dropdown,) = [b for b in served["demo"].blocks.values() if isinstance(b, gr.Dropdown)]
    assert [value for _, value in dropdown.choices] == [world["space"], *present] and dropdown.value == world["space"]
    assert {"stable-unclip-h", "kandinsky-2.2"} <= set(present)


def test_unknown_or_absent_preset_is_a_message(served):
    with pytest.raises(Exception) as info:
        generate(served["client"], text="a dog", preset="no-such-preset")
    assert "no-such-preset" in str(info.value) and "Traceback" not in str(info.value)
    pool = served["pool"]
    for name in ["no-such-preset", *(n for n in PRESETS if n not in pool.names)]:  # unknown, or weights absent
        with pytest.raises(ConfigError, match=f"unknown or absent preset '{name}'; this app offers"):
            pool.get(name)


def test_shipped_examples_are_the_one_click_examples(served, tmp_path, monkeypatch):
    folder = tmp_path / "examples"
    folder.mkdir()
    items = [{"audio": f"item{i}.wav", "text": f"caption {i}", "attributes": {"i": i}, "id": i} for i in range(3)]
    for i in range(3):
        tone(folder / f"item{i}.wav", 0.5)
    (folder / "examples.json").write_text(json.dumps(items))
    monkeypatch.setattr(shipped, "MINI_EXAMPLES", folder)
    wavs = [str(folder / f"item{i}.wav") for i in range(3)]
    got = app_demo.examples(audio=True)
    assert got.generate_inputs == ("text", "audio") and got.folder == folder
    assert got.generate == [
        *([f"caption {i}", None] for i in range(3)),
        *([None, wavs[i]] for i in range(2)),
        ["caption 0", wavs[1]],  # a caption with another item's clip
    ]
    assert (got.interpolate_inputs, got.interpolate) == (("a_text", "b_audio"), ["caption 0", wavs[1]])
    assert app_demo.examples(audio=False).generate == [[f"caption {i}"] for i in range(3)]
    demo = app_demo.build_demo(served["pool"], decode=served["decode"])
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    assert [[row[0] for row in d.samples] for d in datasets] == [
        ["caption 0", "caption 1", "caption 2", None, None, "caption 0"],
        ["caption 0"],
    ]
    assert demo.examples_dir == str(folder)
    seen = {}
    monkeypatch.setattr(demo, "launch", lambda **kwargs: seen.update(kwargs) or (None, "http://127.0.0.1:0", None))
    app_demo.launch(demo, block=False)
    assert seen["allowed_paths"] == [str(folder)]  # gradio may serve the shipped clips
    (folder / "examples.json").write_text("{not json")
    with pytest.raises(InputFileError, match="examples.json is unreadable"):
        app_demo.shipped_examples()
    monkeypatch.setattr(shipped, "MINI_EXAMPLES", tmp_path / "absent")  # no shipped examples: today's ones
    fallback = app_demo.examples(audio=True, directory=tmp_path / "tone")
    assert fallback.generate[:3] == [[p, None] for p in app_demo.EXAMPLE_PROMPTS]
    assert fallback.generate[3] == [None, str(tmp_path / "tone" / "rising_tone.wav")]
    assert fallback.interpolate == list(app_demo.EXAMPLE_PROMPTS[:2])


def test_switching_presets_generates_with_the_other_decoder(served, world):
    client, pool = served["client"], served["pool"]
    # An image: the tiny presets' text towers are not in their (full-size) spaces; the image is the anchor.
    gallery, report = generate(client, image=world["image"], preset="kandinsky-2.2")
    assert [im.size for im in gallery_images(gallery)] == [(SIZE, SIZE)]
    assert report["space"] == "kandinsky-2.2" and report["decoder"]["kind"] == "kandinsky-2.2"
    assert report["decoder"]["source"] == PRESET_PATHS["kandinsky-2.2"][0]
    assert report["calibration"]["mean_norm"] == 3.0 and report["norm_after"] == pytest.approx(3.0, rel=1e-4)
    assert pool.get("kandinsky-2.2") is pool.get("kandinsky-2.2")  # loaded once
    _, report = generate(client, text="a dog")  # the default entry: the --space checkpoint on Stable UnCLIP
    assert report["space"] == world["space"] and report["decoder"]["kind"] == "stable-unclip"
    assert report["norm_after"] == pytest.approx(NORM, rel=1e-4)
    with pytest.raises(Exception, match="this space cannot encode audio"):  # a preset without an audio head
        generate(client, audio=world["audio"], preset="stable-unclip-h")
    assert pool.loaded == [world["space"], "stable-unclip-h"]  # at most keep=2: the least recently used went
    image = gradio_client.handle_file(world["image"])
    strip, report = client.predict(
        None, None, image, "a cat", None, None, 2, "slerp", 0, 2, 10, api_name="/interpolate", preset=world["space"]
    )
    assert report["decoder"]["kind"] == "stable-unclip" and report["t"] == [0.0, 1.0]
    strip, report = client.predict(
        None, None, image, None, None, image, 2, "slerp", 0, 2, 10, api_name="/interpolate", preset="kandinsky-2.2"
    )
    assert report["decoder"]["kind"] == "kandinsky-2.2" and report["t"] == [0.0, 1.0]
    shown, *defaults = client.predict("kandinsky-2.2", api_name="/select_preset")  # what the dropdown's change does
    assert "kandinsky-2.2 decoder" in shown and "Inputs: text, image" in shown
    assert defaults == [2, 4.0, 2, 4.0]  # steps from the command line, guidance: Kandinsky's default
    shown, *defaults = client.predict(world["space"], api_name="/select_preset")
    assert "stable-unclip decoder" in shown and defaults == [2, 10.0, 2, 10.0]


def test_weights_text_shows_normalised_weights():
    assert app_demo.weights_text("a", "x.wav", None, 1, 3, 1) == "Normalised weights: text **0.25**, audio **0.75**"
    assert "give at least one input" in app_demo.weights_text(None, None, None, 1, 1, 1)
    assert "all weights are zero" in app_demo.weights_text("a", None, None, 0, 1, 1)


def test_command_defaults_and_launch(world, monkeypatch, capsys):
    args = cli.build_parser().parse_args(["app", "--space", world["space"]])
    assert (args.host, args.port, args.share, args.concurrency, args.max_audio_seconds, args.keep_models) == (
        "127.0.0.1",
        7860,
        False,
        1,
        30.0,
        2,
    )
    seen = {}

    def fake_launch(demo, **kwargs):
        seen.update(kwargs, demo=demo)
        return "http://127.0.0.1:0"

    monkeypatch.setattr(app_demo, "launch", fake_launch)
    argv = ["app", "--space", world["space"], "--weights-dir", world["home"], "--port", "7999", "--steps", "2"]
    assert cli.main([*argv, "--max-audio-seconds", "5", "--concurrency", "3"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7999 and seen["share"] is False
    assert isinstance(seen["demo"], gr.Blocks)
    assert "serving on http://127.0.0.1:7999" in capsys.readouterr().out


def test_command_rejects_bad_options_with_a_message(world, capsys):
    assert cli.main(["app", "--space", world["space"], "--max-audio-seconds", "0"]) == 2
    assert "--max-audio-seconds" in capsys.readouterr().err
    argv = ["app", "--space", world["space"], "--weights-dir", world["home"], "--concurrency", "0"]
    assert cli.main(argv) == 2
    assert "--concurrency must be an integer >= 1" in capsys.readouterr().err
    assert cli.main(["app", "--space", world["space"], "--keep-models", "0"]) == 2  # checked before loading
    assert "--keep-models must be an integer >= 1" in capsys.readouterr().err


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"real-browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="real-browser test needs selenium (pip install)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_real_browser_generates_and_shows_errors(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(served["url"])
    button = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#generate-button")))
    button.click()  # nothing given: a message in the page
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'nothing given')]")))
    browser.find_element(By.CSS_SELECTOR, "#main-text textarea").send_keys("a dog barking in the rain")
    wait.until(
        ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'text **1.00**') or contains(., 'text 1.00')]"))
    )
    button.click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#gallery img")))
    assert "Traceback" not in browser.page_source


def test_a_busy_port_is_refused_before_any_model_loads(capsys):
    """`gen-align app --port P` with P held by another server: one line naming --port, exit 2 (not Gradio's
    OSError about server_port), before the models are loaded."""
    import socket

    from gen_align.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["app", "--port", str(port), "--preset", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "--port" in err and "server_port" not in err
    assert main(["app", "--port", "70000"]) == 2
    assert "--port must be an integer in 1..65535, got 70000" in capsys.readouterr().err
