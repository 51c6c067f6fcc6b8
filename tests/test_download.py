"""A real preset one step away: every missing component reported at once (offline), `gen-align download` fetching
each of them (hub files chosen as the loaders read them; the official BEATs file over HTTP, resumed after a cut)."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from tiny_models import PRESET_PATHS, tiny_weights_home

from gen_align.cli import main
from gen_align.pipelines import download as dl
from gen_align.presets import BEATS_AS2M
from gen_align.weights import IMAGEBIND_HUGE

SD, LAION = PRESET_PATHS["stable-unclip-h"]
SD_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "sd21-unclip-h.ckpt",
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "image_encoder/model.safetensors",
    "image_encoder/model.fp16.safetensors",
    "image_encoder/pytorch_model.bin",
    "image_normalizer/config.json",
    "image_normalizer/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.onnx",
]


def test_hub_files_are_chosen_as_the_loaders_read_them():
    """Configs and tokenizer files of every folder, one weights file each (safetensors first, a .bin only where
    nothing else is); no fp16 variant, no single-file checkpoint, no README, no ONNX export."""
    assert dl.select_files(SD_FILES) == [
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
        "image_normalizer/config.json",
        "image_normalizer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    ]
    assert dl.select_files(SD_FILES, "image_encoder") == [
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
    ]
    assert dl.format_size(2_530_000_000) == "2.5 GB" and dl.format_size(512) == "512 B"


def test_every_missing_component_is_reported_at_once_offline(tmp_path, capsys):
    """generate --preset stable-unclip-h-beats with nothing on the machine: one message lists the decoder, the text and
    audio towers and the calibration, each with where it was looked for, says the machine is offline and gives
    the one command; exit 2 at once (no hub retries), nothing written."""
    empty = tmp_path / "empty"
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(16000) / 3.0), 16000)
    argv = ["generate", "--preset", "stable-unclip-h-beats", "--text", "a red star", "--weights-dir", str(empty)]
    started = time.perf_counter()
    assert main([*argv, "--audio", str(wav), "--out", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - started < 30  # refused before any slow step: no retries, no model loads
    err = capsys.readouterr().err
    assert "lacks 4 component(s)" in err and "offline" in err and "Traceback" not in err
    for needle in (f"decoder: {SD}", f"text tower: {LAION}", f"audio tower: {BEATS_AS2M}", "calibration: "):
        assert needle in err, (needle, err)
    assert str(empty / SD) in err and "the Hugging Face cache" in err and "valle.blob.core.windows.net" in err
    assert f"gen-align download stable-unclip-h-beats --weights-dir {empty}" in err
    assert "gen-align calibrate --preset stable-unclip-h-beats --images DIR" in err
    assert "model_index.json" not in err and not (tmp_path / "o").exists()


def test_only_what_is_missing_is_listed(tmp_path, capsys):
    home = tiny_weights_home(tmp_path / "home", presets=("stable-unclip-h",))
    assert main(["download", "stable-unclip-h", "--weights-dir", str(home), "--check", "--modalities", "text"]) == 1
    out = capsys.readouterr().out
    assert "missing calibration" in out and "decoder" not in out and "1 component(s) missing" in out
    assert main(["download", "mini", "--check"]) == 0
    assert main(["download", "mini"]) == 0 and "nothing to download" in capsys.readouterr().out
    assert main(["download", "no-such-preset"]) == 2


class RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``; honours ``Range: bytes=N-`` (206) unless ``ignore_range``; ``cut_after`` bytes of the
    first full answer, then the connection drops (a killed download)."""

    payload = b""
    cut_after: int | None = None
    ignore_range = False
    ranges: list[str | None] = []

    def do_GET(self):  # noqa: N802 - the handler API
        wanted = self.headers.get("Range")
        type(self).ranges.append(wanted)
        start = int(wanted.split("=")[1].rstrip("-")) if wanted and not self.ignore_range else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeServer.payload = bytes(range(256)) * 4096  # 1 MiB
    RangeServer.cut_after, RangeServer.ignore_range, RangeServer.ranges = 300_000, False, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/BEATs.pt"
    httpd.shutdown()


def test_an_interrupted_file_download_continues_where_it_stopped(server, tmp_path):
    target = tmp_path / "beats" / "BEATs.pt"
    with pytest.raises(Exception, match="run the same command again"):
        dl.fetch_url(server, target, progress=False)
    part = target.with_name("BEATs.pt.part")
    assert not target.exists() and 0 < part.stat().st_size <= 300_000
    assert dl.fetch_url(server, target, progress=False) == target
    assert target.read_bytes() == RangeServer.payload and not part.exists()
    assert RangeServer.ranges == [None, f"bytes={part_size(RangeServer.ranges)}-"]


def part_size(ranges):
    return int(ranges[1].split("=")[1].rstrip("-"))


def test_a_server_that_ignores_the_range_restarts_the_file(server, tmp_path):
    target = tmp_path / "BEATs.pt"
    target.with_name("BEATs.pt.part").write_bytes(b"stale bytes of another attempt")
    RangeServer.cut_after, RangeServer.ignore_range = None, True
    dl.fetch_url(server, target, progress=False)
    assert target.read_bytes() == RangeServer.payload


@pytest.mark.parametrize(
    ("preset", "official"), [("stable-unclip-h", IMAGEBIND_HUGE), ("stable-unclip-h-beats", BEATS_AS2M)]
)
def test_download_fetches_every_component_of_a_preset(server, tmp_path, monkeypatch, capsys, preset, official):
    """The hub is stood in for by its client's two calls (the network is not reachable here): each repository is
    listed, the chosen files go to $GEN_ALIGN_HOME/<repo>; the audio checkpoint comes from its official URL (a local
    server); a second run finds the file and leaves it."""
    import huggingface_hub

    calls = []

    def list_repo_files(self, repo):
        return SD_FILES if repo == SD else ["config.json", "model.safetensors", "open_clip_pytorch_model.bin"]

    def snapshot_download(repo, allow_patterns, local_dir):
        calls.append((repo, list(allow_patterns), str(local_dir)))
        for name in allow_patterns:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_text("{}")
        return str(local_dir)

    RangeServer.cut_after = None
    monkeypatch.setattr(dl, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setitem(dl.OFFICIAL_FILES, official, (server, f"the official {official}"))
    home = tmp_path / "home"
    assert main(["download", preset, "--weights-dir", str(home)]) == 0
    assert [c[0] for c in calls] == [SD, SD, LAION]  # decoder, image tower (present after the decoder), text tower
    assert calls[0][1] == dl.select_files(SD_FILES) and calls[2][1] == ["config.json", "model.safetensors"]
    assert (home / official).read_bytes() == RangeServer.payload
    out = capsys.readouterr().out
    assert f"gen-align calibrate --preset {preset}" in out and "4 component(s) fetched" in out
    assert main(["download", preset, "--weights-dir", str(home), "--modalities", "audio"]) == 0
    assert "is here already" in capsys.readouterr().out and len(RangeServer.ranges) == 1


def test_download_offline_says_so(tmp_path, capsys):
    assert main(["download", "kandinsky-2.2", "--weights-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "copy" in err
