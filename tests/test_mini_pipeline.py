"""The whole mini-world pipeline at a miniature size: build → towers → features → heads → decoder → classifier →
ship → eval, through the CLI, then the shipped folder loads and generates through the generic loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gen_align.cli import main
from gen_align.data.manifest import read_manifest
from gen_align.errors import ConfigError
from gen_align.mini.recipes.build import STAGES, MiniPaths
from gen_align.mini.recipes.recipe import OBJECTIVES
from gen_align.mini.recipes.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    work, shipped = root / "work", root / "weights"
    args = ["mini", "train", "--smoke", "--work", str(work), "--quiet", "--threads", "1"]
    assert main([*args, "--ship", "--ship-to", str(shipped)]) == 0
    return work, shipped


def test_every_stage_ran_and_a_rerun_skips_them(smoke_run, capsys):
    work, _ = smoke_run
    record = json.loads((work / "stages.json").read_text())
    assert list(record) == list(STAGES)
    assert main(["mini", "train", "--smoke", "--work", str(work), "--quiet"]) == 0
    assert json.loads((work / "stages.json").read_text()) == record  # nothing redone


def test_a_changed_recipe_retrains_a_stage_instead_of_resuming_its_old_state(smoke_run, tmp_path):
    import shutil
    from dataclasses import replace

    from safetensors.torch import load_file

    from gen_align.mini.recipes.build import MiniBuild
    from gen_align.mini.recipes.recipe import smoke_recipe

    work = tmp_path / "work"
    shutil.copytree(smoke_run[0], work)
    unet = work / "decoder" / "unet" / "diffusion_pytorch_model.safetensors"
    old_record = json.loads((work / "stages.json").read_text())
    old_key = old_record["decoder"]["hash"]
    before = load_file(unet)
    # the same step counts (so the same fit settings) with another loss weighting: a stale state must not be resumed
    record = MiniBuild(work, replace(smoke_recipe(), decoder_snr_gamma=5.0), progress=False).run(STAGES)
    new_key = record["decoder"]["hash"]
    # only the decoder was redone: its autoencoder (its own stage) and every other stage are kept
    assert {s: v for s, v in record.items() if s != "decoder"} == {
        s: v for s, v in old_record.items() if s != "decoder"
    }
    assert new_key != old_key
    assert {p.name for p in (work / "checkpoints").glob("decoder-*")} == {f"decoder-{old_key}", f"decoder-{new_key}"}
    after = load_file(unet)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_changed_head_recipe_retrains_the_heads_instead_of_reusing_them(smoke_run, tmp_path):
    import shutil
    from dataclasses import replace

    from gen_align.mini.recipes.build import MiniBuild
    from gen_align.mini.recipes.recipe import smoke_recipe

    work = tmp_path / "work"
    shutil.copytree(smoke_run[0], work)
    paths = MiniPaths(work)
    summary = paths.heads("infonce", 0, 0.5) / "train_summary.json"
    assert len(json.loads(summary.read_text())["history"]) == 2  # validation before training + after 1 epoch
    recipe = replace(smoke_recipe(), head_epochs=2, objectives=("infonce",))
    MiniBuild(work, recipe, progress=False).run(("heads",))
    assert len(json.loads(summary.read_text())["history"]) == 3  # trained again for 2 epochs, not reused
    marker = json.loads((summary.parent / "recipe.json").read_text())
    stage_hash = json.loads((work / "stages.json").read_text())["heads"]["hash"]
    assert marker["hash"] != stage_hash  # a head folder's key leaves out how τ is chosen among the folders
    trained = json.loads(summary.read_text())
    # another selection rule redoes the stage's choice of τ, not the training of the heads it chooses among
    MiniBuild(work, replace(recipe, tau_selection="r1"), progress=False).run(("heads",))
    assert json.loads(summary.read_text()) == trained
    assert json.loads(paths.selection("infonce").read_text())["criterion"].startswith("mean validation R@1")
    assert json.loads((work / "stages.json").read_text())["heads"]["hash"] != stage_hash


def test_tau_selection_rules():
    from gen_align.mini.recipes.build import select_tau

    def metrics(t2i, a2i, gap_audio, gap_text):
        return {"R@1/text->image": t2i, "R@1/audio->image": a2i, "gap/audio-image": gap_audio,
                "gap/image-text": gap_text, "gap/audio-text": 9.0}  # fmt: skip

    validation = {0.07: metrics(0.10, 0.10, 0.01, 0.01), 0.5: metrics(0.35, 0.35, 0.05, 0.04),
                  1.0: metrics(0.34, 0.34, 0.03, 0.03), 2.0: metrics(0.20, 0.20, 0.0, 0.0)}  # fmt: skip
    best, record = select_tau(validation, 512, "r1")
    assert best == 0.5 and record["validation"]["0.5"] == pytest.approx(0.35)
    best, record = select_tau(validation, 512, "r1-then-gap")
    tolerance = 2 * (0.35 * 0.65 / 1024) ** 0.5  # 2 standard errors of a mean of two R@1 over 512 items
    assert record["tolerance"] == pytest.approx(tolerance)
    assert best == 1.0 and set(record["gap"]) == {"0.5", "1"}  # 0.34 is within 0.030 of 0.35; 0.20 is not
    assert record["gap"]["1"] == pytest.approx(0.03)  # audio–image and image–text; audio–text is not the anchor's
    assert select_tau(validation, 100_000, "r1-then-gap")[0] == 0.5  # a tight tolerance keeps the best R@1
    with pytest.raises(ConfigError, match="tau_selection"):
        select_tau(validation, 512, "gap")


def test_heads_exist_for_every_objective_and_use_the_cached_anchor_norm(smoke_run):
    from gen_align.data.cache import FeatureCache

    paths = MiniPaths(smoke_run[0])
    anchor = FeatureCache.load(paths.features("train")).to_dict(["image"])["image"].float()
    for objective in OBJECTIVES:
        selection = json.loads(paths.selection(objective).read_text())
        scores = {}
        for tau in (0.07, 0.5):  # the smoke recipe's candidates; the score is re-read from each run's summary
            last = json.loads((paths.heads(objective, 0, tau) / "train_summary.json").read_text())["history"][-1]
            scores[tau] = last["validation"]["R@1/text->image"] + last["validation"]["R@1/audio->image"]
        assert scores[selection["tau"]] == max(scores.values())
        config = json.loads((paths.space(objective, 0) / "config.json").read_text())
        assert config["training"]["objective"]["tau"] == selection["tau"]
        assert config["training"]["objective"]["name"] == objective
        assert set(config["heads"]) == {"text", "audio"}
        # the trainer's held-out split leaves some items out of the norm: compare with the full-cache mean loosely
        assert config["output_norm"] == pytest.approx(float(anchor.norm(dim=-1).mean()), rel=0.05)


def test_shipped_folder_loads_and_generates(smoke_run):
    from gen_align.pipelines.decoders import inspect_decoder, load_decoder
    from gen_align.space import AlignedSpace

    work, shipped = smoke_run
    space = AlignedSpace.from_pretrained(shipped / "space")
    assert space.config["preset"] == "mini"
    sources = [Path(t["source"]) for t in space.config["towers"].values()]
    assert all(not s.is_absolute() and (shipped / "space" / s).is_dir() for s in sources)  # self-contained
    item = read_manifest(MiniPaths(work).manifest("test")).items[0]
    z = {"text": space.encode_text([item.text]), "audio": space.encode_audio([str(item.audio)])}
    assert all(v.shape == (1, space.embedding_dim) for v in z.values())
    assert torch.allclose(z["text"].norm(dim=-1), torch.tensor(space.config["output_norm"]), rtol=1e-4)
    info = inspect_decoder(str(shipped / "decoder"))
    assert (info.kind, info.embedding_dim) == ("mini", space.embedding_dim)
    decoder = load_decoder(info, device="cpu", progress=False)
    (image,) = decoder(z["audio"], seed=0, steps=2)
    assert image.size == (32, 32)
    examples = json.loads((shipped / "examples" / "examples.json").read_text())
    assert all((shipped / "examples" / e["audio"]).is_file() for e in examples)


def test_eval_writes_the_table_for_every_method(smoke_run, tmp_path):
    work, _ = smoke_run
    args = ["mini", "eval", "--work", str(work), "--out", str(tmp_path), "--items", "4", "--seeds", "0"]
    assert main([*args, "--steps", "2", "--quiet", "--threads", "1", "--ablations"]) == 0
    record = json.loads((tmp_path / "mini.json").read_text())
    assert set(record["summary"]) == {"reconstruction", *OBJECTIVES}
    # the smoke recipe trains one ablation (Table 2's U(C) ✗ L_vol ✗), at UniAlign's selected τ, A2I only
    ablations = record["ablations"]
    assert ablations["params"] == {"unialign-no-uc-no-vol": {"centroid_term": False, "volume_term": False}}
    variant = ablations["runs"]["unialign-no-uc-no-vol"][0]
    assert set(variant) >= {"r1_text", "r1_audio", "audio", "gap"} and "text" not in variant
    selected = json.loads((work / "heads" / "unialign" / "selection.json").read_text())["tau"]
    assert json.loads((work / "heads" / "unialign-no-uc-no-vol" / "selection.json").read_text())["tau"] == selected
    real = record["classifier_on_real_test_images"]
    assert real["fid"] == pytest.approx(0.0, abs=1e-6)  # the test set against its own statistics
    for objective in OBJECTIVES:
        run = record["runs"][objective][0]
        assert 0 <= run["r1_text"] <= 100 and 0 <= run["r1_audio"] <= 100
        assert all(run[c]["fid"] >= 0 and 0 <= run[c]["acc_mean"] <= 1 for c in ("text", "audio", "text+audio"))
    table = (tmp_path / "mini.md").read_text()
    assert "UniAlign (Euclidean)" in table and "GRAM" in table and "self-reconstruction" in table
    assert "| Method | shape | colour | size | background |" in table
    assert "| unialign-no-uc-no-vol | ✗ | ✗ | τ |" in table and "UniAlign (Euclidean) (full) | ✓ | ✓ | τ |" in table
    assert (tmp_path / "mini_samples.png").stat().st_size > 0


def test_check_scores_the_shipped_preset_on_unseen_items(tmp_path):
    """`gen-align mini check`: images from captions and clips of unseen items through the public pipeline, judged
    against each item's ground truth; the record's accuracy is the classifier's on exactly those images."""
    from gen_align.mini.recipes.classifier import AttributeClassifier, attribute_accuracy
    from gen_align.mini.shipped import MINI_CLASSIFIER
    from gen_align.mini.user_check import UNSEEN_SEED
    from gen_align.mini.world.dataset import make_item
    from gen_align.pipelines.pipeline import GenAlignPipeline

    args = ["mini", "check", "--out", str(tmp_path), "--items", "3", "--steps", "2", "--quiet", "--threads", "1"]
    assert main(args) == 0
    record = json.loads((tmp_path / "mini_check.json").read_text())
    assert record["items"] == 3 and record["sampling"]["steps"] == 2 and record["world_seed"] == UNSEEN_SEED
    items = [make_item(UNSEEN_SEED, "test", i) for i in range(3)]
    pipe = GenAlignPipeline.from_pretrained("mini", progress=False)
    z = torch.cat([pipe.embed(text=item["caption"])["text"] for item in items])
    images = pipe.decode(z, seed=[0, 1, 2], steps=2)
    expected = attribute_accuracy(AttributeClassifier.from_pretrained(MINI_CLASSIFIER), images,
                                  [item["attributes"] for item in items])  # fmt: skip
    assert record["accuracy"]["text"] == pytest.approx(expected)
    assert "| text |" in (tmp_path / "mini_check.md").read_text() and (tmp_path / "mini_check.png").is_file()


