"""Audio decoding for the encoders: a file or a waveform → a 1-D float32 mono tensor at the target rate (16 kHz).

* Files: WAV/FLAC/OGG (and whatever else libsndfile reads) through soundfile; MP4/M4A/MP3/WebM/MKV/AAC/Opus
  (and whatever else FFmpeg reads) through PyAV, first audio stream only. An unknown extension is tried with
  soundfile, then PyAV. Once a decoder has recognised a file, its decoding errors are final (no fallback that
  could silently return half of a truncated file).
* Waveforms: NumPy arrays or torch tensors laid out ``(T,)`` (mono) or ``(channels, T)`` — channels first, as
  torchaudio uses. ``(T, channels)`` (soundfile's and Gradio's layout) is refused with a hint to transpose.
  Floats are taken as amplitudes in [-1, 1]; int16/int32/int8 are divided by 2^15/2^31/2^7, uint8 is centred at 128.
* Mono is the mean over channels; resampling is torchaudio's windowed-sinc ``functional.resample``.
"""

from __future__ import annotations

import math
import numbers
import os
import struct
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from gen_align.checks import choice, positive
from gen_align.errors import ConfigError, GenAlignError, InputDataError, InputFileError

SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff"})
PYAV_SUFFIXES = frozenset(
    {".mp4", ".m4a", ".m4v", ".mov", ".mp3", ".webm", ".mkv", ".mka", ".aac", ".opus", ".avi", ".wma"}
)
SILENCE_PEAK = 1e-4  # ≈ -80 dBFS: a clip whose mono peak is below this is "silent"
MAX_CHANNELS = 32  # a 2-D waveform with more rows than this is taken for a batch or a (T, channels) array
PROGRESS_MIN_ITEMS = 8  # load_audios shows a progress bar above this many clips
_MAX_KERNEL = 1 << 24  # torchaudio's sinc kernel has ≈ up·down taps; above this the rate ratio is approximated
_SCALE_WARN_PEAK = 2.0  # float audio peaking above this was probably left in integer units

AudioSource = str | os.PathLike | np.ndarray | torch.Tensor | tuple
_INT_SCALE = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


class _NotRecognisedError(Exception):
    """A decoder could not identify the file's format (the next decoder may)."""


def load_audio(
    source: AudioSource,
    sample_rate: float | None = None,
    *,
    target_rate: int = 16000,
    silence: str = "error",
    max_seconds: float | None = None,
    silence_fix: str | None = None,
) -> torch.Tensor:
    """Decode one clip to a new 1-D float32 mono CPU tensor at ``target_rate``.

    ``source`` is a file path, a waveform ``(T,)`` / ``(channels, T)`` with ``sample_rate``, or a
    ``(waveform, rate)`` tuple. ``silence`` says what to do when the peak is below :data:`SILENCE_PEAK`:
    ``"error"`` raises, ``"warn"`` warns and returns the clip, ``"ignore"`` returns it. ``max_seconds`` refuses
    longer clips. File problems raise :class:`InputFileError`, waveform problems :class:`InputDataError`.
    ``silence_fix`` replaces the silent-clip message's advice (a tower says where its setting lives).
    """
    opts = _options(target_rate, silence, max_seconds, silence_fix)
    return _load_one(source, sample_rate, opts, "the waveform")


def load_audios(
    sources: Sequence[AudioSource],
    sample_rate: float | None = None,
    *,
    target_rate: int = 16000,
    silence: str = "error",
    max_seconds: float | None = None,
    progress: bool | None = None,
) -> list[torch.Tensor]:
    """:func:`load_audio` over a list (paths, waveforms and tuples may be mixed; ``sample_rate`` applies to bare
    waveforms). Clips keep their own lengths: a list is returned, nothing is padded. A tqdm bar is shown for more
    than :data:`PROGRESS_MIN_ITEMS` clips unless ``progress`` says otherwise."""
    if isinstance(sources, (str, os.PathLike, np.ndarray, torch.Tensor, tuple)):
        raise InputDataError(
            f"load_audios takes a list of clips, got a single {type(sources).__name__}; "
            "wrap it in a list or call load_audio for one clip."
        )
    items = list(sources)
    if not items:
        raise InputDataError("no audio clips given (empty list); pass at least one path or waveform.")
    opts = _options(target_rate, silence, max_seconds)
    show = len(items) > PROGRESS_MIN_ITEMS if progress is None else progress
    out = []
    for i, item in enumerate(tqdm(items, desc="load audio", unit="clip", disable=not show)):
        rate = None if isinstance(item, (str, os.PathLike, tuple)) else sample_rate
        out.append(_load_one(item, rate, opts, f"waveform sources[{i}]"))
    return out


