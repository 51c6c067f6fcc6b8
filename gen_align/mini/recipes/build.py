"""``gen-align mini train``: every mini-world model from scratch, through the library's real data path.

Stages, in order, each skipped when its output exists for the same recipe (``WORK/stages.json``) and
resumable inside (the world generator, the feature cache, the trainer and :func:`fit` all resume):

1. ``world/``      the dataset (:func:`gen_align.mini.world.build_world`);
2. ``towers/``     CLIP and BEATs pretrained on the training split → ``base-space/`` (towers, no heads);
3. ``features/``   ``gen-align encode`` of both splits into feature caches;
4. ``heads/``      ``gen-align train`` of each objective × seed over the cached features (τ picked on validation);
5. ``ablations``   the paper's UniAlign ablations (Tables 2 and 5), as more heads;
6. ``autoencoder/`` the decoder's ``AutoencoderKL`` on the training images (none for a pixel-space decoder), its
   own stage so that a change to the UNet does not retrain it;
7. ``decoder/``    the latent unCLIP decoder on the training images' raw anchor embeddings;
8. ``classifier/`` the attribute classifier (FID features + attribute accuracy).

``ship`` copies the UniAlign space (towers inside), the decoder, the classifier and example inputs into the package.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gen_align.checks import choice
from gen_align.data.cache import FeatureCache
from gen_align.data.manifest import Manifest, read_manifest
from gen_align.errors import ConfigError, InputFileError
from gen_align.io import FolderLock, write_json_atomic
from gen_align.mini.world.attributes import index_tensor

from .recipe import ABLATED, SHIPPED_OBJECTIVE, MiniRecipe
from .towers import EMBEDDING_DIM, fbanks, pretrain_beats, pretrain_clip

STAGES = ("world", "towers", "features", "heads", "ablations", "autoencoder", "decoder", "classifier")
HEAD_FIELDS = tuple(f.name for f in fields(MiniRecipe) if f.name.startswith("head_"))
SELECTION_FIELDS = ("tau_selection",)
TAU_SELECTIONS = ("r1", "r1-then-gap")
TOWER_FIELDS = ("clip", "clip_vision", "beats")
AUTOENCODER_FIELDS = ("autoencoder", "autoencoder_arch")
DECODER_FIELDS = (*AUTOENCODER_FIELDS, "decoder", "decoder_unet", "decoder_snr_gamma")


def mean_r1(validation: dict[str, float]) -> float:
    """The mean validation R@1 of text→image and audio→image."""
    return (validation["R@1/text->image"] + validation["R@1/audio->image"]) / 2


def mean_gap(validation: dict[str, float]) -> float:
    """The mean validation modality gap (centroid distance) of every modality to the image anchor."""
    gaps = [v for k, v in validation.items() if k.startswith("gap/") and "image" in k.split("/", 1)[1].split("-")]
    return sum(gaps) / len(gaps)


def select_tau(validation: dict[float, dict[str, float]], n_val: int, rule: str) -> tuple[float, dict[str, Any]]:
    """The τ of ``rule`` among the candidates' validation metrics (seed 0) and what the selection records.

    "r1": the best mean R@1 (ties: the smaller τ). "r1-then-gap": the candidates within 2 standard errors of that
    best, SE = √(p(1 − p) / (2 n_val)) for the mean of two R@1 over n_val items, then the smallest mean modality
    gap to the image anchor (ties: the better R@1)."""
    choice(rule, "tau_selection", TAU_SELECTIONS)
    r1 = {tau: mean_r1(v) for tau, v in validation.items()}
    top = max(r1, key=lambda tau: (r1[tau], -tau))
    record: dict[str, Any] = {"validation": {f"{t:g}": v for t, v in r1.items()}}
    if rule == "r1":
        return top, {"criterion": "mean validation R@1 text->image, audio->image (seed 0)", **record}
    tolerance = 2 * math.sqrt(r1[top] * (1 - r1[top]) / (2 * n_val))
    near = [tau for tau in r1 if r1[tau] >= r1[top] - tolerance]
    gap = {tau: mean_gap(validation[tau]) for tau in near}
    best = min(near, key=lambda tau: (gap[tau], -r1[tau], tau))
    criterion = (
        "among the τ whose mean validation R@1 (text->image, audio->image; seed 0) is within 2 standard errors "
        "of the best, the smallest mean modality gap to the image anchor"
    )
    return best, {
        "criterion": criterion,
        **record,
        "tolerance": tolerance,
        "gap": {f"{t:g}": g for t, g in gap.items()},
    }


@dataclass(frozen=True)
class MiniPaths:
    """Where each stage of a run under ``work`` writes."""

    work: Path

    def manifest(self, split: str) -> Path:
        return self.work / "world" / split / "manifest.jsonl"

    @property
    def base_space(self) -> Path:
        return self.work / "base-space"

    def features(self, split: str) -> Path:
        return self.work / "features" / split

    def heads(self, objective: str, seed: int, tau: float) -> Path:
        return self.work / "heads" / objective / f"tau{tau:g}" / f"seed{seed}"

    def selection(self, objective: str) -> Path:
        """``heads/<objective>/selection.json``: the τ chosen on validation R@1 and every candidate's score."""
        return self.work / "heads" / objective / "selection.json"

    def space(self, objective: str, seed: int) -> Path:
        """The trained space of ``objective`` at its selected τ."""
        file = self.selection(objective)
        if not file.is_file():
            raise InputFileError(f"{file} is missing: the heads stage has not finished; run `gen-align mini train`.")
        return self.heads(objective, seed, json.loads(file.read_text(encoding="utf-8"))["tau"]) / "space"

    @property
    def autoencoder(self) -> Path:
        return self.work / "autoencoder"

    @property
    def decoder(self) -> Path:
        return self.work / "decoder"

    @property
    def classifier(self) -> Path:
        return self.work / "classifier"


