"""ImageBind's audio preprocessing (``imagebind/data.py: load_and_transform_audio_data``) and clip pooling.

An input of any length becomes ``clips`` (3) clips of 2 s at 16 kHz, placed as pytorchvideo 0.1.5's
``ConstantClipsPerVideoSampler`` places them: the starts are ``k · max(D − 2, 0) / clips`` seconds for k = 0, 1, 2
(divided by the number of clips, not by one less), in exact fractions of the float duration ``D``, and the sample
indices are ``int(t · 16000)``. So a 10-s input gives clips at 0, 2.67 and 5.33 s (its last 2.67 s are never heard),
a 3-hour input three clips 1 h apart, and an input under 2 s three identical clips at 0.

Each clip: its own mean subtracted (in place, as the reference: see :func:`mel_clips`), a Kaldi fbank
(``htk_compat``, Hann window, no energy, no dither, 25 ms / 10 ms, 128 mel bins), transposed, zero-padded or cut to
204 frames, then ``(x + 4.268) / 9.138``. The embedding of an input is the mean of its clips' embeddings (each of
norm 20, so the mean's norm is ≤ 20). Nothing is padded across inputs: a result never depends on batch-mates.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torchaudio
from torch import Tensor

from gen_align.encoders.imagebind import ImageBindAudio
from gen_align.errors import ConfigError, InputDataError

SAMPLE_RATE = 16000
CLIP_SECONDS = 2
CLIPS_PER_INPUT = 3
FBANK_MEAN, FBANK_STD = -4.268, 9.138
MIN_SAMPLES = 400  # one 25-ms fbank window


def clip_bounds(
    num_samples: int, clips: int = CLIPS_PER_INPUT, sample_rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """(start, end) sample indices of the ``clips`` clips of an input of ``num_samples`` (see the module docstring)."""
    duration = num_samples / sample_rate  # a float, as the reference passes waveform.size(1) / sample_rate
    latest = Fraction(max(duration - CLIP_SECONDS, 0))
    spacing = Fraction(latest, clips)
    return [(int(spacing * k * sample_rate), int((spacing * k + CLIP_SECONDS) * sample_rate)) for k in range(clips)]


def mel_clip(clip: Tensor, num_mel_bins: int = 128, target_len: int = 204) -> Tensor:
    """(T,) float clip at 16 kHz, its mean already removed → (1, num_mel_bins, target_len) normalised fbank
    (``waveform2melspec`` after its mean subtraction, then Normalize)."""
    fbank = torchaudio.compliance.kaldi.fbank(
        clip[None],
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).transpose(0, 1)
    frames = fbank.size(1)
    fbank = torch.nn.functional.pad(fbank, (0, target_len - frames)) if frames < target_len else fbank[:, :target_len]
    return ((fbank - FBANK_MEAN) / FBANK_STD)[None]


def mel_clips(waveform: Tensor, clips: int = CLIPS_PER_INPUT, num_mel_bins: int = 128, target_len: int = 204) -> Tensor:
    """One (T,) input at 16 kHz → (clips, 1, num_mel_bins, target_len).

    As the reference, each clip's mean is subtracted in place from a view of the one waveform, in clip order: where
    clips overlap (inputs shorter than 8 s), a later clip sees the samples the earlier ones already shifted (on the
    fixture's 7.7-s input with an offset this changes the fbank by up to 0.37). The caller's tensor is not changed."""
    wave, out = waveform.float().clone(), []
    for start, end in clip_bounds(wave.numel(), clips):
        clip = wave[start:end]
        clip -= clip.mean()
        out.append(mel_clip(clip, num_mel_bins, target_len))
    return torch.stack(out)


class ImageBindAudioEncoder:
    """Frozen ImageBind audio: 16-kHz mono inputs → (B, D) means of their clips' embeddings, ``batch_size`` clips
    per forward pass (the clips of several inputs share a pass; each is computed on its own)."""

    def __init__(self, model: ImageBindAudio, *, clips: int = CLIPS_PER_INPUT, batch_size: int = 24) -> None:
        for name, value in (("clips", clips), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ImageBind {name} must be a positive integer, got {value!r}.")
        self.model, self.clips, self.batch_size = model.eval(), clips, batch_size

    @property
    def device(self) -> torch.device:
        return self.model.stem.weight.device

    def mel(self, waveforms: list[Tensor]) -> Tensor:
        """(B, clips, 1, 128, 204) fbank clips of 1-D 16-kHz waveforms (checked: float, finite, ≥ 25 ms)."""
        cfg = self.model.cfg
        for i, wave in enumerate(waveforms):
            if wave.dim() != 1 or not wave.is_floating_point():
                raise InputDataError(
                    f"input {i}: ImageBind takes a 1-D float waveform at 16 kHz, got a {wave.dtype} tensor of shape "
                    f"{tuple(wave.shape)}; load files with gen_align.encoders.audio_io.load_audio."
                )
            if wave.numel() < MIN_SAMPLES:
                raise InputDataError(
                    f"input {i} is {wave.numel()} samples ({wave.numel() / SAMPLE_RATE * 1000:.1f} ms) long; ImageBind "
                    f"needs at least {MIN_SAMPLES} (25 ms at 16 kHz, one fbank frame)."
                )
            if not bool(torch.isfinite(wave).all()):
                raise InputDataError(f"input {i} contains NaN or infinite samples.")
        return torch.stack(
            [mel_clips(w.float().cpu(), self.clips, cfg.num_mel_bins, cfg.target_len) for w in waveforms]
        )

    def embed(self, waveforms: list[Tensor]) -> Tensor:
        """(B, D) clip means; keeps the graph when the model has trainable parameters and grad is on."""
        mel = self.mel(waveforms).flatten(0, 1).to(self.device)
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        with torch.inference_mode(not trainable):
            out = torch.cat([self.model(mel[i : i + self.batch_size]) for i in range(0, len(mel), self.batch_size)])
        return out.float().unflatten(0, (len(waveforms), self.clips)).mean(dim=1)
