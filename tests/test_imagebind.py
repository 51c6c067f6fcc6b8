"""ImageBind audio against the reference fixtures (tests/fixtures/imagebind, made with facebookresearch/ImageBind):
the clip placement, the mel clips, per-clip and averaged embeddings (single and batched, SDPA and the explicit
softmax), the tower on files, batch independence in a space, and checkpoint handling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from gen_align.encoders.audio_io import load_audio
from gen_align.encoders.imagebind import (
    AUDIO_PREFIXES,
    ImageBindAudio,
    ImageBindAudioConfig,
    load_imagebind_audio,
    save_imagebind_audio,
)
from gen_align.encoders.imagebind_clips import FBANK_MEAN, FBANK_STD, ImageBindAudioEncoder, clip_bounds, mel_clips
from gen_align.encoders.imagebind_tower import ImageBindAudioTower
from gen_align.errors import CheckpointError, ConfigError, InputDataError, InputFileError

FIXTURES = Path(__file__).parent / "fixtures" / "imagebind"
CHECKPOINT = FIXTURES / "imagebind_tiny.pth"
CONFIG = json.loads((FIXTURES / "config.json").read_text())
NAMES = CONFIG["batch_order"]
HEADS = CONFIG["ImageBindModel_kwargs"]["audio_num_heads"]


@pytest.fixture(scope="module")
def io():
    return {k: torch.from_numpy(v) for k, v in np.load(FIXTURES / "io.npz").items()}


@pytest.fixture(scope="module")
def waves(io):
    """The fixture's inputs at 16 kHz, resampled by our audio loader (torchaudio's resample, as the reference)."""
    return {n: load_audio(io[f"{n}__waveform"][0].numpy(), CONFIG["inputs"][n]["sample_rate"]) for n in NAMES}


@pytest.fixture(scope="module")
def model():
    return load_imagebind_audio(CHECKPOINT, num_heads=HEADS)


def close(a, b, atol):
    diff = (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


@pytest.mark.parametrize("name", NAMES)
def test_clip_placement_is_the_references(name, waves):
    # the reference's int(t * 16000) of pytorchvideo's exact fractions; config.json lists t as floats, rounded a
    # hair below 3.9 s for one of them (the mel-clip test below checks every index to the sample)
    times = CONFIG["inputs"][name]["clip_timepoints_s"]
    assert clip_bounds(waves[name].numel()) == [(int(a * 16000 + 1e-6), int(b * 16000 + 1e-6)) for a, b in times]


def test_long_inputs_get_three_clips_spread_as_pytorchvideo_0_1_5():
    three_hours = 3 * 3600 * 16000
    # starts k * (D - 2) / 3 (not / 2): the last 1 h + 2 s are never heard
    assert clip_bounds(three_hours) == [(k * (three_hours - 32000) // 3, k * (three_hours - 32000) // 3 + 32000)
                                        for k in range(3)]  # fmt: skip
    assert clip_bounds(16000) == [(0, 32000)] * 3  # under 2 s: three identical clips, padded after the fbank


def close_mel(a: torch.Tensor, b: torch.Tensor) -> None:
    """≤ 1e-4 on every normalised log-mel value within 15 nats (65 dB) of its frame's peak. Deeper bins sit at the
    float32 FFT's precision floor, where the log amplifies rounding that differs between CPU FFT code paths (MKL
    on an AMD EPYC: 1.2e-3 at 630 of the chirp's 78 336 values, 19–24 nats down, float64 alike): those are checked
    on the energy scale, |Δe| ≤ 2e-5 of the frame's peak energy."""
    raw_a, raw_b = a * FBANK_STD + FBANK_MEAN, b * FBANK_STD + FBANK_MEAN
    peak = raw_b.amax(dim=2, keepdim=True)  # per frame (clip, 1, mel, time): the max over the mel bins
    audible = raw_b > peak - 15.0
    close(a[audible], b[audible], 1e-4)
    energy = (torch.exp(raw_a) - torch.exp(raw_b)).abs() / torch.exp(peak)
    assert float(energy.max()) <= 2e-5, float(energy.max())