TOWER_SILENCE_FIX = (
    'set "silence": "warn" (or "ignore") under towers.audio in the space\'s config.json to accept silent clips'
)


def load_tower_inputs(items: Sequence[AudioSource], silence: str = "error") -> list[torch.Tensor]:
    """An audio tower's inputs (paths or ``(waveform, rate)`` pairs) → 16-kHz mono clips. A silent clip's message
    says where a command-line user accepts it: the tower's ``silence`` setting in the space's config."""
    return [load_audio(item, silence=silence, silence_fix=TOWER_SILENCE_FIX) for item in items]


def check_duration(path: str | os.PathLike, max_seconds: float, *, hint: str = "") -> None:
    """Refuse an audio file longer than ``max_seconds`` without decoding it when its header declares its length
    (``hint``, e.g. the flag that sets the limit, is appended to the message); a file that declares none is decoded
    with the limit enforced as it goes."""
    path = Path(path)
    seconds = _declared_file_seconds(path)
    if seconds is None:
        load_audio(path, max_seconds=max_seconds)
    elif seconds > max_seconds:
        raise InputFileError(
            f"{_too_long(str(path), seconds, max_seconds)} ({hint})"
            if hint
            else _too_long(str(path), seconds, max_seconds)
        )


def _declared_file_seconds(path: Path) -> float | None:
    """The length a file's header declares (libsndfile, else FFmpeg's container), None when unknown or unreadable."""
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except (RuntimeError, TypeError, ValueError, OSError):
        pass
    import av

    try:
        with av.open(str(path)) as container:
            return _declared_seconds(container, container.streams.audio[0]) if container.streams.audio else None
    except (av.FFmpegError, OSError, ValueError):
        return None


def _options(target_rate: object, silence: object, max_seconds: object, silence_fix: str | None = None) -> dict:
    return {
        "silence_fix": silence_fix or "pass silence='warn' or 'ignore' to accept silent clips",
        "target_rate": _rate(target_rate, "target_rate"),
        "silence": choice(silence, "silence mode", ("error", "warn", "ignore")),
        "max_seconds": None if max_seconds is None else positive(max_seconds, "max_seconds", "Use None for no limit."),
    }


def _rate(value: object, what: str) -> int:
    """A sample rate as an int; ConfigError unless it is a positive whole number (16000 or 16000.0)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value > 0 and float(value).is_integer()):
        raise ConfigError(f"{what} must be a positive whole number of Hz such as 16000, got {value!r}.")
    return int(value)


def _load_one(source: object, sample_rate: object, opts: dict, name: str) -> torch.Tensor:
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise ConfigError(
                f"sample_rate={sample_rate!r} was given with the file {source}, but a file's rate is read from the "
                "file; sample_rate is only for in-memory waveforms. Use target_rate to choose the output rate."
            )
        path = Path(source)
        wave, rate = _read_file(path, opts["max_seconds"])
        return _finish(wave, rate, str(path), InputFileError, opts)
    if isinstance(source, tuple):
        source, sample_rate = _split_pair(source, sample_rate, name)
    if not isinstance(source, (np.ndarray, torch.Tensor)):
        raise InputDataError(
            f"cannot load audio from a {type(source).__name__}: pass a file path, a NumPy array or torch tensor "
            "shaped (T,) or (channels, T) with sample_rate, or a (waveform, rate) tuple; use load_audios for a list."
        )
    if sample_rate is None:
        raise ConfigError(
            f"{name} is an in-memory array, so its sample rate is unknown; pass it, "
            "e.g. load_audio(wave, sample_rate=44100) or load_audio((wave, 44100))."
        )
    rate = _rate(sample_rate, "sample_rate")
    return _finish(_waveform_array(source, name), rate, name, InputDataError, opts)


def _split_pair(pair: tuple, sample_rate: object, name: str) -> tuple[object, object]:
    arrays = (np.ndarray, torch.Tensor)
    if len(pair) == 2 and isinstance(pair[0], arrays) and not isinstance(pair[1], arrays):
        if sample_rate is not None and sample_rate != pair[1]:
            raise ConfigError(f"{name} comes with rate {pair[1]!r} but sample_rate={sample_rate!r}; pass only one.")
        return pair
    if len(pair) == 2 and isinstance(pair[1], arrays):
        raise InputDataError(
            f"{name} is a (rate, waveform) tuple (Gradio's order); pass (waveform, rate) instead — and note that "
            "Gradio's 2-D arrays are (T, channels), so transpose them: (data.T, rate)."
        )
    raise InputDataError(f"{name} is a tuple of {len(pair)} items; an audio tuple must be (waveform, sample_rate).")


def _waveform_array(source: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A user waveform as a float32 ``(channels, T)`` array."""
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu()
        source = (source.float() if source.is_floating_point() else source).numpy()
    arr = _pcm_to_float(np.asarray(source), name)
    if arr.ndim == 1:
        return arr[None]
    if arr.ndim != 2:
        raise InputDataError(
            f"{name} has shape {tuple(arr.shape)}; a waveform must be (T,) mono or (channels, T). "
            "For several clips pass a list of waveforms to load_audios."
        )
    channels, frames = arr.shape
    if arr.size and (channels > frames or channels > MAX_CHANNELS):
        raise InputDataError(
            f"{name} has shape {tuple(arr.shape)}, which is ambiguous: a 2-D waveform is read as (channels, T) with "
            f"at most {MAX_CHANNELS} channels and more samples than channels. If it is (T, channels), as soundfile "
            "and Gradio return, pass waveform.T; for several clips pass a list to load_audios."
        )
    return arr


