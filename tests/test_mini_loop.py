"""The mini world's shared training loop, tokenizer and tower pretraining: results and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gen_align.cli import main
from gen_align.errors import CheckpointError, ConfigError, InputDataError
from gen_align.mini.recipes.loop import STATE_FILE, FitSettings, TrainingDivergedError, fit
from gen_align.mini.recipes.tokenizer import build_tokenizer
from gen_align.mini.recipes.towers import fbanks, pretrain_clip

X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5])


def squared_error(model: nn.Module, idx: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    return ((model(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()


def fresh() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def test_fit_recovers_a_linear_map():
    model = fit(fresh(), squared_error, 64, FitSettings(steps=400, batch_size=16, lr=0.05), desc="lin", progress=False)
    assert torch.allclose(model.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]), atol=0.02)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    settings = FitSettings(steps=20, batch_size=8, lr=0.05, ema_decay=0.9, checkpoint_every=5)
    reference = fit(fresh(), squared_error, 64, settings, desc="lin", progress=False)
    calls = 0

    def interrupted(model, idx, g):
        nonlocal calls
        calls += 1
        if calls == 13:
            raise KeyboardInterrupt
        return squared_error(model, idx, g)

    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), interrupted, 64, settings, desc="lin", checkpoint_dir=tmp_path, progress=False)
    resumed = fit(fresh(), squared_error, 64, settings, desc="lin", checkpoint_dir=tmp_path, progress=False)
    pairs = zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_nan_loss_stops_with_advice():
    def nan_loss(model, idx, g):
        return squared_error(model, idx, g) * float("nan")

    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(fresh(), nan_loss, 64, FitSettings(steps=3, batch_size=8, lr=0.1), desc="lin", progress=False)


def test_a_state_of_another_run_or_a_corrupt_one_is_refused(tmp_path):
    fit(fresh(), squared_error, 64, FitSettings(steps=2, batch_size=8, lr=0.1), desc="lin", checkpoint_dir=tmp_path)
    other = FitSettings(steps=4, batch_size=8, lr=0.1)
    with pytest.raises(CheckpointError, match="delete it"):
        fit(fresh(), squared_error, 64, other, desc="lin", checkpoint_dir=tmp_path, progress=False)
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable"):
        fit(fresh(), squared_error, 64, other, desc="lin", checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"grad_clip": 0.0}, "grad_clip"),
    ],
)
def test_bad_settings_say_which(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FitSettings(**{"steps": 2, "batch_size": 8, "lr": 0.1, **kwargs})


def test_too_few_items_and_frozen_models_are_refused():
    with pytest.raises(ConfigError, match="num_items"):
        fit(fresh(), squared_error, 1, FitSettings(steps=1, batch_size=1, lr=0.1), desc="lin", progress=False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        fit(fresh().requires_grad_(False), squared_error, 64, FitSettings(steps=1, batch_size=8, lr=0.1), desc="x")


def test_tokenizer_and_pretraining_inputs_are_checked():
    with pytest.raises(InputDataError, match="captions are empty"):
        build_tokenizer(["", "   "])
    with pytest.raises(InputDataError, match="image–caption pairs"):
        pretrain_clip([], ["a red star"], settings=FitSettings(steps=1, batch_size=2, lr=0.1))
    with pytest.raises(InputDataError, match="one length"):
        fbanks([np.zeros(16000, np.float32), np.zeros(8000, np.float32)], progress=False)
    with pytest.raises(InputDataError, match="shorter than one BEATs patch"):
        fbanks([np.zeros(500, np.float32)], progress=False)


def test_unknown_stage_is_a_message(tmp_path, capsys):
    assert main(["mini", "train", "--work", str(tmp_path), "--stages", "world,paint"]) == 2
    assert "unknown stage(s) ['paint']" in capsys.readouterr().err
