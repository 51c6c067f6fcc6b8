"""Audio decoding: formats, channel layouts, resampling accuracy and every refused input (media made in tmp_path)."""

from __future__ import annotations

import fractions
import os
import warnings

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from gen_align.encoders.audio_io import SILENCE_PEAK, _frame_to_mono, load_audio, load_audios
from gen_align.errors import ConfigError, GenAlignError, InputDataError, InputFileError


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    """(channels, T) float32; channel c has amplitude amp / (c + 1)."""
    t = np.arange(int(round(rate * seconds))) / rate
    wave = np.sin(2 * np.pi * freq * t)
    return np.stack([amp / (c + 1) * wave for c in range(channels)]).astype(np.float32)


def dominant_hz(x: torch.Tensor, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def amplitude(x: torch.Tensor) -> float:
    """Sine amplitude from the RMS of the middle half (edges carry resampler/codec transients)."""
    n = len(x)
    return float(x[n // 4 : 3 * n // 4].pow(2).mean().sqrt()) * np.sqrt(2)


def encode(path, wave: np.ndarray, rate: int, codec: str, fmt: str, **open_kw) -> str:
    """Write (channels, T) float audio with PyAV; ``fmt`` is the encoder's sample format (planar or packed)."""
    layout = {1: "mono", 2: "stereo"}[wave.shape[0]]
    scale = {"s16": 32767, "s32": 2147483647}.get(fmt.rstrip("p"))
    dtype = {"s16": np.int16, "s32": np.int32}.get(fmt.rstrip("p"), np.float32)
    with av.open(str(path), "w", **open_kw) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.format = fmt
        size = stream.codec_context.frame_size or 1024
        for start in range(0, wave.shape[1], size):
            chunk = wave[:, start : start + size]
            chunk = (chunk * scale).astype(dtype) if scale else chunk.astype(dtype)
            if not av.AudioFormat(fmt).is_planar:
                chunk = chunk.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def encode_video_only(path) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def truncate(path, fraction: float = 0.5) -> str:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(path)


# ------------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("suffix", "subtype"), [(".wav", "PCM_16"), (".wav", "PCM_32"), (".wav", "FLOAT"), (".flac", None), (".ogg", None)]
)
def test_soundfile_formats_decode_to_16k_mono(tmp_path, suffix, subtype):
    wave = sine(1000, 48000, channels=2)
    path = tmp_path / f"a{suffix}"
    sf.write(path, wave.T, 48000, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == torch.float32 and out.ndim == 1 and len(out) == 16000
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=2)
    # mono = mean of 0.5 and 0.25 amplitudes
    assert amplitude(out) == pytest.approx(0.375, rel=0.02 if suffix == ".ogg" else 0.01)


@pytest.mark.parametrize(
    ("name", "codec", "fmt", "rate", "channels", "tol"),
    [
        ("a.mp4", "aac", "fltp", 48000, 1, 0.05),
        ("a.m4a", "aac", "fltp", 44100, 2, 0.05),
        ("a.mp3", "libmp3lame", "fltp", 48000, 1, 0.05),
        ("a.webm", "libopus", "s16", 48000, 2, 0.05),
        ("s16.mkv", "pcm_s16le", "s16", 48000, 2, 0.01),
        ("s32.mkv", "pcm_s32le", "s32", 22050, 2, 0.01),
        ("f32.mkv", "pcm_f32le", "flt", 8000, 1, 0.01),
    ],
)
def test_pyav_formats_decode_to_16k_mono(tmp_path, name, codec, fmt, rate, channels, tol):
    path = encode(tmp_path / name, sine(440, rate, channels=channels), rate, codec, fmt)
    out = load_audio(path)
    assert out.dtype == torch.float32 and out.ndim == 1
    assert len(out) == pytest.approx(16000, abs=800)  # codecs add priming/padding samples
    assert dominant_hz(out, 16000) == pytest.approx(440, abs=2)
    assert amplitude(out) == pytest.approx(0.5 if channels == 1 else 0.375, rel=tol)


@pytest.mark.parametrize(
    ("fmt", "dtype", "scale"),
    [
        ("s16", np.int16, 32768),
        ("s16p", np.int16, 32768),
        ("s32", np.int32, 2**31),
        ("s32p", np.int32, 2**31),
        ("flt", np.float32, 1),
        ("fltp", np.float32, 1),
        ("dbl", np.float64, 1),
        ("u8", np.uint8, None),
    ],
)
def test_frame_conversion_handles_planar_and_packed(fmt, dtype, scale):
    left, right = np.array([0.5, -0.5, 0.25, 0.0]), np.array([0.0, 0.5, 0.25, -1.0])
    planes = np.stack([left, right])
    raw = np.rint(planes * 128 + 128).clip(0, 255) if scale is None else planes * scale
    raw = raw.clip(np.iinfo(dtype).min, np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else raw
    raw = raw.astype(dtype)
    if not av.AudioFormat(fmt).is_planar:
        raw = raw.T.reshape(1, -1)  # interleaved L R L R …
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(raw), format=fmt, layout="stereo")
    mono = _frame_to_mono(frame, "x.mp4")
    assert mono.dtype == np.float32 and mono.shape == (4,)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-2 if scale is None else 1e-6)


@pytest.mark.parametrize("rate", [44100, 48000, 8000])
def test_resampling_preserves_frequency_and_amplitude(rate):
    out = load_audio(sine(1000, rate)[0], rate)
    assert len(out) == 16000
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=1)
    assert amplitude(out) == pytest.approx(0.5, rel=0.01)