def image_tensor(paths: list[Path]) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 pixels of RGB image files."""
    arrays = []
    for path in paths:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def attributes_of(manifest: Manifest) -> torch.Tensor:
    """``(N, 4)`` attribute indices of a mini-world manifest's items."""
    missing = [item.id for item in manifest.items if "attributes" not in item.extra]
    if missing:
        raise InputFileError(f"{manifest.path} has items without attributes (e.g. {missing[:3]}): not a mini world.")
    return index_tensor([item.extra["attributes"] for item in manifest.items])


def anchor_features(paths: MiniPaths, split: str, ids: list[str]) -> torch.Tensor:
    """Raw image (anchor) embeddings of ``ids`` from the split's feature cache."""
    return FeatureCache.load(paths.features(split)).get("image", ids).float()


class MiniBuild:
    """Runs the stages of :mod:`gen_align.mini.recipes.build` for one ``recipe`` under ``work``."""

    def __init__(
        self, work: str | Path, recipe: MiniRecipe, *, progress: bool = True, compile_decoder: bool = False
    ) -> None:
        """``compile_decoder``: train the decoder through ``torch.compile`` (:class:`~.decoder.CompiledForward`; an
        execution choice like the thread count, so not part of the recipe's hashes)."""
        self.paths = MiniPaths(Path(work))
        self.recipe, self.progress, self.compile_decoder = recipe, progress, compile_decoder
        self.record_path = self.paths.work / "stages.json"
        self.record: dict[str, Any] = self._read_record()
        self._keys: dict[str, str] = {}
        self._train_keys: dict[str, str] = {}

    def _checkpoints(self, stage: str) -> Path:
        """``WORK/checkpoints/<stage>-<recipe hash>``: an interrupted stage resumes only with the same recipe (a
        changed one, e.g. another loss weighting with the same step counts, starts afresh)."""
        return self.paths.work / "checkpoints" / f"{stage}-{self._keys[stage]}"

    def _stages(self) -> dict[str, tuple[tuple[str, ...], Callable[[], None]]]:
        """Each stage's recipe fields (its hash) and the method that runs it."""
        return {
            "world": (("seed", "train_items", "test_items"), self.world),
            "towers": (("seed", "train_items", *TOWER_FIELDS), self.towers),
            "features": (("seed", "train_items", "test_items", *TOWER_FIELDS), self.features),
            "heads": (("seed", "train_items", *TOWER_FIELDS, "objectives", *HEAD_FIELDS, "tau_selection"), self.heads),
            "ablations": (
                ("seed", "train_items", *TOWER_FIELDS, "objectives", *HEAD_FIELDS, "tau_selection", "ablations"),
                self.ablations,
            ),
            "autoencoder": (("seed", "train_items", *AUTOENCODER_FIELDS), self.autoencoder),
            "decoder": (("seed", "train_items", "clip", "clip_vision", *DECODER_FIELDS), self.decoder),
            "classifier": (("seed", "train_items", "classifier"), self.classifier),
        }

    def stage_hashes(self) -> dict[str, str]:
        """The recipe hash of every stage (a stage is redone when its hash changes)."""
        return {stage: self.recipe.stage_hash(*depends) for stage, (depends, _) in self._stages().items()}

    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        """Run ``stages`` (skipping those already done for this recipe); returns the timing record."""
        work = self._stages()
        for stage in stages:
            depends, step = work[stage]
            key = self.recipe.stage_hash(*depends)
            if self.record.get(stage, {}).get("hash") == key:
                continue
            started = time.perf_counter()
            self._keys[stage] = key
            # what a trained head folder depends on: the stage's fields but how τ is chosen among them
            self._train_keys[stage] = self.recipe.stage_hash(*(f for f in depends if f not in SELECTION_FIELDS))
            with FolderLock(self.paths.work, f"stage-{stage}"):  # another process may run another stage, not this one
                step()
            # re-read first: stages may run in parallel processes (e.g. ``--stages decoder`` beside ``heads``)
            self.record = {
                **self._read_record(),
                stage: {
                    "hash": key,
                    "seconds": round(time.perf_counter() - started, 1),
                    "threads": torch.get_num_threads(),
                    **({"compiled": self.compile_decoder} if stage == "decoder" else {}),
                },
            }
            write_json_atomic(self.record_path, self.record)
        return self.record

    # ------------------------------------------------------------------------------------------ stages
    def world(self) -> None:
        from gen_align.mini.world.dataset import build_world

        r = self.recipe
        build_world(
            self.paths.work / "world", seed=r.seed, train=r.train_items, test=r.test_items, progress=self.progress
        )

    def towers(self) -> None:
        from gen_align.encoders.audio_io import load_audio
        from gen_align.space import AlignedSpace

        manifest = read_manifest(self.paths.manifest("train"))
        images = [item.image for item in manifest.items]
        captions = [item.text for item in manifest.items]
        ckpt = self._checkpoints("towers")
        vision, text = pretrain_clip(
            images,
            captions,
            settings=self.recipe.clip,
            vision_cfg=self.recipe.clip_vision,
            checkpoint_dir=ckpt / "clip",
            progress=self.progress,
        )
        waves = [load_audio(item.audio).numpy() for item in manifest.items]
        bank = fbanks(waves, progress=self.progress)
        audio = pretrain_beats(
            bank,
            attributes_of(manifest),
            settings=self.recipe.beats,
            checkpoint_dir=ckpt / "beats",
            progress=self.progress,
        )
        config = {
            "format": "gen-align-space",
            "anchor": "image",
            "embedding_dim": EMBEDDING_DIM,
            "towers": {m: {} for m in ("image", "text", "audio")},
            "heads": {},
            "output_norm": None,
        }
        space = AlignedSpace(config, {"image": vision, "text": text, "audio": audio}, {})
        space.save_pretrained(self.paths.base_space, save_towers=True)

    def features(self) -> None:
        from gen_align.feature_extraction import encode_manifest

        for split in ("train", "test"):
            encode_manifest(
                self.paths.manifest(split),
                self.paths.base_space,
                self.paths.features(split),
                modalities=["image", "text", "audio"],
                batch_size=256,
                progress=self.progress,
            )

    def heads(self) -> None:
        """Per objective: seed 0 at every candidate τ, the τ of :func:`select_tau` on the trainer's held-out split
        of the training set, then the other seeds at that τ."""
        r = self.recipe
        for objective in r.objectives:
            validation = {tau: self._train_head(objective, r.head_seeds[0], tau) for tau in r.head_taus}
            best, record = select_tau(validation, r.head_val, r.tau_selection)
            write_json_atomic(self.paths.selection(objective), {"tau": best, **record})
            for seed in r.head_seeds[1:]:
                self._train_head(objective, seed, best)

    def ablations(self) -> None:
        """The paper's ablations of UniAlign (Table 2: U(C) and the Gram volume each in L_vol or not; Table 5: τ_ctr),
        each variant at the τ chosen for ``unialign`` and with every head seed; ``heads/<variant>/selection.json``
        records that τ, so :meth:`MiniPaths.space` finds the variants as it finds the objectives."""
        r = self.recipe
        if not r.ablations:
            return
        if ABLATED not in r.objectives:
            raise ConfigError(f"the ablations vary {ABLATED}, which this recipe does not train; add it to objectives.")
        tau = json.loads(self.paths.selection(ABLATED).read_text(encoding="utf-8"))["tau"]
        for variant, params in r.ablations.items():
            scores = {seed: mean_r1(self._train_head(variant, seed, tau, stage="ablations", objective=ABLATED,
                                                     extra=params)) for seed in r.head_seeds}  # fmt: skip
            write_json_atomic(
                self.paths.selection(variant),
                {"tau": tau, "criterion": f"the τ selected for {ABLATED}", "variant_of": ABLATED, "params": params,
                 "validation_by_seed": {str(k): v for k, v in scores.items()}},
            )  # fmt: skip

    def _train_head(
        self,
        name: str,
        seed: int,
        tau: float,
        *,
        stage: str = "heads",
        objective: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Train (or reuse) one head set in ``heads/<name>``; returns its final validation metrics.
        ``objective`` (default ``name``) with ``extra`` parameters is what trains.

        A head folder is reused (or resumed) only when its ``recipe.json`` names this stage's hash: one left by
        another recipe (other epochs, lr, towers, ...) is removed and trained again."""
        from gen_align.train.config import HeadSettings, TrainConfig
        from gen_align.train.trainer import Trainer

        r = self.recipe
        objective = objective or name
        out = self.paths.heads(name, seed, tau)
        summary_file, marker = out / "train_summary.json", out / "recipe.json"
        key = self._train_keys[stage]
        if out.exists() and _stage_hash_in(marker) != key:
            shutil.rmtree(out)
        if not summary_file.is_file():
            write_json_atomic(marker, {"stage": stage, "hash": key})
            params = {**(r.head_params or {}).get(objective, {}), **(extra or {}), "tau": tau}
            config = TrainConfig(
                features=str(self.paths.features("train")),
                out=str(out),
                objective=objective,
                objective_params=params,
                head=HeadSettings(residual=list(r.head_residual)),
                lr=r.head_lr,
                batch_size=r.head_batch,
                epochs=r.head_epochs,
                val_size=r.head_val,
                seed=seed,
                log_every=50,
            ).validate()
            Trainer(config).fit(resume=any(out.glob("checkpoints/*")), progress=self.progress)
        return json.loads(summary_file.read_text(encoding="utf-8"))["history"][-1]["validation"]

    def autoencoder(self) -> None:
        """The latent decoder's autoencoder (nothing for a recipe whose decoder works on the pixels)."""
        from .autoencoder import train_autoencoder

        r = self.recipe
        shutil.rmtree(self.paths.autoencoder, ignore_errors=True)
        if r.autoencoder is None:
            return
        manifest = read_manifest(self.paths.manifest("train"))
        vae = train_autoencoder(
            image_tensor([item.image for item in manifest.items]),
            settings=r.autoencoder,
            overrides=r.autoencoder_arch,
            checkpoint_dir=self._checkpoints("autoencoder"),
            progress=self.progress,
        )
        vae.save_pretrained(self.paths.autoencoder, safe_serialization=True)

    def decoder(self) -> None:
        """The unCLIP UNet in the autoencoder's latent space (the ``autoencoder`` stage's), else in pixel space."""
        from diffusers import AutoencoderKL

        from .decoder import train_decoder

        r = self.recipe
        manifest = read_manifest(self.paths.manifest("train"))
        images = image_tensor([item.image for item in manifest.items])
        embeds = anchor_features(self.paths, "train", [item.id for item in manifest.items])
        vae = None
        if r.autoencoder is not None:
            if self._read_record().get("autoencoder", {}).get("hash") != self.stage_hashes()["autoencoder"]:
                raise InputFileError(
                    "the autoencoder stage has not run for this recipe; run `gen-align mini train --stages "
                    "autoencoder,decoder`."
                )
            vae = AutoencoderKL.from_pretrained(self.paths.autoencoder).eval().requires_grad_(False)
        train_decoder(
            images,
            embeds,
            out_dir=self.paths.decoder,
            settings=r.decoder,
            snr_gamma=r.decoder_snr_gamma,
            unet_overrides=r.decoder_unet,
            vae=vae,
            compile=self.compile_decoder,
            checkpoint_dir=self._checkpoints("decoder") / "unet",
            progress=self.progress,
        )

    def classifier(self) -> None:
        from .classifier import train_classifier

        manifest = read_manifest(self.paths.manifest("train"))
        images = image_tensor([item.image for item in manifest.items])
        model = train_classifier(
            images,
            attributes_of(manifest),
            settings=self.recipe.classifier,
            checkpoint_dir=self._checkpoints("classifier"),
            progress=self.progress,
        )
        model.save_pretrained(self.paths.classifier)

    # ------------------------------------------------------------------------------------------- state
    def _read_record(self) -> dict[str, Any]:
        if not self.record_path.exists():
            return {}
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputFileError(f"{self.record_path} is unreadable ({err}); delete it to rerun every stage.") from err


REUSABLE_STAGES = ("towers", "autoencoder", "decoder", "classifier")
SHIPPED_RECIPE = "recipe.json"


def seed_from_shipped(work: str | Path, recipe: MiniRecipe, source: Path | None = None) -> list[str]:
    """Mark the towers, autoencoder, decoder and classifier stages of ``work`` done with the shipped preset's models
    (only the heads are then retrained: the objectives changed, the models under them did not).

    Valid when the package's preset was shipped from ``recipe`` (the hashes recorded are that recipe's); the
    stages.json entries say ``"source": "shipped"``. Stages already done in ``work`` are left alone. Returns
    the stages it seeded."""
    from gen_align.mini.shipped import MINI_CLASSIFIER, MINI_DECODER, MINI_SPACE, MINI_WEIGHTS
    from gen_align.space import AlignedSpace

    source = MINI_WEIGHTS if source is None else Path(source)
    build = MiniBuild(work, recipe, progress=False)
    hashes = build.stage_hashes()
    shipped_with = _shipped_hashes(source)
    differ = [s for s in REUSABLE_STAGES if shipped_with.get(s) != hashes[s]]
    if differ:
        raise ConfigError(
            f"the preset in {source} was not shipped from this recipe (stages {', '.join(differ)} differ, per its "
            f"{SHIPPED_RECIPE}): --reuse-shipped can only take models the same recipe made. Train every stage "
            "(`gen-align mini train --ship`), or drop --reuse-shipped."
        )
    todo = [s for s in REUSABLE_STAGES if build.record.get(s, {}).get("hash") != hashes[s]]
    if "towers" in todo:
        shipped = AlignedSpace.from_pretrained(source / MINI_SPACE.name)
        config = {**shipped.config, "heads": {}, "output_norm": None}
        config.pop("training", None)
        config.pop("preset", None)
        AlignedSpace(config, dict(shipped.towers), {}).save_pretrained(build.paths.base_space, save_towers=True)
    for stage, folder, target in (
        ("autoencoder", source / MINI_DECODER.name / "vae", build.paths.autoencoder),
        ("decoder", source / MINI_DECODER.name, build.paths.decoder),
        ("classifier", source / MINI_CLASSIFIER.name, build.paths.classifier),
    ):
        if stage in todo:
            shutil.rmtree(target, ignore_errors=True)
            if folder.is_dir():  # a pixel-space decoder has no autoencoder
                shutil.copytree(folder, target)
    record = {**build._read_record(), **{s: {"hash": hashes[s], "seconds": 0.0, "source": "shipped"} for s in todo}}
    write_json_atomic(build.record_path, record)
    return todo


def _shipped_hashes(source: Path) -> dict[str, str]:
    """The stage hashes a shipped preset records in ``recipe.json`` (empty when it has none: shipped before the
    file existed)."""
    try:
        return json.loads((source / SHIPPED_RECIPE).read_text(encoding="utf-8")).get("stages", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _stage_hash_in(marker: Path) -> str | None:
    """The stage hash a head folder's ``recipe.json`` records (None when absent or unreadable)."""
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("hash")
    except (OSError, ValueError, AttributeError):
        return None


def ship(build: MiniBuild, target: Path, *, objective: str = SHIPPED_OBJECTIVE, seed: int = 0) -> Path:
    """Copy the ``objective`` space (towers inside, preset ``mini``), decoder, classifier and example inputs of a
    finished run into ``target`` (the package's ``mini/weights``), replacing what was there, with ``recipe.json``:
    the recipe and the stage hashes they were made with (what ``--reuse-shipped`` checks)."""
    paths = build.paths
    from gen_align.mini.shipped import MINI_CLASSIFIER, MINI_DECODER, MINI_EXAMPLES, MINI_SPACE
    from gen_align.mini.world.captions import vocabulary, vocabulary_hint
    from gen_align.space import AlignedSpace

    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    space = AlignedSpace.from_pretrained(paths.space(objective, seed))
    space.config["preset"] = "mini"
    space.config["text_vocabulary"] = {"words": vocabulary(), "hint": vocabulary_hint()}
    space.config["training"] = {**space.config.get("training", {}), "seed": seed}
    space.save_pretrained(staging / MINI_SPACE.name, save_towers=True)
    shutil.copytree(paths.decoder, staging / MINI_DECODER.name, ignore=shutil.ignore_patterns("*.tmp", ".*"))
    shutil.copytree(paths.classifier, staging / MINI_CLASSIFIER.name)
    _write_examples(read_manifest(paths.manifest("test")), staging / MINI_EXAMPLES.name)
    write_json_atomic(
        staging / SHIPPED_RECIPE,
        {"stages": build.stage_hashes(), "recipe": build.recipe.to_dict(), "objective": objective, "seed": seed},
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


EXAMPLES = (
    {"size": "large", "colour": "blue", "shape": "circle", "background": "plain"},
    {"size": "small", "colour": "red", "shape": "star", "background": "stripes"},
    {"size": "small", "colour": "green", "shape": "triangle", "background": "dots"},
    {"size": "large", "colour": "yellow", "shape": "square", "background": "stripes"},
    {"size": "large", "colour": "purple", "shape": "cross", "background": "dots"},
    {"size": "small", "colour": "orange", "shape": "circle", "background": "stripes"},
)


def example_name(attributes: dict[str, str]) -> str:
    """``large-blue-circle-plain.wav``: an example clip's file name."""
    return "-".join(attributes[k] for k in ("size", "colour", "shape", "background")) + ".wav"


def _write_examples(manifest: Manifest, folder: Path) -> None:
    """For each of :data:`EXAMPLES`, the first test item with those attributes: its audio and caption
    (``examples.json``), the inputs the README and the app offer."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for wanted in EXAMPLES:
        item = next((i for i in manifest.items if i.extra["attributes"] == wanted), None)
        if item is None:
            continue  # a small (smoke) world need not hold every combination
        shutil.copyfile(item.audio, folder / example_name(wanted))
        entries.append({"audio": example_name(wanted), "text": item.text, "attributes": wanted, "id": item.id})
    write_json_atomic(folder / "examples.json", entries)
