"""Mini-world audio: 2 s of a jittered tone whose pitch, octave, timbre and rhythm encode the attributes.

colour → pitch class (whole-tone scale from C4), size → octave (large: that octave, small: one up),
shape → timbre (amplitudes of harmonics 1..8), background → rhythm (sustained, 4 Hz pulses, 8 Hz blips).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import soundfile

SAMPLE_RATE = 16_000
DURATION_S = 2.0
NUM_SAMPLES = int(SAMPLE_RATE * DURATION_S)
PITCHES_HZ: dict[str, float] = {  # C4 D4 E4 F#4 G#4 A#4
    "red": 261.63,
    "orange": 293.66,
    "yellow": 329.63,
    "green": 369.99,
    "blue": 415.30,
    "purple": 466.16,
}
OCTAVE_FACTOR = {"large": 1.0, "small": 2.0}
HARMONICS: dict[str, tuple[float, ...]] = {  # amplitude of harmonics 1..8
    "circle": (1, 0, 0, 0, 0, 0, 0, 0),  # pure sine
    "square": (1, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7, 0),  # odd harmonics 1/k
    "triangle": (1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7, 1 / 8),  # sawtooth
    "star": (1, 1, 1, 1, 1, 1, 1, 1),  # flat and bright
    "cross": (1, 1, 0, 1, 0, 0, 0, 1),  # octaves only: harmonics 1, 2, 4, 8
}
RHYTHM_HZ = {"plain": 0.0, "stripes": 4.0, "dots": 8.0}
PITCH_JITTER = 0.015
TEMPO_JITTER = 0.05
SNR_DB = (10.0, 25.0)
PEAK_GAIN = (0.3, 0.9)
EDGE_FADE_S = 0.01
_TIME32 = (np.arange(NUM_SAMPLES) / SAMPLE_RATE).astype(np.float32)
_BLOCK = 800  # divides NUM_SAMPLES
_FADE_IN = np.linspace(0.0, 1.0, int(EDGE_FADE_S * SAMPLE_RATE), dtype=np.float32)


@dataclass(frozen=True)
class Sound:
    """Everything random about one clip; :func:`synthesize` turns it into samples deterministically."""

    f0: float
    timbre: str
    rhythm: str
    tempo: float  # multiplies the rhythm rate
    onset: float  # seconds: delay of a sustained tone, or phase of the pulse train
    harmonic_phases: tuple[float, ...]
    snr_db: float
    peak: float
    noise_seed: int


def draw_sound(attributes: Mapping[str, str], rng: np.random.Generator) -> Sound:
    """The random parameters of the clip for ``attributes``."""
    base = PITCHES_HZ[attributes["colour"]] * OCTAVE_FACTOR[attributes["size"]]
    f0 = base * (1.0 + float(rng.uniform(-PITCH_JITTER, PITCH_JITTER)))
    tempo = 1.0 + float(rng.uniform(-TEMPO_JITTER, TEMPO_JITTER))
    rate = RHYTHM_HZ[attributes["background"]] * tempo
    onset = float(rng.uniform(0.0, 0.1 if rate == 0 else 1.0 / rate))
    return Sound(
        f0=f0,
        timbre=attributes["shape"],
        rhythm=attributes["background"],
        tempo=tempo,
        onset=onset,
        harmonic_phases=tuple(float(p) for p in rng.uniform(0.0, 2 * np.pi, size=len(HARMONICS["circle"]))),
        snr_db=float(rng.uniform(*SNR_DB)),
        peak=float(rng.uniform(*PEAK_GAIN)),
        noise_seed=int(rng.integers(2**63)),
    )


def _fraction32(values: np.ndarray) -> np.ndarray:
    return (values - np.floor(values)).astype(np.float32)


def _cycle_fraction(f0: float) -> np.ndarray:
    """``frac(f0 · t)`` per sample in float32, exact to ~1e-7: block offsets in float64, the rest in float32."""
    step = f0 / SAMPLE_RATE
    offsets = _fraction32(np.arange(NUM_SAMPLES // _BLOCK) * (_BLOCK * step))
    within = _fraction32(np.arange(_BLOCK) * step)
    fraction = offsets[:, None] + within[None, :]
    fraction -= fraction >= 1
    return fraction.reshape(-1)


def _tone(sound: Sound) -> np.ndarray:
    """Sum of the timbre's harmonics (sines in float32 of phases reduced to one cycle: fast and exact)."""
    fraction = _cycle_fraction(sound.f0)
    out = np.zeros(NUM_SAMPLES, dtype=np.float32)
    for k, (amplitude, phase) in enumerate(zip(HARMONICS[sound.timbre], sound.harmonic_phases, strict=True), 1):
        if amplitude:
            out += np.float32(amplitude) * np.sin(np.float32(2 * np.pi * k) * fraction + np.float32(phase))
    return out


def _ramp(t: np.ndarray, start: float, length: float) -> np.ndarray:
    return np.clip((t - start) / length, 0.0, 1.0)


def envelope(sound: Sound, t: np.ndarray) -> np.ndarray:
    """The amplitude envelope: sustained with soft attack/release, 50 % duty pulses, or short blips."""
    rate = RHYTHM_HZ[sound.rhythm] * sound.tempo
    if rate == 0:
        env = np.minimum(_ramp(t, sound.onset, 0.08), _ramp(DURATION_S - t, 0.0, 0.15))
    else:
        cycles = (t + sound.onset) * rate
        position = (cycles - np.floor(cycles)) / rate  # seconds since the current pulse began
        if sound.rhythm == "stripes":
            env = np.clip(np.minimum(position, 0.5 / rate - position) / 0.01, 0.0, 1.0)
        else:
            env = np.clip(position / 0.003, 0.0, 1.0) * np.exp(-position / 0.018)
    fade = _FADE_IN.size  # no clicks at the clip's ends
    env[:fade] *= _FADE_IN
    env[-fade:] *= _FADE_IN[::-1]
    return env


def synthesize(sound: Sound) -> np.ndarray:
    """``NUM_SAMPLES`` float32 samples in [-1, 1]: tone × envelope + white noise at ``snr_db``, peak-normalised."""
    signal = _tone(sound)
    signal *= envelope(sound, _TIME32)
    power = float(np.mean(np.square(signal, dtype=np.float64)))  # numpy's own summation: same on every BLAS
    noise = np.random.default_rng(sound.noise_seed).standard_normal(NUM_SAMPLES, dtype=np.float32)
    noise *= np.float32(np.sqrt(power / 10 ** (sound.snr_db / 10)))
    signal += noise
    signal *= np.float32(sound.peak / max(float(signal.max()), -float(signal.min())))
    return signal


def wav_bytes(waveform: np.ndarray) -> bytes:
    """``waveform`` as a 16-bit PCM mono WAV file at ``SAMPLE_RATE``."""
    buffer = io.BytesIO()
    pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16)
    soundfile.write(buffer, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