def test_resampling_removes_content_above_the_new_nyquist():
    out = load_audio(sine(12000, 48000)[0], 48000, silence="ignore")  # would alias to 4 kHz without a lowpass
    assert amplitude(out) < 0.5 * 0.01


def test_odd_rate_ratio_is_approximated_not_exploded():
    out = load_audio(sine(1000, 16001)[0], 16001)  # exact kernel would need ~1 GB
    assert len(out) == pytest.approx(16000, abs=2)
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=1)
    assert amplitude(out) == pytest.approx(0.5, rel=0.01)


def test_same_rate_returns_the_mono_mix_unchanged():
    wave = sine(300, 16000, channels=2)
    out = load_audio(wave, 16000)
    np.testing.assert_allclose(out.numpy(), wave.mean(0), atol=1e-7)
    assert load_audio(sine(300, 22050)[0], 22050, target_rate=22050).shape == (22050,)


def test_unknown_extensions_fall_back_between_decoders(tmp_path):
    sf.write(tmp_path / "clip.dat", sine(500, 16000)[0], 16000, format="WAV")
    encode(tmp_path / "clip.bin", sine(500, 16000), 16000, "aac", "fltp", format="mp4")
    wav_named_mp4 = tmp_path / "clip.mp4"
    sf.write(wav_named_mp4, sine(500, 16000)[0], 16000, format="WAV")
    for name in ("clip.dat", "clip.bin", "clip.mp4"):
        assert dominant_hz(load_audio(tmp_path / name), 16000) == pytest.approx(500, abs=2)


# ------------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.int16, 2**15), (np.int32, 2**31), (np.int8, 2**7), (np.float64, 1), (np.float16, 1)]
)
def test_array_dtypes_are_scaled_to_unit_range(dtype, scale):
    wave = (sine(200, 16000, amp=0.5)[0] * scale).astype(dtype)
    assert amplitude(load_audio(wave, 16000)) == pytest.approx(0.5, rel=0.01)


def test_uint8_is_centred_and_torch_inputs_work():
    wave = sine(200, 16000, amp=0.5)[0]
    assert amplitude(load_audio(np.rint(wave * 128 + 128).astype(np.uint8), 16000)) == pytest.approx(0.5, rel=0.02)
    int16 = torch.from_numpy((wave * 32768).astype(np.int16))
    assert amplitude(load_audio(int16, 16000)) == pytest.approx(0.5, rel=0.01)
    grad = torch.from_numpy(wave).double().requires_grad_()
    out = load_audio((grad, 16000.0))  # (waveform, rate) tuple; whole-number float rates are fine
    assert out.dtype == torch.float32 and not out.requires_grad
    assert load_audio(wave.astype(np.float32), np.int64(16000)).shape == (16000,)


