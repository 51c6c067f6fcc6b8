"""Video clips through PyAV: a still frame from the middle of the video stream and the leading seconds of audio.

* **Middle frame.** The video stream runs from its first frame's time ``t0`` to ``t1``, the end of its last frame
  (last packet time + duration). The frame *on screen at* ``(t0 + t1) / 2`` is the middle frame: the last frame whose
  presentation time is ≤ that instant. For N frames at a constant rate starting at 0 that is frame ``N // 2``
  (0-based). With ``frames=k > 1`` the k instants ``mid + span · (j / (k − 1) − 1/2)``, j = 0 … k − 1 (evenly spaced
  over ``span`` seconds centred on the middle, clamped to the stream), each pick their frame that way and the k RGB
  frames are averaged (float mean, rounded to uint8).
* **Audio.** The first audio stream is decoded from its start, resampled by FFmpeg's swresample to the target rate
  (channels kept), mixed to mono by the channel mean and cut to at most ``seconds``; a shorter stream keeps its length.

Decoding needs no torch, so process pools start quickly. Every failure is a :class:`ClipError` whose ``reason`` is
one of :data:`REASONS` and whose message says what was wrong and how to fix it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gen_align.checks import choice, integer, non_negative, positive
from gen_align.errors import InputFileError

IMAGE_FORMATS = ("jpg", "png")
JPEG_QUALITY = 95
SILENCE_PEAK = 1e-4  # the encoders' threshold (gen_align.encoders.audio_io.SILENCE_PEAK): quieter audio is refused
REASONS = ("unreadable", "no_video", "no_audio", "silent_audio")
_REDOWNLOAD = "re-download the clip (yt-dlp) or re-encode it (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4)"


class ClipError(InputFileError):
    """A clip could not be turned into a frame and audio; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # keeps ``reason`` across process pools
        return type(self), (str(self), self.reason)


@dataclass(frozen=True)
class DecodedClip:
    """The averaged middle frame (H, W, 3) uint8, mono float32 audio, and where they came from."""

    frame: np.ndarray
    audio: np.ndarray
    sample_rate: int
    frame_times: tuple[float, ...]
    video_seconds: float

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class RenderedClip:
    """A decoded clip encoded for writing: image file bytes, FLAC bytes and the audio length in seconds."""

    image: bytes
    audio: bytes
    audio_seconds: float
    video_seconds: float


def decode_clip(
    path: str | os.PathLike,
    *,
    frames: int = 1,
    frame_span: float = 1.0,
    seconds: float = 10.0,
    sample_rate: int = 16000,
    threads: int = 0,
) -> DecodedClip:
    """Decode the middle frame (``frames`` averaged over ``frame_span`` seconds) and up to ``seconds`` of mono audio
    at ``sample_rate``. ``threads`` is FFmpeg's decoder thread count (0 = automatic). Raises :class:`ClipError`."""
    import av

    frames = integer(frames, "frames", 1, "Use 1 for the single middle frame.")
    frame_span = non_negative(frame_span, "frame_span", "It is the window (seconds) the frames are spread over.")
    seconds = positive(seconds, "seconds", "VGGSound clips are 10 s long.")
    sample_rate = integer(sample_rate, "sample_rate", 1)
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"clip {path} does not exist or is not a file; check the path.", "unreadable")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ClipError(
            f"{path} cannot be opened as a video ({err}); it is corrupt or truncated: {_REDOWNLOAD}."
        ) from err
    with container:
        video = next((s for s in container.streams.video if not _is_cover_art(s)), None)
        audio = container.streams.audio[0] if container.streams.audio else None
        _check_streams(path, container, video, audio)
        for stream in (video, audio):
            stream.codec_context.thread_count = threads
        try:
            vpackets, apackets = _demux(container, video, audio)
            wave = _decode_audio(path, audio, apackets, seconds, sample_rate)
            image, times, video_seconds = _decode_frames(path, video, vpackets, frames, frame_span)
        except (av.FFmpegError, ValueError) as err:
            message = f"{path}: decoding failed ({err}); the file is corrupt or truncated: {_REDOWNLOAD}."
            raise ClipError(message) from err
    return DecodedClip(image, wave, sample_rate, times, video_seconds)


