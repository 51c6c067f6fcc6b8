"""The trainer over cached features: learns (R@1 up), resumes bit-exactly, validates its config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gen_align.cli import main
from gen_align.data.cache import FeatureCache
from gen_align.errors import ConfigError, GenAlignError, OutputError
from gen_align.heads import HeadSet
from gen_align.objectives import get_objective
from gen_align.train.config import load_config
from gen_align.train.trainer import Trainer, masked_loss


def synthetic_cache(directory, n=96, seed=0):
    """Three modalities as noisy linear views of one latent (so heads can learn the pairing)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 8, generator=g)
    views = {"image": 16, "text": 12, "audio": 10}
    ids = [f"item{i:04d}" for i in range(n)]
    identity = {"space": "synthetic", "towers": {"image": {"kind": "clip-vision", "source": "x"}}}
    with FeatureCache.open(directory, identity, shard_size=40) as cache:
        for m, d in views.items():
            mix = torch.randn(8, d, generator=g)
            cache.write(m, ids, latent @ mix + 0.1 * torch.randn(n, d, generator=g))
    return directory


def config(tmp_path, features, **overrides):
    settings = {
        "features": str(features),
        "out": str(tmp_path / "run"),
        "lr": 3e-3,
        "batch_size": 16,
        "epochs": 3,
        "val_size": 32,
        "log_every": 2,
        "head.kind": "linear",
        **overrides,
    }
    return load_config(None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()])


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.mktemp("cache") / "features")


def test_training_improves_validation_recall(features, tmp_path):
    # τ = 1: at the paper's 0.07 the per-row uniformity force (∝ 1/τ², the softmax gradient after Eq. 9) outweighs
    # alignment about 100:1 on this 8-d toy problem and R@1 stays at chance (measured: 0.06 at 0.07, 0.94 at 1).
    params = {"tau": 1.0}
    summary = Trainer(config(tmp_path, features, epochs=40, lr=1e-2, objective_params=params)).fit()
    before, after = summary["history"][0]["validation"], summary["history"][-1]["validation"]
    for key in ("R@1/image->audio", "R@1/image->text"):
        assert before[key] < 0.1 and after[key] > 0.75, (key, before[key], after[key])
    space_dir = tmp_path / "run" / "space"
    cfg = json.loads((space_dir / "config.json").read_text())
    assert cfg["heads"]["audio"]["out_dim"] == 16 and cfg["output_norm"] > 0
    assert cfg["training"]["settings"]["lr"] == 1e-2 and cfg["training"]["settings"]["objective_params"] == params
    assert set(load_file(str(space_dir / "heads.safetensors"))) >= {"audio.net.1.weight", "text.net.1.weight"}
    assert (tmp_path / "run" / "train_summary.json").is_file()


def test_resume_after_a_kill_is_bit_exact(features, tmp_path, monkeypatch):
    full = config(tmp_path / "a", features, checkpoint_every=3, max_steps=8, modality_dropout=0.3)
    Trainer(full).fit()

    killed = config(tmp_path / "b", features, checkpoint_every=3, max_steps=8, modality_dropout=0.3)
    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.step == 6:
            raise KeyboardInterrupt  # the process dies right after the step-6 checkpoint
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(killed).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    Trainer(killed).fit(resume=True)

    a = load_file(str(tmp_path / "a" / "run" / "space" / "heads.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "space" / "heads.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_changed_settings_is_refused(features, tmp_path):
    Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=2)).fit()
    with pytest.raises(ConfigError, match="batch_size was 16 there and is 8 now"):
        Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=4, batch_size=8)).fit(resume=True)


