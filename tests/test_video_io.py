"""PyAV clip decoding: the middle frame (checked against frame colours known per time), k-frame averaging, audio
rate/length/content, and one clear ClipError reason per kind of bad clip."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from gen_align.data.video_io import ClipError, decode_clip, flac_bytes, image_bytes, render_clip, try_render_clip
from gen_align.errors import ConfigError, GenAlignError

FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm"}
TOLERANCE = 8  # colour levels lost to YUV 4:2:0 coding; neighbouring frames differ by >= 23 per channel


def colour(i: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame ``i`` (distinct for neighbours, not linear in i, so averages differ)."""
    return ((37 * i + 20) % 256, (255 - 23 * i) % 256, (91 * i + 40) % 256)


def make_clip(
    path: Path,
    *,
    frames: int = 20,
    fps: int = 10,
    vcodec: str = "libx264",
    acodec: str = "aac",
    rate: int = 44100,
    audio_seconds: float | None = None,
    video: bool = True,
    audio: bool = True,
    amplitude: float = 0.3,
    freq: float = 440.0,
    paint: Callable[[int], tuple[int, int, int]] = colour,
) -> Path:
    """A small clip (64x48) whose frame i is flat ``paint(i)`` and whose stereo audio is a sine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", format=FORMATS[path.suffix])
    if video:
        vstream = container.add_stream(vcodec, rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if vcodec == "libvpx":
            vstream.bit_rate = 2_000_000
    if audio:
        astream = container.add_stream(acodec, rate=rate)
        astream.layout = "stereo"
    if video:
        for i in range(frames):
            pixels = np.empty((48, 64, 3), np.uint8)
            pixels[:] = paint(i)
            for packet in vstream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        container.mux(vstream.encode())
    if audio:
        seconds = frames / fps if audio_seconds is None else audio_seconds
        t = np.arange(int(round(seconds * rate))) / rate
        wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        stereo = np.stack([wave, wave])
        step = astream.frame_size or 1024
        for s in range(0, len(t), step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, s : s + step]), "fltp", "stereo")
            frame.sample_rate, frame.pts = rate, s
            container.mux(astream.encode(frame))
        container.mux(astream.encode())
    container.close()
    return path


def frame_at(t: float, fps: int) -> int:
    """Index of the frame on screen at ``t`` seconds (frame i covers [i / fps, (i + 1) / fps))."""
    return int(np.floor(t * fps + 1e-9))


@pytest.mark.parametrize(
    ("suffix", "vcodec", "acodec", "frames"),
    [(".mp4", "libx264", "aac", 20), (".mp4", "libx264", "aac", 15), (".mkv", "mpeg4", "aac", 21)]
    + [(".webm", "libvpx", "libopus", 20)],
)
def test_middle_frame_is_the_frame_on_screen_at_half_the_duration(tmp_path, suffix, vcodec, acodec, frames):
    rate = 48000 if acodec == "libopus" else 44100
    path = make_clip(tmp_path / f"clip{suffix}", frames=frames, vcodec=vcodec, acodec=acodec, rate=rate)
    clip = decode_clip(path)
    middle = frame_at(frames / 10 / 2, 10)
    assert middle == frames // 2
    assert clip.frame.shape == (48, 64, 3) and clip.frame.dtype == np.uint8
    assert np.abs(clip.frame.astype(int) - colour(middle)).max() <= TOLERANCE
    assert clip.frame_times == pytest.approx((middle / 10,))
    assert clip.video_seconds == pytest.approx(frames / 10)


def test_k_frames_are_averaged_evenly_around_the_middle(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=20)
    clip = decode_clip(path, frames=3, frame_span=1.0)
    picked = [frame_at(1.0 + offset, 10) for offset in (-0.5, 0.0, 0.5)]  # mid = 1.0 s
    assert picked == [5, 10, 15]
    expected = np.mean([colour(i) for i in picked], axis=0)
    assert np.abs(clip.frame.astype(float) - expected).max() <= TOLERANCE
    assert np.abs(clip.frame.astype(float) - colour(10)).max() > 3 * TOLERANCE  # not just the middle frame
    assert clip.frame_times == pytest.approx((0.5, 1.0, 1.5))
    # A span wider than the clip is clamped to it: the first and last frames.
    wide = decode_clip(path, frames=2, frame_span=100.0)
    assert wide.frame_times == pytest.approx((0.0, 1.9))


def test_audio_is_16khz_mono_from_the_start_and_cut_to_seconds(tmp_path):
    short = decode_clip(make_clip(tmp_path / "short.mp4", frames=20, rate=44100))
    assert short.sample_rate == 16000 and short.audio.dtype == np.float32 and short.audio.ndim == 1
    assert abs(short.audio_seconds - 2.0) < 0.07  # AAC pads the last frame
    spectrum = np.abs(np.fft.rfft(short.audio))
    assert np.fft.rfftfreq(len(short.audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert np.abs(short.audio).max() == pytest.approx(0.3, abs=0.03)
    long_clip = make_clip(tmp_path / "long.mkv", frames=6, fps=2, vcodec="mpeg4", rate=48000, audio_seconds=3.5)
    cut = decode_clip(long_clip, seconds=2.5)
    assert len(cut.audio) == 40000 and cut.audio_seconds == 2.5


def test_render_clip_writes_jpeg_png_and_flac(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=10)
    rendered = render_clip(path, image_format="png")
    with Image.open(io.BytesIO(rendered.image)) as image:
        assert image.format == "PNG" and image.size == (64, 48)
        assert np.abs(np.asarray(image).astype(int) - colour(5)).max() <= TOLERANCE
    wave, rate = sf.read(io.BytesIO(rendered.audio), dtype="float32")
    assert rate == 16000 and wave.ndim == 1 and len(wave) / rate == pytest.approx(rendered.audio_seconds)
    assert Image.open(io.BytesIO(render_clip(path).image)).format == "JPEG"
    assert Image.open(io.BytesIO(image_bytes(np.zeros((4, 4, 3), np.uint8), "png"))).size == (4, 4)
    assert sf.info(io.BytesIO(flac_bytes(np.full(160, 2.0, np.float32), 16000))).frames == 160


@pytest.mark.parametrize(
    ("kind", "reason", "words"),
    [
        ("video_only", "no_audio", "no audio stream"),
        ("audio_only", "no_video", "no video stream"),
        ("corrupt", "unreadable", "corrupt"),
        ("truncated", "unreadable", "corrupt"),
        ("missing", "unreadable", "does not exist"),
        ("silent", "silent_audio", "silent"),
    ],
)
def test_bad_clips_raise_clip_error_with_reason(tmp_path, kind, reason, words):
    path = tmp_path / f"{kind}.mp4"
    if kind == "video_only":
        make_clip(path, audio=False)
    elif kind == "audio_only":
        make_clip(path, video=False)
    elif kind == "corrupt":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elif kind == "truncated":
        whole = make_clip(tmp_path / "whole.mp4").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "silent":
        make_clip(path, amplitude=0.0)
    with pytest.raises(ClipError, match=words) as info:
        render_clip(path)
    assert info.value.reason == reason and isinstance(info.value, GenAlignError)
    returned = try_render_clip(path, {})
    assert isinstance(returned, ClipError) and returned.reason == reason
    copy = pickle.loads(pickle.dumps(returned))  # crosses process pools intact
    assert copy.reason == reason and str(copy) == str(returned)


def test_bad_options_raise_config_error(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=4)
    with pytest.raises(ConfigError, match="frames"):
        decode_clip(path, frames=0)
    with pytest.raises(ConfigError, match="frame_span"):
        decode_clip(path, frame_span=-1)
    with pytest.raises(ConfigError, match="image format"):
        render_clip(path, image_format="gif")
