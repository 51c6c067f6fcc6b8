"""`gen-align app`: the Gradio demo on tiny Stable UnCLIP weights, served on 127.0.0.1 and driven by
gradio_client (generate from text / audio / a blend, interpolation, error messages, a queued load test), and the
command's options (defaults bind 127.0.0.1; no model is loaded for --help)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from tiny_models import tiny_audio_space, tiny_weights_home  # noqa: E402

from gen_align import cli  # noqa: E402
from gen_align.app import demo as app_demo  # noqa: E402
from gen_align.pipelines.generate import DecodeOptions  # noqa: E402
from gen_align.pipelines.session import RuntimeOptions  # noqa: E402

SIZE = 16
NORM = 6.0


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
    home = tiny_weights_home(root / "home", presets=("stable-unclip-h",))
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
    decode = DecodeOptions(steps=2, height=SIZE, width=SIZE)
    demo = app_demo.build_demo(models, decode=decode, concurrency=2, examples_dir=world["root"] / "examples")
    url = app_demo.launch(demo, port=free_port(), block=False)
    client = gradio_client.Client(url, verbose=False)
    yield {"client": client, "url": url, "models": models, "demo": demo}
    client.close() if hasattr(client, "close") else None
    demo.close()


def generate(client, text=None, audio=None, image=None, weights=(1, 1, 1), mode="slerp", seed=0, n=1):
    files = [gradio_client.handle_file(x) if x else None for x in (audio, image)]
    return client.predict(text, *files, *weights, mode, seed, 2, 10, n, api_name="/generate")


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
    assert image.size == (frames * SIZE, SIZE)
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


def test_weights_text_shows_normalised_weights():
    assert app_demo.weights_text("a", "x.wav", None, 1, 3, 1) == "Normalised weights: text **0.25**, audio **0.75**"
    assert "give at least one input" in app_demo.weights_text(None, None, None, 1, 1, 1)
    assert "all weights are zero" in app_demo.weights_text("a", None, None, 0, 1, 1)


def test_command_defaults_and_launch(world, monkeypatch, capsys):
    args = cli.build_parser().parse_args(["app", "--space", world["space"]])
    assert (args.host, args.port, args.share, args.concurrency, args.max_audio_seconds) == (
        "127.0.0.1",
        7860,
        False,
        1,
        30.0,
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
