"""The audio side of AlignedSpace: BEATs tower (official .pt or our safetensors dir) + audio head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import HIDDEN, tiny_space

from gen_align.encoders.beats_tower import BEATsTower, load_beats_source
from gen_align.errors import GenAlignError, WeightsNotFoundError
from gen_align.heads import HeadConfig, ProjectionHead
from gen_align.space import AlignedSpace

FIXTURES = Path(__file__).parent / "fixtures" / "beats"


@pytest.fixture(scope="module")
def io():
    return np.load(FIXTURES / "io.npz")


@pytest.fixture(scope="module")
def audio_space(tmp_path_factory):
    """Tiny CLIP towers + the fixture's tiny BEATs + a linear audio head into the 32-d anchor space."""
    base = AlignedSpace.from_pretrained(tiny_space(tmp_path_factory.mktemp("s") / "ckpt"))
    torch.manual_seed(0)
    head_cfg = HeadConfig(in_dim=64, out_dim=HIDDEN, kind="linear")
    config = {**base.config, "heads": {"audio": head_cfg.to_dict()}}
    config["towers"] = {**config["towers"], "audio": {"kind": "beats", "source": str(FIXTURES / "beats_tiny.pt")}}
    towers = {**dict(base.towers), "audio": BEATsTower(load_beats_source(FIXTURES / "beats_tiny.pt"))}
    return AlignedSpace(config, towers, {"audio": ProjectionHead(head_cfg).eval()})


def test_audio_embedding_is_the_fixtures_token_mean_through_the_head(audio_space, io):
    lengths = io["lengths"]
    waves = [io["source"][i, : lengths[i]] for i in range(3)]
    z = audio_space.encode_audio([(w, 16000) for w in waves])
    head = audio_space.heads["audio"]
    for i in range(3):
        reference = torch.from_numpy(io[f"pt_features_solo{i}"]).mean(0)  # official code, clip run alone
        torch.testing.assert_close(z[i], head(reference), rtol=0, atol=2e-5)


def test_audio_files_and_batch_independence(audio_space, io, tmp_path):
    lengths = io["lengths"]
    paths = []
    for i in range(3):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, io["source"][i, : lengths[i]], 16000, subtype="FLOAT")
        paths.append(path)
    together = audio_space.encode_audio(paths)
    alone = torch.cat([audio_space.encode_audio(p) for p in paths])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_round_trip_with_beats_saved_as_safetensors(audio_space, io, tmp_path):
    saved = audio_space.save_pretrained(tmp_path / "ckpt", save_towers=True)
    assert (saved / "towers" / "audio" / "model.safetensors").is_file()
    reloaded = AlignedSpace.from_pretrained(saved, weights_dir=tmp_path / "nowhere")
    clip = (io["source"][1, :40000], 16000)
    assert torch.equal(reloaded.encode_audio([clip]), audio_space.encode_audio([clip]))


def test_missing_beats_checkpoint_says_how_to_get_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="microsoft/unilm"):
        AlignedSpace.from_pretrained("stable-unclip-h-beats", modalities=["audio"], weights_dir=tmp_path)


def test_silent_and_corrupt_audio_are_refused(audio_space, tmp_path):
    with pytest.raises(GenAlignError, match="silent") as caught:
        audio_space.encode_audio([(np.zeros(16000, dtype=np.float32), 16000)])
    # the way out a command-line user can take: the tower's setting in the space config, not a Python keyword
    assert 'set "silence": "warn" (or "ignore") under towers.audio' in str(caught.value)
    assert "silence='warn'" not in str(caught.value)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(GenAlignError, match="bad.wav"):
        audio_space.encode_audio([bad])