def test_masked_loss_uses_groups_with_all_modalities_kept_when_p_is_zero():
    torch.manual_seed(0)
    z = {m: torch.randn(12, 6) for m in ("image", "text", "audio")}
    objective = get_objective("unialign", lambda_vol=0.1)
    loss, _ = masked_loss(objective, z, "image", 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(loss, objective(z)[0])
    dropped, _ = masked_loss(objective, z, "image", 0.5, torch.Generator().manual_seed(0))
    assert torch.isfinite(dropped) and not torch.equal(dropped, loss)


@pytest.mark.parametrize("name", ["infonce", "unialign"])
def test_masking_acts_with_two_modalities_by_dropping_the_masked_samples_terms(name):
    """Anchor + one modality: the masked samples leave the batch; the loss is the objective on the kept rows. The
    reference draws the documented mask itself (one uniform per sample, masked below p)."""
    torch.manual_seed(1)
    z = {m: torch.randn(16, 6) for m in ("image", "audio")}
    objective = get_objective(name)
    kept = torch.rand(16, generator=torch.Generator().manual_seed(5)) >= 0.3
    expected, _ = objective({m: v[kept] for m, v in z.items()})
    loss, _ = masked_loss(objective, z, "image", 0.3, torch.Generator().manual_seed(5))
    assert 2 <= int(kept.sum()) < 16 and torch.equal(loss, expected)
    assert not torch.equal(loss, objective(z)[0])


def test_head_set_passes_the_anchor_through():
    from gen_align.heads import HeadConfig

    heads = HeadSet({"text": HeadConfig(in_dim=4, out_dim=3, kind="linear")})
    x = {"image": torch.randn(2, 3), "text": torch.randn(2, 4)}
    out = heads(x)
    assert out["image"] is x["image"] and out["text"].shape == (2, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=-1"], "lr must be a positive finite number"),
        (["objective=nope"], "unknown objective"),
        (["objective_params.lambda_zzz=1"], "has no hyperparameter"),
        (["batch_size=1"], "batch_size must be an integer >= 2"),
        (["modality_dropout=1.5"], "modality_dropout must be in"),
        (["bogus=1"], "unknown config key"),
        (["head.kind=conv"], "unknown head.kind"),
        (["mixed_precision=fp8"], "unknown mixed_precision"),
        (["lr"], "must look like key=value"),
        (["modalities=audio"], "modalities must be a list of modality names"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["features=a", "out=b", *overrides])


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('features = "f"\nout = "o"\nlr = 1e-4\n[head]\nkind = "linear"\n')
    assert load_config(toml).head.kind == "linear"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("features: f\nout: o\nobjective: infonce\n")
    assert load_config(yaml_file, ["lr=0.5"]).lr == 0.5
    broken = tmp_path / "b.yaml"
    broken.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config(broken)
    with pytest.raises(GenAlignError, match="cannot read training config"):
        load_config(tmp_path / "missing.toml")


def test_unwritable_output_fails_early(features, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        Trainer(config(tmp_path, features, out=str(blocker / "run")))


def test_cli_train(features, tmp_path, capsys):
    code = main(
        [
            "train",
            "--features",
            str(features),
            "--out",
            str(tmp_path / "cli"),
            "--objective",
            "infonce",
            "--set",
            "batch_size=16",
            "--set",
            "epochs=1",
            "--set",
            "val_size=16",
            "--set",
            "lr=1e-3",
        ]
    )
    assert code == 0
    assert "R@1/image->text" in capsys.readouterr().out
    assert main(["train", "--features", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2


def test_end_to_end_mode_fine_tunes_the_towers(tmp_path):
    """Text (tiny CLIP) and audio (fixture BEATs) towers trained with their heads; the anchor stays cached."""
    import numpy as np
    import soundfile as sf
    from test_space_audio import FIXTURES
    from tiny_models import HIDDEN, tiny_space

    from gen_align.encoders.beats_tower import BEATsTower, load_beats_source
    from gen_align.space import AlignedSpace

    base = AlignedSpace.from_pretrained(tiny_space(tmp_path / "base"))
    towers = {"text": base.towers["text"], "audio": BEATsTower(load_beats_source(FIXTURES / "beats_tiny.pt"))}
    space_config = {**base.config, "towers": {**base.config["towers"], "audio": {"kind": "beats"}}}
    source = AlignedSpace(space_config, towers, {}).save_pretrained(tmp_path / "source", save_towers=True)

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines, ids = [], [f"clip{i}" for i in range(8)]
    for i, item in enumerate(ids):
        sf.write(data / f"{item}.wav", 0.1 * rng.standard_normal(8000 + 800 * i).astype("float32"), 16000)
        lines.append(json.dumps({"id": item, "audio": f"{item}.wav", "text": f"sound number {i}"}))
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with FeatureCache.open(tmp_path / "anchor", {"space": "x", "towers": {"image": {"kind": "clip-vision"}}}) as cache:
        cache.write("image", ids, torch.randn(8, HIDDEN, generator=torch.Generator().manual_seed(1)))

    settings = {
        "mode": "end-to-end",
        "manifest": str(data / "manifest.jsonl"),
        "space": str(source),
        "modalities": ["image", "text", "audio"],
        "batch_size": 4,
        "max_steps": 2,
        "val_size": 2,
        "lr": 1e-2,
        "checkpoint_every": 1,
    }
    trainer = Trainer(config(tmp_path, tmp_path / "anchor", **settings))
    before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).net.towers.state_dict().items()}
    trainer.fit()
    after = trainer.accelerator.unwrap_model(trainer.model).net.towers.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the towers moved
    trained = AlignedSpace.from_pretrained(tmp_path / "run" / "space", modalities=["text", "audio"])
    z = trained.encode_audio([data / "clip0.wav"])
    assert z.shape == (1, HIDDEN) and torch.isfinite(z).all()
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()


# ----------------------------------------------------------------------------- objective settings (issue 14)


def test_objective_hyperparameters_at_the_top_level_and_in_tables():
    cfg = load_config(None, ["features=a", "out=b", "tau=0.05", "weights.text=0.5", "task=retrieval"])
    assert cfg.objective_params == {"tau": 0.05, "weights": {"text": 0.5}, "task": "retrieval"}
    hparams = get_objective(cfg.objective, **cfg.objective_hparams()).hparams
    assert hparams["lambda_vol"] == 1.0 and hparams["weights"] == {"text": 0.5}  # the retrieval preset
    nce = load_config(None, ["features=a", "out=b", "objective=infonce", "pair_weights.text->image=2"])
    assert nce.objective_params == {"pair_weights": {"text->image": 2}}
    with pytest.raises(ConfigError, match="both at the top level and in objective_params"):
        load_config(None, ["features=a", "out=b", "tau=0.1", "objective_params.tau=0.2"])
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(None, ["features=a", "out=b", "task=ranking"])
    for bad, message in (
        (['tau="hot"'], "tau must be a positive finite number"),
        (["weights=[1, 2]"], "centroid weights w_m must be a table"),
        (['weights.text="half"'], "must be numbers"),
        (["objective=infonce", "pair_weights.text=2"], "must look like 'text->image'"),
        (["objective=gram", "label_smoothing=1.5"], "label_smoothing must be a number in"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["features=a", "out=b", *bad])
    with pytest.raises(ConfigError, match="geometry='geodesic' sets both"):
        load_config(None, ["features=a", "out=b", "geometry=geodesic", "alignment_metric=volume"])


def test_default_run_uses_the_registry_defaults(features, tmp_path):
    from gen_align.objectives import list_objectives

    trainer = Trainer(config(tmp_path, features, max_steps=1))
    defaults = list_objectives()["unialign"]["defaults"]
    for key in ("tau", "lambda_uni", "lambda_align", "lambda_vol", "uniformity_kernel", "alignment_metric"):
        assert trainer.objective.hparams[key] == defaults[key], key
    assert trainer.objective.hparams["lambda_vol"] == 0.1  # generation, the paper's setting (Appendix F)


def test_configs_of_the_old_convention_are_refused(features, tmp_path):
    with pytest.raises(ConfigError, match="objectives version 1.*tau_paper = sqrt"):
        load_config(None, ["features=a", "out=b", "objectives_version=1"])
    Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=2)).fit()
    state_file = next((tmp_path / "run" / "checkpoints").glob("step-*")) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["objectives_version"]  # what a checkpoint written before the paper's equations holds
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="objectives version 1"):
        Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=4)).fit(resume=True)