def render_clip(
    path: str | os.PathLike,
    *,
    frames: int = 1,
    frame_span: float = 1.0,
    seconds: float = 10.0,
    sample_rate: int = 16000,
    image_format: str = "jpg",
    threads: int = 0,
) -> RenderedClip:
    """:func:`decode_clip`, refuse silent audio (peak < :data:`SILENCE_PEAK`, as the audio encoder does), and encode
    the frame as JPEG (quality :data:`JPEG_QUALITY`) or PNG and the audio as 16-bit FLAC."""
    image_format = choice(image_format, "image format", IMAGE_FORMATS)
    clip = decode_clip(
        path, frames=frames, frame_span=frame_span, seconds=seconds, sample_rate=sample_rate, threads=threads
    )
    peak = float(np.abs(clip.audio).max())
    if peak < SILENCE_PEAK:
        raise ClipError(
            f"{path}: its audio track is silent (peak {peak:.2g} < {SILENCE_PEAK:g}, ≈ -80 dBFS), so it carries no "
            "sound to align; the clip is left out. Check the source video's sound, or re-download it.",
            "silent_audio",
        )
    return RenderedClip(
        image=image_bytes(clip.frame, image_format),
        audio=flac_bytes(clip.audio, clip.sample_rate),
        audio_seconds=clip.audio_seconds,
        video_seconds=clip.video_seconds,
    )


def try_render_clip(path: str | os.PathLike, options: dict[str, Any]) -> RenderedClip | ClipError:
    """:func:`render_clip` that returns the :class:`ClipError` instead of raising it (for process pools, so one bad
    clip never stops a batch). Unexpected decoder exceptions become ``ClipError(reason="unreadable")``."""
    try:
        return render_clip(path, **options)
    except ClipError as err:
        return err
    except Exception as err:  # noqa: BLE001 - a decoder failing in an unforeseen way must not end a long batch
        return ClipError(f"{path}: decoding raised {type(err).__name__}: {err}; {_REDOWNLOAD}.", "unreadable")