def _pcm_to_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Samples of any PCM dtype as float32 amplitudes (ints scaled to [-1, 1])."""
    if arr.dtype in _INT_SCALE:
        return (arr.astype(np.float32) / np.float32(_INT_SCALE[arr.dtype])).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    raise InputDataError(
        f"{name} has dtype {arr.dtype}, which has no standard audio scale; pass float amplitudes in [-1, 1] "
        "or int16/int32/int8/uint8 PCM samples (e.g. wave.astype(np.float32) / 32768 for 16-bit values)."
    )


def _finish(wave: np.ndarray, rate: int, name: str, error: type[GenAlignError], opts: dict) -> torch.Tensor:
    """Checks shared by files and waveforms, then mono mix and resampling. ``wave`` is float32 (channels, T)."""
    frames = wave.shape[-1]
    if wave.size == 0:
        raise error(f"{name} contains no audio samples (zero length); give a clip with sound in it.")
    bad = ~np.isfinite(wave)
    if bad.any():
        first = int(np.argmax(bad.any(axis=0)))
        raise error(
            f"{name} contains {int(bad.sum())} NaN/inf sample(s) (first at {first / rate:.3f} s); the encoders need "
            "finite audio. Re-export it, or fix the processing that produced it (e.g. np.nan_to_num)."
        )
    seconds, limit = frames / rate, opts["max_seconds"]
    if limit is not None and seconds > limit:
        raise error(_too_long(name, seconds, limit))
    peak = float(np.abs(wave).max())
    if peak > _SCALE_WARN_PEAK:
        warnings.warn(
            f"{name} peaks at {peak:.4g}, but float audio is read as amplitudes in [-1, 1]; if it holds integer "
            "sample values, divide by 32768 (16-bit) first.",
            UserWarning,
            stacklevel=4,
        )
    mono = wave.mean(axis=0, dtype=np.float32) if wave.shape[0] > 1 else wave[0]
    mono_peak = float(np.abs(mono).max())
    if mono_peak < SILENCE_PEAK and opts["silence"] != "ignore":
        message = (
            f"{name} is silent: its peak amplitude {mono_peak:.2g} is below {SILENCE_PEAK:g} (≈ -80 dBFS). "
            f"Check the recording or the audio track, or {opts['silence_fix']}."
        )
        if opts["silence"] == "error":
            raise error(message)
        warnings.warn(message, UserWarning, stacklevel=4)
    return _resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, opts["target_rate"])


def _too_long(name: str, seconds: float, limit: float) -> str:
    return (
        f"{name} is {seconds:.2f} s long, over the limit max_seconds={limit:g}; trim it "
        f"(e.g. ffmpeg -i IN -t {limit:g} OUT.wav) or raise max_seconds."
    )


def _resample(mono: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Windowed-sinc resampling. Rates whose ratio reduces to no small fraction (e.g. 16001 → 16000, whose exact
    kernel would need ~1 GB) use the nearest fraction with denominator ≤ 2000 (rate error ≤ 0.05 %)."""
    if orig == new:
        return mono.clone()  # never share memory with the caller's array
    g = math.gcd(orig, new)
    up, down = new // g, orig // g
    if up * down > _MAX_KERNEL:
        ratio = Fraction(new, orig).limit_denominator(2000)
        up, down = ratio.numerator, ratio.denominator
    return AF.resample(mono[None], down, up)[0].contiguous()


# ---------------------------------------------------------------------------------------------------- files