@pytest.mark.parametrize("name", NAMES)
def test_mel_clips_match_the_reference(name, waves, io):
    wave = waves[name].clone()
    close_mel(mel_clips(wave), io[f"{name}__mel_clips"])
    assert torch.equal(wave, waves[name])  # the in-place mean removal stays on our copy


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
@torch.no_grad()
def test_per_clip_and_averaged_embeddings_match_the_reference(model, waves, io, attention):
    model.attention = attention
    try:
        encoder = ImageBindAudioEncoder(model)
        for name in NAMES:
            close(model(io[f"{name}__mel_clips"]), io[f"{name}__per_clip_embedding"], 5e-5)
            close(encoder.embed([waves[name]])[0], io[f"{name}__embedding"], 5e-5)
        batched = ImageBindAudioEncoder(model, batch_size=5).embed([waves[n] for n in NAMES])  # clips cross batches
        close(batched, io["batch__embedding"], 5e-5)
    finally:
        model.attention = "sdpa"
    norms = io["batch__embedding"].norm(dim=-1)
    assert bool((norms <= 20 + 1e-4).all()) and float(
        io["chirp_10s_16k__per_clip_embedding"].norm(dim=-1)[0]
    ) == pytest.approx(20, abs=1e-4)


def test_the_tower_reads_files_at_their_own_rate(model, io, tmp_path):
    tower = ImageBindAudioTower(model)
    paths = []
    for name in NAMES:
        path = tmp_path / f"{name}.wav"
        sf.write(path, io[f"{name}__waveform"][0].numpy(), CONFIG["inputs"][name]["sample_rate"], subtype="FLOAT")
        paths.append(path)
    close(tower.encode(paths), io["batch__embedding"], 5e-5)
    assert tower.embedding_dim == 24


def test_a_space_never_mixes_batch_mates(model, io, tmp_path):
    from gen_align.space import AlignedSpace

    config = {"format": "gen-align-space", "anchor": "image", "embedding_dim": 24, "heads": {}, "output_norm": 3.0,
              "towers": {"audio": {"kind": "imagebind-audio", "native": True}}}  # fmt: skip
    space = AlignedSpace(config, {"audio": ImageBindAudioTower(model)}, {})
    pairs = [(io[f"{n}__waveform"][0].numpy(), CONFIG["inputs"][n]["sample_rate"]) for n in NAMES]
    together = space.encode_audio(pairs, batch_size=4)
    alone = torch.cat([space.encode_audio([p]) for p in reversed(pairs)]).flip(0)
    close(together, alone, 1e-6)
    expected = (
        torch.nn.functional.normalize(io["batch__embedding"], dim=-1) * 3.0
    )  # the anchor's norm, as every condition
    close(together, expected, 2e-5)
    saved = space.save_pretrained(tmp_path / "space", save_towers=True)
    close(AlignedSpace.from_pretrained(saved).encode_audio(pairs), together, 0)


def test_too_short_nan_and_silent_inputs_are_refused(model):
    tower = ImageBindAudioTower(model)
    with pytest.raises(InputDataError, match="at least 400"):
        tower.encode([(np.full(300, 0.1, dtype=np.float32), 16000)])
    with pytest.raises(InputDataError, match="NaN"):
        tower.encode([(np.array([0.1, np.nan] * 500, dtype=np.float32), 16000)])
    with pytest.raises(InputDataError, match='"silence": "warn"'):
        tower.encode([(np.zeros(16000, dtype=np.float32), 16000)])
    with pytest.raises(InputDataError, match=r"\(B, 1, 128, 204\)"):
        model(torch.zeros(1, 1, 128, 100))


# ------------------------------------------------------------------------------------------ checkpoints


def official_keys(blocks: int) -> set[str]:
    """The audio keys of the official whole-model state_dict, written out from the fixture's README."""
    pre = "modality_preprocessors.audio."
    keys = {f"{pre}cls_token", f"{pre}rgbt_stem.proj.weight", f"{pre}rgbt_stem.norm_layer.weight",
            f"{pre}rgbt_stem.norm_layer.bias", f"{pre}pos_embedding_helper.pos_embed", "modality_heads.audio.0.weight",
            "modality_heads.audio.0.bias", "modality_heads.audio.2.weight",
            "modality_postprocessors.audio.1.log_logit_scale"}  # fmt: skip
    per_block = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.bias_k", "attn.bias_v", "attn.out_proj.weight",
                 "attn.out_proj.bias", "norm_1.weight", "norm_1.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias", "norm_2.weight", "norm_2.bias"]  # fmt: skip
    return keys | {f"modality_trunks.audio.blocks.{b}.{k}" for b in range(blocks) for k in per_block}