def test_gram_trains_its_temperature_and_records_it(features, tmp_path, monkeypatch):
    run = config(tmp_path, features, objective="gram", max_steps=6, checkpoint_every=3, lr=1e-2)
    summary = Trainer(run).fit()
    record = summary["objective"]
    assert record["name"] == "gram" and record["version"] == 2 and record["label_smoothing"] == 0.1
    assert record["learned_tau"] != pytest.approx(0.07, abs=1e-6)  # the temperature moved from its start
    space = json.loads((tmp_path / "run" / "space" / "config.json").read_text())
    assert space["training"]["objective"] == record  # the space records what it was trained with
    # a run killed after its step-3 checkpoint and resumed ends with the same temperature (it is checkpointed)
    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.step == 3:
            raise KeyboardInterrupt
        return path

    killed = config(tmp_path / "r", features, objective="gram", max_steps=6, checkpoint_every=3, lr=1e-2)
    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(killed).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert Trainer(killed).fit(resume=True)["objective"]["learned_tau"] == record["learned_tau"]
    fixed = Trainer(config(tmp_path / "f", features, objective="gram", max_steps=2, learnable_tau=False)).fit()
    assert "learned_tau" not in fixed["objective"] and fixed["objective"]["tau"] == 0.07


def test_the_shared_schedule_is_linear_warmup_then_half_cosine():
    import math

    from gen_align.train.schedule import warmup_schedule

    f = warmup_schedule(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in range(4, 20):
        expected = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 4) / 10)))
        assert f(step) == pytest.approx(expected, abs=1e-15)
    assert f(14) == pytest.approx(0.0, abs=1e-15) and warmup_schedule(0, 10, "constant")(7) == 1.0