def _read_file(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 (channels, T) and its rate, choosing decoders by extension."""
    if not path.exists():
        raise InputFileError(f"audio file {path} does not exist; check the path (relative to {Path.cwd()}).")
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not an audio file; pass the path of a file inside it.")
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as err:
        raise InputFileError(f"cannot read audio file {path}: {err.strerror or err}; check its permissions.") from err
    if not head:
        raise InputFileError(f"audio file {path} is empty (0 bytes); re-download or re-export it.")
    suffix = path.suffix.lower()
    readers = (_read_pyav, _read_soundfile) if suffix in PYAV_SUFFIXES else (_read_soundfile, _read_pyav)
    failures = []
    for reader in readers:
        try:
            return reader(path, max_seconds)
        except _NotRecognisedError as err:
            failures.append(str(err).rstrip("."))
    raise InputFileError(
        f"could not decode {path} as audio ({'; '.join(failures)}). It is corrupt, truncated or not an audio/video "
        f"file; inspect it with `ffprobe {path}`, or re-download / re-encode it (e.g. ffmpeg -i IN -ac 1 OUT.wav)."
    )


def _read_soundfile(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, TypeError, ValueError) as err:
        raise _NotRecognisedError(f"soundfile: {err}") from err
    if max_seconds is not None and info.duration > max_seconds:
        raise InputFileError(_too_long(str(path), info.duration, max_seconds))
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as err:
        raise InputFileError(
            f"{path} is a {info.format} file but its audio could not be decoded ({err}); it is corrupt or "
            "truncated. Re-download or re-export it."
        ) from err
    _check_wav_complete(path, info.duration)
    return np.ascontiguousarray(data.T), int(rate)


def _check_wav_complete(path: Path, seconds: float) -> None:
    """libsndfile reads a truncated RIFF/WAVE file without complaint; compare its data chunk with the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and present < length:
                    declared = seconds * length / max(present, 1)
                    raise InputFileError(
                        f"{path} is truncated: its header declares {declared:.2f} s of audio but the file holds only "
                        f"{seconds:.2f} s ({present} of {length} data bytes). Re-download or re-export it."
                    )
                return
            pos += 8 + length + (length & 1)


def _read_pyav(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise _NotRecognisedError(f"PyAV: {err}") from err
    with container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise InputFileError(
                f"{path} has no audio track (it holds: {kinds}), so there is no sound to encode; skip this clip or "
                "pass a file with an audio stream (check with ffprobe)."
            )
        stream = container.streams.audio[0]
        if not stream.rate:  # FFmpeg guessed the format from the extension alone; the content is not audio
            raise _NotRecognisedError(f"PyAV: no decodable {container.format.name} audio stream")
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds + 0.5:
            raise InputFileError(_too_long(str(path), declared, max_seconds))
        chunks, rate, count = [], None, 0
        try:
            for frame in container.decode(stream):
                if rate is None:
                    rate = frame.sample_rate
                elif frame.sample_rate != rate:
                    raise InputFileError(
                        f"{path}: the audio track changes sample rate mid-stream ({rate} → {frame.sample_rate} Hz); "
                        "re-encode it at one rate (e.g. ffmpeg -i IN -ar 16000 OUT.wav)."
                    )
                chunks.append(_frame_to_mono(frame, path))
                count += frame.samples
                if max_seconds is not None and count / rate > max_seconds:
                    raise InputFileError(_too_long(str(path), max(declared or 0.0, count / rate), max_seconds))
        except av.FFmpegError as err:
            raise InputFileError(
                f"{path}: decoding its {stream.codec_context.name} audio failed after {count / (rate or 1):.2f} s "
                f"({err}); the file is corrupt or truncated. Re-download or re-encode it."
            ) from err
    rate = rate or stream.rate or 1
    if declared is not None and count / rate < 0.9 * declared - 0.1:
        warnings.warn(
            f"{path}: decoded {count / rate:.2f} s of audio but its header declares {declared:.2f} s; the file may "
            "be truncated. Re-download it if the clip is cut short.",
            UserWarning,
            stacklevel=5,
        )
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wave[None], int(rate)


def _declared_seconds(container: object, stream: object) -> float | None:
    """The audio track's duration from the header: its own, else the container's when it holds only audio."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base
    return None


def _frame_to_mono(frame: object, path: Path) -> np.ndarray:
    """A decoded PyAV frame (planar or packed; u8/s16/s32/flt/dbl) as float32 mono samples."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # packed: (1, samples·channels), interleaved
        arr = arr.reshape(-1, channels).T
    try:
        arr = _pcm_to_float(arr, f"{path} (decoded as {frame.format.name})")
    except InputDataError as err:
        raise InputFileError(f"{err}. Re-encode the file, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav.") from None
    return arr.mean(axis=0, dtype=np.float32) if arr.shape[0] > 1 else arr[0]
