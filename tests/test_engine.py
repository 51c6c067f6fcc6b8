"""The one optimisation engine (gen_align.train.engine) against AdamW, the warm-up/cosine formula and the EMA
recurrence written out here; its saved state resumes bit-exactly and refuses what it cannot use."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gen_align
from gen_align.errors import CheckpointError, ConfigError
from gen_align.retrieval.gare import GAREConfig, GAREHead
from gen_align.retrieval.head_training import STATE_FILE, load_head, train_head
from gen_align.train.engine import Engine, OptimizerSettings, TrainingDivergedError

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(32, 1, generator=torch.Generator().manual_seed(1))


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def loss_of(m, step):
    rows = torch.arange(step % 4 * 8, step % 4 * 8 + 8)
    return (m(X[rows]) - Y[rows]).pow(2).mean()


def test_engine_is_adamw_with_warmup_cosine_clipping_and_ema():
    lr, warmup, total, decay, clip = 0.05, 3, 10, 0.8, 0.5
    m = model()
    settings = OptimizerSettings(lr=lr, weight_decay=0.1, warmup=warmup, grad_clip=clip, ema_decay=decay)
    engine = Engine(m, m.parameters(), settings, total, desc="t")

    ref = model()
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.1)
    ema = [p.detach().clone() for p in ref.parameters()]
    for step in range(total):
        engine.update(loss_of(m, step))
        # the schedule written out: (s + 1) / warmup, then ½(1 + cos(π (s − warmup) / (total − warmup)))
        factor = (
            (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = lr * factor
        opt.zero_grad()
        loss_of(ref, step).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters()))
        for p in ref.parameters():
            p.grad.mul_(min(1.0, clip / (float(norm) + 1e-6)))
        opt.step()
        ema = [decay * e + (1 - decay) * p.detach() for e, p in zip(ema, ref.parameters(), strict=True)]
    assert engine.step == total
    for ours, theirs in zip(m.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    for ours, theirs in zip(engine.result().parameters(), ema, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_a_nan_loss_stops_before_any_step():
    m = model()
    before = [p.detach().clone() for p in m.parameters()]
    engine = Engine(m, m.parameters(), OptimizerSettings(lr=0.1), 5, desc="t")
    with pytest.raises(TrainingDivergedError, match="t: the loss became nan at step 1; lower the learning rate"):
        engine.update(m(X).sum() * float("nan"))
    assert engine.step == 0 and all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


def test_saved_state_resumes_bit_exactly_and_refuses_other_runs(tmp_path):
    settings = OptimizerSettings(lr=0.05, warmup=2, ema_decay=0.9)
    full = model()
    engine = Engine(full, full.parameters(), settings, 8, desc="t")
    for step in range(8):
        engine.update(loss_of(full, step))

    first = model()
    engine = Engine(first, first.parameters(), settings, 8, desc="t")
    for step in range(5):
        engine.update(loss_of(first, step))
    engine.save(tmp_path / "state.pt", identity={"items": 32}, extra={"cursor": 5})
    resumed = model()
    engine = Engine(resumed, resumed.parameters(), settings, 8, desc="t")
    assert engine.load(tmp_path / "state.pt", identity={"items": 32}) == {"cursor": 5} and engine.step == 5
    for step in range(5, 8):
        engine.update(loss_of(resumed, step))
    assert same_weights(full, resumed)

    with pytest.raises(CheckpointError, match="other settings or data"):
        engine.load(tmp_path / "state.pt", identity={"items": 64})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable .* delete it to start over"):
        engine.load(tmp_path / "cut.pt", identity={"items": 32})
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a gen-align-training-state file"):
        engine.load(tmp_path / "other.pt", identity={"items": 32})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0}, "lr"),
        ({"lr": 1e-3, "warmup": -1}, "warmup"),
        ({"lr": 1e-3, "schedule": "linear"}, "schedule must be one of"),
        ({"lr": 1e-3, "ema_decay": 1.0}, "ema_decay"),
        ({"lr": 1e-3, "grad_clip": 0}, "grad_clip"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OptimizerSettings(**kwargs)


def test_a_retrieval_head_killed_between_epochs_resumes_bit_exactly(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    text, video = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)

    def head():
        torch.manual_seed(0)
        return GAREHead(GAREConfig(dim=16, num_heads=2))

    full = head()
    train_head(full, {"text": text, "video": video}, epochs=4, batch_size=8, seed=3)

    saves = []
    original = Engine.save

    def save_then_die(self, path, **kwargs):
        original(self, path, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after the second epoch's state was written

    monkeypatch.setattr(Engine, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_head(head(), {"text": text, "video": video}, epochs=4, batch_size=8, seed=3, checkpoint_dir=tmp_path)
    monkeypatch.setattr(Engine, "save", original)
    resumed = head()
    history = train_head(
        resumed, {"text": text, "video": video}, epochs=4, batch_size=8, seed=3, checkpoint_dir=tmp_path
    )
    assert (tmp_path / STATE_FILE).is_file() and len(history.loss) == 4 and history.steps == 4 * 5
    assert same_weights(full, resumed)
    saved = json.loads((resumed.save_pretrained(tmp_path / "head") / "config.json").read_text())
    assert saved["library_version"] == gen_align.__version__
    assert saved["training"]["epochs"] == 4 and saved["training"]["lr"] == 1e-3 and saved["training"]["steps"] == 20
    assert load_head(tmp_path / "head").training_record == saved["training"]
    with pytest.raises(CheckpointError, match="other settings or data"):
        train_head(head(), {"text": text, "video": video}, epochs=5, batch_size=8, seed=3, checkpoint_dir=tmp_path)