def image_bytes(frame: np.ndarray, image_format: str = "jpg") -> bytes:
    """An (H, W, 3) uint8 frame as JPEG (quality :data:`JPEG_QUALITY`) or PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if choice(image_format, "image format", IMAGE_FORMATS) == "jpg":
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio in [-1, 1] (clipped) as 16-bit FLAC file bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ internals


def _is_cover_art(stream: Any) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _check_streams(path: Path, container: Any, video: Any, audio: Any) -> None:
    kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
    if video is None and audio is None:
        raise ClipError(
            f"{path} holds neither a video nor an audio stream ({kinds}); it is not a usable clip: {_REDOWNLOAD}."
        )
    if video is None:
        raise ClipError(
            f"{path} has no video stream (audio only; it holds: {kinds}), so there is no frame to take: re-download "
            "the clip with its video (yt-dlp -f 'bv*+ba').",
            "no_video",
        )
    if audio is None:
        raise ClipError(
            f"{path} has no audio stream (video only; it holds: {kinds}), so there is no sound to align: re-download "
            "the clip with its audio (yt-dlp -f 'bv*+ba').",
            "no_audio",
        )


def _demux(container: Any, video: Any, audio: Any) -> tuple[list, list]:
    """All packets of the two streams, in decode order (empty flush packets dropped)."""
    vpackets, apackets = [], []
    for packet in container.demux(video, audio):
        if packet.size == 0:
            continue
        (vpackets if packet.stream.index == video.index else apackets).append(packet)
    return vpackets, apackets


def _decode_audio(path: Path, stream: Any, packets: list, seconds: float, rate: int) -> np.ndarray:
    import av

    wanted = int(round(seconds * rate))
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks, count = [], 0

    def take(frames: list) -> None:
        nonlocal count
        for out in frames:
            mono = out.to_ndarray().astype(np.float32, copy=False).mean(axis=0, dtype=np.float32)
            chunks.append(mono)
            count += len(mono)

    codec = stream.codec_context
    for packet in packets:
        for frame in codec.decode(packet):
            take(resampler.resample(frame))
        if count >= wanted:
            break
    else:
        for frame in codec.decode(None):
            take(resampler.resample(frame))
        take(resampler.resample(None))
    wave = np.concatenate(chunks)[:wanted] if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        raise ClipError(f"{path}: its audio stream decodes to no samples (empty or corrupt track): {_REDOWNLOAD}.")
    if not np.isfinite(wave).all():
        raise ClipError(f"{path}: its audio decodes to NaN/inf samples (corrupt track): {_REDOWNLOAD}.")
    return np.ascontiguousarray(wave)


def _decode_frames(
    path: Path, stream: Any, packets: list, frames: int, span: float
) -> tuple[np.ndarray, tuple[float, ...], float]:
    """Average of the frames on screen at the target instants; their times and the stream's length (seconds)."""
    timed = [p for p in packets if p.pts is not None]
    if not timed:
        raise ClipError(f"{path}: its video stream has no packets with timestamps (empty or corrupt): {_REDOWNLOAD}.")
    base = float(stream.time_base)
    t0 = min(p.pts for p in timed)
    t1 = max(p.pts + (p.duration or _frame_step(timed, stream)) for p in timed)
    mid = (t0 + t1) / 2
    offsets = [0.0] if frames == 1 else [span * (j / (frames - 1) - 0.5) / base for j in range(frames)]
    last = max(t0, t1 - 1)  # the last pts still inside the stream
    targets = [min(max(mid + off, t0), last) for off in offsets]
    start = _start_packet(packets, min(targets))
    chosen = _frames_at(stream, packets[start:], targets)
    if chosen is None and start > 0:  # the keyframe guess failed (e.g. open GOP): decode from the beginning
        chosen = _frames_at(stream, packets, targets)
    if chosen is None:
        raise ClipError(f"{path}: no video frame could be decoded (corrupt video stream): {_REDOWNLOAD}.")
    arrays = [f.to_ndarray(format="rgb24") for f in chosen]
    height, width = arrays[0].shape[:2]
    arrays = [
        a if a.shape[:2] == (height, width) else f.to_ndarray(format="rgb24", width=width, height=height)
        for a, f in zip(arrays, chosen, strict=True)
    ]
    image = arrays[0] if len(arrays) == 1 else np.rint(np.mean(np.stack(arrays), axis=0)).astype(np.uint8)
    times = tuple((f.pts - t0) * base for f in chosen)
    return image, times, (t1 - t0) * base


def _frame_step(timed: list, stream: Any) -> float:
    """A frame's duration in time-base units when a packet lacks one: the median pts step, else 1 / frame rate."""
    pts = sorted({p.pts for p in timed})
    if len(pts) > 1:
        return float(np.median(np.diff(pts)))
    rate = stream.average_rate or stream.base_rate
    return 1.0 / (float(rate) * float(stream.time_base)) if rate else 1.0


def _start_packet(packets: list, target: float) -> int:
    """Index (decode order) of the last keyframe shown at or before ``target``: decoding can start there."""
    start = 0
    for i, packet in enumerate(packets):
        if packet.is_keyframe and packet.pts is not None and packet.pts <= target:
            start = i
    return start


def _frames_at(stream: Any, packets: list, targets: list[float]) -> list | None:
    """For each target, the last decoded frame with pts ≤ target (else the first frame decoded); None if no frame."""
    codec = stream.codec_context
    codec.flush_buffers()
    best: list = [None] * len(targets)
    first = None
    limit = max(targets)

    def visit(frame: Any) -> bool:
        nonlocal first
        if frame.pts is None:
            return False
        if first is None:
            first = frame
        for j, target in enumerate(targets):
            if frame.pts <= target and (best[j] is None or frame.pts > best[j].pts):
                best[j] = frame
        return frame.pts > limit  # frames leave the decoder in presentation order: later ones cannot win

    done = False
    for packet in packets:
        for frame in codec.decode(packet):
            done = visit(frame) or done
        if done:
            break
    else:
        for frame in codec.decode(None):
            visit(frame)
    if first is None:
        return None
    return [frame if frame is not None else first for frame in best]