def test_channels_first_is_averaged():
    wave = np.stack([np.full(1000, 0.2), np.full(1000, 0.4), np.full(1000, 0.0)]).astype(np.float32)
    np.testing.assert_allclose(load_audio(wave, 16000).numpy(), 0.2, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ((16000, 2), "pass waveform.T"),
        ((40, 16000), "at most 32 channels"),
        ((2, 3, 100), "(T,) mono or (channels, T)"),
    ],
)
def test_ambiguous_shapes_are_refused(shape, needle):
    with pytest.raises(InputDataError, match=r"shape") as info:
        load_audio(np.full(shape, 0.1, np.float32), 16000)
    assert needle in str(info.value)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_, np.complex64])
def test_dtypes_without_an_audio_scale_are_refused(dtype):
    with pytest.raises(InputDataError, match=f"dtype {np.dtype(dtype)}.*float amplitudes"):
        load_audio(np.ones(100, dtype), 16000)


def test_bad_source_types_and_tuples_are_refused():
    with pytest.raises(InputDataError, match="cannot load audio from a list"):
        load_audio([0.1, 0.2], 16000)
    with pytest.raises(InputDataError, match=r"\(rate, waveform\).*pass \(waveform, rate\)"):
        load_audio((16000, np.ones(100, np.float32)))
    with pytest.raises(ConfigError, match="pass only one"):
        load_audio((np.ones(100, np.float32), 16000), 8000)


def test_integer_peak_in_float_array_warns():
    with pytest.warns(UserWarning, match="divide by 32768"):
        load_audio(sine(200, 16000, amp=12000.0)[0], 16000)


# ------------------------------------------------------------------------------------------------- sample rates


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, float("nan"), float("inf"), "16000", True])
def test_bad_sample_rates_are_config_errors(rate):
    with pytest.raises(ConfigError, match="sample_rate must be a positive whole number of Hz"):
        load_audio(np.ones(100, np.float32), rate)


def test_missing_rate_bad_target_and_rate_with_file(tmp_path):
    with pytest.raises(ConfigError, match="sample rate is unknown; pass it"):
        load_audio(np.ones(100, np.float32))
    with pytest.raises(ConfigError, match="target_rate must be a positive whole number"):
        load_audio(np.ones(100, np.float32), 16000, target_rate=0)
    with pytest.raises(ConfigError, match="silence mode"):
        load_audio(np.ones(100, np.float32), 16000, silence="loud")
    path = tmp_path / "a.wav"
    sf.write(path, sine(200, 16000)[0], 16000)
    with pytest.raises(ConfigError, match=r"a.wav.*only for in-memory waveforms"):
        load_audio(path, 16000)


# ------------------------------------------------------------------------------------------------- bad files


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputFileError, match=r"nope.wav does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(InputFileError, match="is a directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp4", "noise.flac", "noise.xyz", "empty.wav"])
def test_unreadable_files_name_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputFileError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    assert ("empty (0 bytes)" if name.startswith("empty") else "could not decode") in message
    assert isinstance(info.value, OSError) and isinstance(info.value, GenAlignError)