def test_resume_passes_over_a_truncated_newest_checkpoint_and_cleans_leftovers(features, tmp_path):
    Trainer(config(tmp_path / "a", features, checkpoint_every=2, max_steps=6)).fit()
    run = config(tmp_path / "b", features, checkpoint_every=2, max_steps=6, keep_checkpoints=3)
    Trainer(run).fit()
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    newest = checkpoints / "step-00000006" / "training_state.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # the disk filled up while it was written
    (checkpoints / ".tmp-step-00000008").mkdir()  # what a killed run of an earlier version left behind
    (checkpoints / ".step-00000008.abc.tmp").mkdir()
    trainer = Trainer(run)
    assert not list(checkpoints.glob(".*"))
    with pytest.warns(UserWarning, match="skipping the checkpoint .*step-00000006.*truncated"):
        trainer.fit(resume=True)
    a = load_file(str(tmp_path / "a" / "run" / "space" / "heads.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "space" / "heads.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_an_older_layout_is_refused_with_advice(features, tmp_path):
    Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=2)).fit()
    (next((tmp_path / "run" / "checkpoints").glob("step-*")) / "training_state.pt").unlink()
    with pytest.raises(GenAlignError, match="written by an older gen-align .* Start a new run"):
        Trainer(config(tmp_path, features, checkpoint_every=2, max_steps=4)).fit(resume=True)


def test_a_second_run_into_the_same_folder_is_refused(features, tmp_path):
    """While a run holds ``out`` (here its lock, held as a running trainer holds it), another trainer into that
    folder is refused with the holder's pid and writes nothing; once it is let go the run trains."""
    import os

    from gen_align.io import FolderLock

    cfg = config(tmp_path, features, epochs=1)
    with FolderLock(cfg.out, "rank0"):
        with pytest.raises(OutputError, match=rf"being written by pid {os.getpid()} "):
            Trainer(cfg).fit(progress=False)
        assert not (tmp_path / "run" / "train_summary.json").exists()
    Trainer(cfg).fit(progress=False)
    assert (tmp_path / "run" / "train_summary.json").is_file()