def test_eval_without_a_trained_run_says_what_to_do(tmp_path, capsys):
    assert main(["mini", "eval", "--work", str(tmp_path / "nothing"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "gen-align mini train --work" in capsys.readouterr().err


def test_tokenizer_learns_whole_caption_words():
    tokenizer = build_tokenizer(["a small red star on stripes", "a big red square on dots"] * 3)
    assert tokenizer.tokenize("a small red star") == ["a</w>", "small</w>", "red</w>", "star</w>"]
    assert tokenizer.tokenize("zebra")[-1].endswith("</w>")  # unseen words still tokenize, by character
    ids = tokenizer("red").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_reuse_shipped_marks_the_shipped_models_done_for_their_recipe(smoke_run, tmp_path, capsys):
    """`mini train --reuse-shipped`: towers (base-space without heads), decoder and classifier come from a shipped
    preset, recorded under the stage hashes its recipe.json names, so only world, features and heads are trained;
    a preset shipped from another recipe is refused."""
    from gen_align.mini.recipes.build import MiniBuild, seed_from_shipped
    from gen_align.mini.recipes.recipe import FULL, smoke_recipe
    from gen_align.space import AlignedSpace

    _, shipped = smoke_run
    work = tmp_path / "work"
    recipe = smoke_recipe()
    assert json.loads((shipped / "recipe.json").read_text())["stages"] == MiniBuild(work, recipe).stage_hashes()
    assert seed_from_shipped(work, recipe, source=shipped) == ["towers", "autoencoder", "decoder", "classifier"]
    record = json.loads((work / "stages.json").read_text())
    hashes = MiniBuild(work, recipe, progress=False).stage_hashes()
    for stage in ("towers", "autoencoder", "decoder", "classifier"):
        assert record[stage] == {"hash": hashes[stage], "seconds": 0.0, "source": "shipped"}
    base = AlignedSpace.from_pretrained(MiniPaths(work).base_space)
    assert dict(base.heads) == {} and set(base.towers) == {"image", "text", "audio"}
    assert (MiniPaths(work).decoder / "model_index.json").is_file()
    assert (MiniPaths(work).autoencoder / "config.json").is_file()
    assert seed_from_shipped(work, recipe, source=shipped) == []  # already seeded: nothing is copied again
    with pytest.raises(
        ConfigError, match="not shipped from this recipe.*towers, autoencoder, decoder, classifier differ"
    ):
        seed_from_shipped(tmp_path / "other", FULL, source=shipped)
    # the CLI's full recipe cannot take the models a smoke recipe shipped
    assert main(["mini", "train", "--smoke", "--reuse-shipped", "--work", str(tmp_path / "w2"), "--quiet"]) == 2
    assert "--reuse-shipped takes the models the full recipe shipped" in capsys.readouterr().err


def test_check_and_ablations_refuse_bad_settings(tmp_path, capsys):
    from dataclasses import replace

    from gen_align.mini.recipes.build import MiniBuild
    from gen_align.mini.recipes.recipe import smoke_recipe

    assert main(["mini", "check", "--out", str(tmp_path), "--items", "0", "--quiet"]) == 2
    assert "items must be an integer >= 1" in capsys.readouterr().err
    build = MiniBuild(tmp_path / "work", replace(smoke_recipe(), objectives=("infonce",)), progress=False)
    with pytest.raises(ConfigError, match="the ablations vary unialign, which this recipe does not train"):
        build.ablations()


def test_a_stage_running_in_another_process_is_not_run_twice(smoke_run, tmp_path):
    """Two `mini train` runs on one work folder: a stage another process is running is refused (its lock names
    the holder); other stages may run beside it (e.g. ``--stages decoder`` next to ``heads``)."""
    import os
    import shutil
    from dataclasses import replace

    from gen_align.errors import OutputError
    from gen_align.io import FolderLock
    from gen_align.mini.recipes.build import MiniBuild
    from gen_align.mini.recipes.recipe import smoke_recipe

    work = tmp_path / "work"
    shutil.copytree(smoke_run[0], work)
    recipe = replace(smoke_recipe(), decoder_snr_gamma=5.0, classifier=replace(smoke_recipe().classifier, lr=2e-3))
    with FolderLock(work, "stage-decoder"):
        with pytest.raises(OutputError, match=rf"being written by pid {os.getpid()} "):
            MiniBuild(work, recipe, progress=False).run(("decoder",))
        record = MiniBuild(work, recipe, progress=False).run(("classifier",))
    assert record["classifier"]["hash"] == MiniBuild(work, recipe).stage_hashes()["classifier"]