def test_the_whole_model_checkpoint_loads_its_audio_keys_only():
    state = torch.load(CHECKPOINT, weights_only=True)
    audio = {k for k in state if k.startswith(AUDIO_PREFIXES)}
    assert len(state) == 159 and audio == official_keys(3) and len(audio) == 51
    model = load_imagebind_audio(CHECKPOINT, num_heads=HEADS)
    assert model.cfg == ImageBindAudioConfig(embed_dim=48, num_blocks=3, num_heads=4, out_embed_dim=24)
    torch.testing.assert_close(model.blocks[2].attn.bias_k, state["modality_trunks.audio.blocks.2.attn.bias_k"])


def test_the_released_size():
    with torch.device("meta"):
        model = ImageBindAudio()
    assert (model.cfg.embed_dim, model.cfg.num_blocks, model.cfg.num_heads, model.embedding_dim) == (768, 12, 12, 1024)
    assert model.cfg.patches_layout == (12, 19) and model.cfg.num_tokens == 229
    assert set(model.official_state_dict()) == official_keys(12)
    assert 85e6 < sum(p.numel() for p in model.parameters()) < 87e6


def _saved(tmp_path, state, name="ck.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_checkpoint_faults_name_the_problem(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    missing = dict(state)
    del missing["modality_trunks.audio.blocks.1.attn.bias_v"]
    with pytest.raises(CheckpointError, match=r"missing audio keys \(1\): modality_trunks.audio.blocks.1.attn.bias_v"):
        load_imagebind_audio(_saved(tmp_path, missing), num_heads=HEADS)
    extra = {**state, "modality_heads.audio.3.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"unexpected audio keys \(1\): modality_heads.audio.3.weight"):
        load_imagebind_audio(_saved(tmp_path, extra), num_heads=HEADS)
    with pytest.raises(CheckpointError, match="positional embedding has 229 tokens.*stride 8"):
        load_imagebind_audio(CHECKPOINT, num_heads=HEADS, stride=8)
    with pytest.raises(CheckpointError, match="divisible by num_heads=5"):
        load_imagebind_audio(CHECKPOINT, num_heads=5)
    vision_only = {k: v for k, v in state.items() if not k.startswith(AUDIO_PREFIXES)}
    with pytest.raises(CheckpointError, match="no ImageBind audio tensor"):
        load_imagebind_audio(_saved(tmp_path, vision_only), num_heads=HEADS)
    with pytest.raises(CheckpointError, match="not a state_dict of tensors"):
        load_imagebind_audio(_saved(tmp_path, {"model": state}), num_heads=HEADS)
    with pytest.raises(InputFileError, match="dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"):
        load_imagebind_audio(tmp_path / "nowhere.pth")


def test_a_truncated_checkpoint_is_refused(tmp_path):
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(CHECKPOINT.read_bytes()[: CHECKPOINT.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_imagebind_audio(truncated, num_heads=HEADS)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_pickle_payload_is_never_run(tmp_path):
    payload = _Payload()
    payload.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"x": payload}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_imagebind_audio(path, num_heads=HEADS)
    assert not (tmp_path / "pwned").exists()


def test_a_saved_folder_round_trips_and_a_damaged_one_is_refused(model, io, tmp_path):
    folder = save_imagebind_audio(model, tmp_path / "tower")
    again = load_imagebind_audio(folder)
    with torch.no_grad():
        close(again(io["chirp_10s_16k__mel_clips"]), io["chirp_10s_16k__per_clip_embedding"], 5e-5)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_imagebind_audio(folder)
    folder = save_imagebind_audio(model, tmp_path / "tower2")
    (folder / "config.json").write_text(json.dumps({"format": "imagebind-audio", "config": {"embed_dim": "big"}}))
    with pytest.raises(CheckpointError, match="embed_dim must be a positive integer"):
        load_imagebind_audio(folder)


def test_tower_configs_are_checked():
    from gen_align.encoders.towers import check_tower_config

    good = {"kind": "imagebind-audio", "source": "imagebind/imagebind_huge.pth", "num_heads": 12, "native": True}
    assert check_tower_config("audio", good) == good
    with pytest.raises(ConfigError, match="num_heads .* must be a whole number > 0, got 1.5"):
        check_tower_config("audio", {**good, "num_heads": 1.5})
    with pytest.raises(ConfigError, match="native .* must be true or false, got 'yes'"):
        check_tower_config("audio", {**good, "native": "yes"})