def test_truncated_files_are_refused(tmp_path):
    wav = tmp_path / "cut.wav"
    sf.write(wav, sine(200, 16000)[0], 16000, subtype="PCM_16")
    with pytest.raises(InputFileError, match=r"cut.wav is truncated: its header declares 1.00 s"):
        load_audio(truncate(wav))
    flac = tmp_path / "cut.flac"
    sf.write(flac, np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    with pytest.raises(InputFileError, match=r"cut.flac is a FLAC file but its audio could not be decoded"):
        load_audio(truncate(flac))
    mp4 = encode(tmp_path / "cut.mp4", sine(200, 16000, seconds=2), 16000, "aac", "fltp")
    with pytest.raises(InputFileError, match=r"could not decode .*cut.mp4"):  # index (moov) at the end is lost
        load_audio(truncate(mp4))
    fast = encode(tmp_path / "fast.mp4", sine(200, 48000, 2), 48000, "aac", "fltp", options={"movflags": "faststart"})
    with pytest.raises(InputFileError, match=r"fast.mp4: decoding its aac audio failed .* corrupt or truncated"):
        load_audio(truncate(fast))


def test_truncation_detected_from_the_header_duration_warns(tmp_path):
    path = encode(tmp_path / "cut.mkv", sine(200, 16000, 2), 16000, "pcm_s16le", "s16")
    with pytest.warns(UserWarning, match=r"cut.mkv: decoded .* header declares 2.00 s; the file may be truncated"):
        out = load_audio(truncate(path))
    assert 0.5 * 16000 < len(out) < 1.5 * 16000


def test_video_without_audio_track(tmp_path):
    path = encode_video_only(tmp_path / "silent_film.mp4")
    with pytest.raises(InputFileError, match=r"silent_film.mp4 has no audio track \(it holds: video\)"):
        load_audio(path)


def test_zero_length_audio(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(InputFileError, match=r"zero.wav contains no audio samples"):
        load_audio(path)
    with pytest.raises(InputDataError, match="the waveform contains no audio samples"):
        load_audio(np.zeros(0, np.float32), 16000)
    with pytest.raises(InputDataError, match="contains no audio samples"):
        load_audio(torch.zeros(2, 0), 16000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_are_refused(tmp_path, bad):
    wave = sine(200, 16000)[0]
    wave[8000] = bad
    with pytest.raises(InputDataError, match=r"1 NaN/inf sample\(s\) \(first at 0.500 s\)"):
        load_audio(wave, 16000)
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    with pytest.raises(InputFileError, match=r"nan.wav contains 1 NaN/inf"):
        load_audio(path)


def test_silence_modes(tmp_path):
    quiet = np.full(16000, SILENCE_PEAK / 2, np.float32)
    with pytest.raises(InputDataError, match=r"is silent: its peak amplitude 5e-05 is below 0.0001.*silence='warn'"):
        load_audio(quiet, 16000)
    path = tmp_path / "quiet.wav"
    sf.write(path, quiet, 16000, subtype="FLOAT")
    with pytest.raises(InputFileError, match=r"quiet.wav is silent"):
        load_audio(path)
    with pytest.warns(UserWarning, match="quiet.wav is silent"):
        assert load_audio(path, silence="warn").shape == (16000,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_audio(path, silence="ignore").shape == (16000,)


def test_max_seconds(tmp_path):
    with pytest.raises(InputDataError, match=r"is 3.00 s long, over the limit max_seconds=2"):
        load_audio(sine(100, 8000, 3)[0], 8000, max_seconds=2)
    assert load_audio(sine(100, 8000, 3)[0], 8000, max_seconds=3).shape == (48000,)
    wav = tmp_path / "long.wav"
    sf.write(wav, sine(100, 8000, 3)[0], 8000)
    with pytest.raises(InputFileError, match=r"long.wav is 3.00 s long, over the limit max_seconds=1.5"):
        load_audio(wav, max_seconds=1.5)
    mp4 = encode(tmp_path / "long.mp4", sine(100, 8000, 3), 8000, "aac", "fltp")
    with pytest.raises(InputFileError, match=r"long.mp4 is 3.\d\d s long, over the limit max_seconds=1"):
        load_audio(mp4, max_seconds=1)
    with pytest.raises(ConfigError, match="max_seconds must be a positive"):
        load_audio(wav, max_seconds=0)


# ------------------------------------------------------------------------------------------------- many clips


def test_load_audios_keeps_lengths_and_mixes_sources(tmp_path, capsys):
    path = tmp_path / "a.wav"
    sf.write(path, sine(300, 16000, 0.5)[0], 16000)
    sources = [path, os.fspath(path), sine(300, 8000, 1)[0], (sine(300, 32000, 0.25)[0], 32000)] * 3
    out = load_audios(sources, sample_rate=8000)
    assert [len(x) for x in out[:4]] == [8000, 8000, 16000, 4000]
    assert "load audio" in capsys.readouterr().err  # 12 clips > handful → progress bar
    load_audios(sources[:4], sample_rate=8000)
    assert "load audio" not in capsys.readouterr().err


def test_load_audios_errors_name_the_item():
    with pytest.raises(InputDataError, match=r"waveform sources\[1\] contains 1 NaN"):
        load_audios([np.ones(100, np.float32), np.array([0.1, np.nan], np.float32)], sample_rate=16000)
    with pytest.raises(InputDataError, match="takes a list of clips, got a single str"):
        load_audios("a.wav")
    with pytest.raises(InputDataError, match="no audio clips given"):
        load_audios([])


def test_output_never_shares_memory_with_the_input():
    wave = sine(200, 16000)[0]
    out = load_audio(wave, 16000)
    out.zero_()
    assert wave.max() > 0.4
