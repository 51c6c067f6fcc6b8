"""BEATs against the reference fixtures (tests/fixtures/beats, made with microsoft/unilm beats/), plus the
batch-independent clip encoder, checkpoint loading errors, and a full-size config round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gen_align.encoders.beats import BEATs, BEATsConfig, load_beats, save_beats
from gen_align.encoders.beats_clips import BEATsEncoder
from gen_align.errors import CheckpointError, ConfigError, GenAlignError, InputFileError

FIXTURES = Path(__file__).parent / "fixtures" / "beats"
PT, FT = FIXTURES / "beats_tiny.pt", FIXTURES / "beats_tiny_ft.pt"


@pytest.fixture(scope="module")
def io():
    return {k: torch.from_numpy(v) for k, v in np.load(FIXTURES / "io.npz").items()}


@pytest.fixture(scope="module")
def clips(io):
    return [io["source"][i, : int(n)] for i, n in enumerate(io["lengths"])]


@pytest.fixture(scope="module")
def pt():
    return load_beats(PT)


@pytest.fixture(scope="module")
def ft():
    return load_beats(FT)


def close(a, b, atol):
    diff = (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


def test_fbank_matches_reference(pt, io):
    close(pt.preprocess(io["source"]), io["fbank"], 1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
@torch.no_grad()
def test_batched_features_match_reference_including_padded_rows(pt, io, attention):
    pt.attention = attention
    try:
        features, mask = pt.extract_features(io["source"], io["padding_mask"])
    finally:
        pt.attention = "sdpa"
    close(features, io["pt_features"], 1e-4)
    assert torch.equal(mask, io["pt_padding_mask_out"])
    assert (~mask).sum(1).tolist() == [50, 125, 496]  # the reference's reshape quirk, not 48 / 120


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
@torch.no_grad()
def test_batched_probs_match_reference(ft, io, attention):
    ft.attention = attention
    try:
        probs, mask = ft.extract_features(io["source"], io["padding_mask"])
    finally:
        ft.attention = "sdpa"
    close(probs, io["ft_probs"], 1e-5)
    assert torch.equal(mask, io["ft_padding_mask_out"])


def test_state_dict_layout(pt, ft):
    assert sum(p.numel() for p in pt.parameters()) == 266_520
    assert sum(p.numel() for p in ft.parameters()) == 300_775
    assert set(pt.state_dict()) == set(torch.load(PT, weights_only=True)["model"])
    layers = pt.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
    assert not pt.training


def test_solo_tokens_and_clip_embedding(pt, io, clips):
    enc = BEATsEncoder(pt)
    embeddings = enc.embed(clips)
    for i, clip in enumerate(clips):
        tokens = enc.encode_tokens(clip)
        close(tokens, io[f"pt_features_solo{i}"], 1e-4)
        close(tokens.mean(0), embeddings[i], 1e-5)
    close(enc.embed(io["source"], lengths=io["lengths"].tolist()), embeddings, 1e-6)
    assert embeddings.shape == (3, enc.embedding_dim)


def test_solo_probs(ft, io, clips):
    probs = BEATsEncoder(ft).predict(clips)
    for i in range(3):
        close(probs[i], io[f"ft_probs_solo{i}"], 1e-5)


@torch.no_grad()
def test_sdpa_matches_naive(pt, ft, io):
    source, mask = io["source"], io["padding_mask"]
    for model, atol in ((pt, 1e-5), (ft, 1e-6)):
        naive = BEATs(model.cfg, attention="naive")
        naive.load_state_dict(model.state_dict())
        close(model.extract_features(source, mask)[0], naive.eval().extract_features(source, mask)[0], atol)


def test_batch_independence(pt, clips):
    enc = BEATsEncoder(pt)
    alone = enc.embed([clips[0]])
    with_longer = enc.embed([clips[0], clips[2]])
    close(alone[0], with_longer[0], 1e-5)
    one_by_one = BEATsEncoder(pt, batch_size=1).embed(clips)
    close(one_by_one, enc.embed(clips), 1e-5)


def test_window_average_equals_explicit_average(pt, io):
    enc = BEATsEncoder(pt, window_seconds=1.0)
    wave = io["source"][1, :40000]  # 2.5 s -> windows of 1 s, 1 s, 0.5 s
    merged = io["source"][2, :33000]  # 2.06 s: the 0.06 s tail is shorter than a patch, merged into window 2
    assert enc.windows(40000) == [(0, 16000), (16000, 32000), (32000, 40000)]
    assert enc.windows(33000) == [(0, 16000), (16000, 33000)]
    got = enc.embed([wave, merged])
    for row, clip, cuts in ((0, wave, [0, 16000, 32000, 40000]), (1, merged, [0, 16000, 33000])):
        pieces = [clip[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        tokens = [enc.encode_tokens(p) for p in pieces]
        weights = torch.tensor([(((p.numel() - 400) // 160 + 1) // 16) * 8 for p in pieces], dtype=torch.float32)
        assert [t.shape[0] for t in tokens] == weights.int().tolist()
        explicit = sum(w * t.mean(0) for w, t in zip(weights, tokens, strict=True)) / weights.sum()
        close(got[row], explicit, 1e-5)


def test_input_errors(pt):
    enc = BEATsEncoder(pt)
    assert enc.embed(torch.zeros(2800)).shape == (1, 64)  # exactly one patch
    with pytest.raises(match=r"too short.*minimum is 2800 samples \(0\.175 s"):
        enc.embed(torch.zeros(2799))
    with pytest.raises(match="empty"):
        enc.embed([torch.zeros(4000), torch.zeros(0)])
    with pytest.raises(match="NaN or infinite"):
        enc.embed(torch.full((4000,), float("nan")))
    with pytest.raises(match="float waveform.*int16"):
        enc.embed(torch.zeros(4000, dtype=torch.int16))
    with pytest.raises(match="shape"):
        enc.embed(torch.zeros(1, 2, 4000))
    with pytest.raises(match=r"\(T,\)"):
        enc.encode_tokens(torch.zeros(2, 4000))
    with pytest.raises(match="2 lengths for 1 clips"):
        enc.embed(torch.zeros(1, 4000), lengths=[4000, 3000])
    with pytest.raises(match=r"lengths\[0\]=5000 is outside 1\.\.4000"):
        enc.embed(torch.zeros(1, 4000), lengths=[5000])
    with pytest.raises(match=r"source must be a \(B, T\) float tensor"):
        pt.extract_features(torch.zeros(4000))
    with pytest.raises(ConfigError, match="no predictor"):
        enc.predict(torch.zeros(4000))
    with pytest.raises(ConfigError, match="attention must be one of"):
        BEATs(pt.cfg, attention="flash")


def tampered(kind: str) -> dict:
    checkpoint = torch.load(PT, weights_only=True)
    state = checkpoint["model"]
    if kind == "renamed":
        state["encoder.layers.0.fc1.w"] = state.pop("encoder.layers.0.fc1.weight")
    elif kind == "extra":
        state["predictor.weight"] = torch.zeros(527, 64)
    else:
        state["encoder.layers.1.fc2.weight"] = torch.zeros(64, 64)
    return checkpoint


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("renamed", r"missing keys \(1\): encoder\.layers\.0\.fc1\.weight; unexpected keys \(1\): encoder\.layers\.0"),
        ("extra", r"unexpected keys \(1\): predictor\.weight"),
        ("wrong shape", r"wrong shapes \(1\): encoder\.layers\.1\.fc2\.weight \(64, 64\) \(expected \(64, 128\)\)"),
    ],
)
def test_strict_keys(tmp_path, kind, pattern):
    path = tmp_path / "tampered.pt"
    torch.save(tampered(kind), path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_beats(path)
    assert "not a BEATs checkpoint of the official" in str(info.value) and str(path) in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(InputFileError, match="not found: .*nowhere.pt"):
        load_beats(tmp_path / "nowhere.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_beats(corrupt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(PT.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_beats(truncated)
    with pytest.raises(CheckpointError, match="expected a dict with 'cfg' and 'model'"):
        load_beats({"state_dict": {}})
    with pytest.raises(CheckpointError, match="invalid cfg.*encoder_layers must be int"):
        load_beats({"cfg": {"encoder_layers": "12"}, "model": {}})
    assert issubclass(CheckpointError, GenAlignError)


def test_config():
    cfg = BEATsConfig.from_dict({"encoder_layers": 2, "some_future_key": 1, "gru_rel_pos": 1})
    assert cfg.encoder_layers == 2 and cfg.gru_rel_pos is True
    default = BEATsConfig()
    assert (default.encoder_embed_dim, default.encoder_layers, default.max_distance, default.deep_norm) == (
        768,
        12,
        800,
        True,
    )
    assert BEATsConfig.from_dict(default.to_dict()) == default
    for bad, pattern in (
        ({"encoder_attention_heads": 5}, "divisible"),
        ({"dropout": 1.5}, r"\[0, 1\]"),
        ({"activation_fn": "swish"}, "not supported"),
        ({"layer_norm_first": True}, "cannot both be True"),
        ({"encoder_layers": 0}, ">= 1"),
    ):
        with pytest.raises(ConfigError, match=pattern):
            BEATsConfig.from_dict(bad)


def test_full_size_config_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BEATs(BEATsConfig()).eval()  # BEATs_iter3+ AS2M shape: 768-d, 12 layers
    assert sum(p.numel() for p in model.parameters()) > 90_000_000
    path = save_beats(model, tmp_path / "as2m.pt")
    loaded = load_beats(path)
    assert loaded.cfg == model.cfg and not loaded.training
    reference = model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in loaded.state_dict().items())
    with torch.no_grad():
        features, mask = loaded.extract_features(torch.randn(1, 3200) * 0.1)  # 0.2 s: one time patch
    assert features.shape == (1, 8, 768) and mask is None and torch.isfinite(features).all()
    cfg = {**BEATsConfig().to_dict(), "finetuned_model": True, "predictor_class": 527}  # AS20K/AS2M fine-tuned
    state = {**model.state_dict(), "predictor.weight": torch.randn(527, 768), "predictor.bias": torch.zeros(527)}
    ft = load_beats({"cfg": cfg, "model": state, "label_dict": {0: "/m/09x0r"}})
    assert ft.predictor.weight.shape == (527, 768) and ft.label_dict == {0: "/m/09x0r"}
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): predictor\.weight, predictor\.bias"):
        load_beats({"cfg": BEATsConfig().to_dict(), "model": state})


def test_training_mode_backward(pt):
    model = BEATs({**pt.cfg.to_dict(), "dropout": 0.1, "encoder_layerdrop": 0.0})
    model.load_state_dict(pt.state_dict())
    model.train()
    features, _ = model.extract_features(torch.randn(2, 8000) * 0.1)
    features.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
