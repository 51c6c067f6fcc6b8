"""AlignedSpace with tiny CLIP towers: the anchor equals the decoders' own image encoding, round trips are
bit-exact, heads/output scale behave, and missing weights say where they were looked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import HIDDEN, tiny_kandinsky_prior_pipeline, tiny_stable_unclip_pipeline, tiny_text, tiny_tokenizer

from gen_align.errors import ConfigError, GenAlignError, WeightsNotFoundError
from gen_align.heads import HeadConfig, ProjectionHead
from gen_align.presets import PRESETS
from gen_align.space import AlignedSpace


def picture(seed: int, size=(40, 52), mode="RGB") -> Image.Image:
    rgb = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    return Image.fromarray(rgb).convert(mode)


def write_space_config(directory, preset: str, embedding_dim: int = HIDDEN, heads=None, output_norm=None):
    """A checkpoint config that names the preset's real tower sources (hub ids) at toy dimension."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "gen-align-space",
        "preset": preset,
        "anchor": "image",
        "embedding_dim": embedding_dim,
        "towers": {m: t for m, t in PRESETS[preset].towers.items() if m != "audio"},
        "heads": heads or {},
        "output_norm": output_norm,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def unclip_home(tmp_path_factory):
    """$GEN_ALIGN_HOME holding tiny stand-ins at the Stable UnCLIP preset's hub paths."""
    home = tmp_path_factory.mktemp("home")
    pipe = tiny_stable_unclip_pipeline()
    pipe.save_pretrained(home / "stabilityai/stable-diffusion-2-1-unclip")
    tiny_text().save_pretrained(home / "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    tiny_tokenizer().save_pretrained(home / "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    return home, pipe


def test_stable_unclip_anchor_is_the_pipelines_own_image_embedding(unclip_home, tmp_path):
    home, pipe = unclip_home
    space = AlignedSpace.from_pretrained(write_space_config(tmp_path / "ckpt", "stable-unclip-h"), weights_dir=home)
    images = [picture(0), picture(1, size=(64, 30)), picture(2, size=(32, 32))]
    ours = space.encode_image(images)
    pipe.noise_image_embeddings = lambda image_embeds, noise_level, generator: image_embeds  # look before noising
    for image, row in zip(images, ours, strict=True):
        theirs = pipe._encode_image(
            image=image,
            device="cpu",
            batch_size=1,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            noise_level=0,
            generator=None,
            image_embeds=None,
        )
        torch.testing.assert_close(row, theirs[0], rtol=0, atol=1e-6)
    assert ours.shape == (3, HIDDEN)
    odd_modes = space.encode_image([picture(0, mode=m) for m in ("RGBA", "L", "P", "CMYK")])
    assert odd_modes.shape == (4, HIDDEN) and torch.isfinite(odd_modes).all()


def test_kandinsky_anchor_is_the_priors_own_image_embedding(tmp_path):
    home = tmp_path / "home"
    prior = tiny_kandinsky_prior_pipeline()
    prior.save_pretrained(home / "kandinsky-community/kandinsky-2-2-prior")
    space = AlignedSpace.from_pretrained(write_space_config(tmp_path / "ckpt", "kandinsky-2.2"), weights_dir=home)
    image = picture(3)
    theirs = prior.interpolate([image], [1.0], num_inference_steps=2).image_embeds
    torch.testing.assert_close(space.encode_image([image]), theirs, rtol=0, atol=1e-6)
    # The text tower is the prior's text encoder: CLIP's own text_embeds, no head needed.
    tokens = prior.tokenizer(["a red star"], return_tensors="pt").input_ids
    torch.testing.assert_close(
        space.encode_text(["a red star"]), prior.text_encoder(tokens).text_embeds, rtol=0, atol=1e-6
    )


def test_preset_without_weights_names_every_place_looked(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        AlignedSpace.from_pretrained("stable-unclip-h", modalities=["image"], weights_dir=tmp_path / "empty")
    message = str(err.value)
    assert "CLIP image encoder stabilityai/stable-diffusion-2-1-unclip" in message
    assert str(tmp_path / "empty" / "stabilityai/stable-diffusion-2-1-unclip" / "image_encoder") in message
    assert "hf download stabilityai/stable-diffusion-2-1-unclip --include 'image_encoder/*'" in message


def test_unknown_preset_and_missing_tower(tmp_path):
    with pytest.raises(ConfigError, match="neither a checkpoint directory nor a preset"):
        AlignedSpace.from_pretrained("no-such-preset")
    with pytest.raises(GenAlignError, match="not a gen-align space checkpoint"):
        AlignedSpace.from_pretrained(tmp_path)


def test_round_trip_with_heads_is_bit_exact(unclip_home, tmp_path):
    home, _ = unclip_home
    heads = {"text": HeadConfig(in_dim=HIDDEN, out_dim=HIDDEN, kind="mlp", hidden_dim=48, spectral_norm=True).to_dict()}
    ckpt = write_space_config(tmp_path / "a", "stable-unclip-h", heads=heads)
    torch.manual_seed(0)
    head = ProjectionHead(HeadConfig(**heads["text"])).eval()  # spectral norm: no power step at eval
    from safetensors.torch import save_file

    save_file({f"text.{k}": v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / "heads.safetensors"))
    space = AlignedSpace.from_pretrained(ckpt, weights_dir=home)
    texts = ["a small red star on stripes", "a dog barking"]
    before = space.encode_text(texts)
    # Independent reference: tower then head, by hand.
    expected = head(space.towers["text"].encode(texts))
    torch.testing.assert_close(before, expected, rtol=0, atol=0)
    saved = space.save_pretrained(tmp_path / "b", save_towers=True)
    reloaded = AlignedSpace.from_pretrained(saved, weights_dir=tmp_path / "nowhere")  # towers travel inside
    assert torch.equal(reloaded.encode_text(texts), before)
    assert torch.equal(reloaded.encode_image([picture(5)]), space.encode_image([picture(5)]))
    config = json.loads((saved / "config.json").read_text())
    assert config["library_version"] and config["towers"]["text"]["source"] == "towers/text"


def test_output_scale_and_normalize(unclip_home, tmp_path):
    home, _ = unclip_home
    space = AlignedSpace.from_pretrained(
        write_space_config(tmp_path / "c", "stable-unclip-h", output_norm=7.5), weights_dir=home
    )
    z = space.encode_text(["one", "two words", "three little words"])
    torch.testing.assert_close(z.norm(dim=-1), torch.full((3,), 7.5))
    unit = space.encode_text(["one", "two words"], normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))
    raw_image = space.encode_image([picture(6)])
    assert not torch.allclose(raw_image.norm(), torch.tensor(7.5))  # the anchor keeps its own scale


def test_batching_gives_the_same_embeddings(unclip_home, tmp_path):
    home, _ = unclip_home
    space = AlignedSpace.from_pretrained(write_space_config(tmp_path / "d", "stable-unclip-h"), weights_dir=home)
    images = [picture(i) for i in range(5)]
    torch.testing.assert_close(
        space.encode_image(images, batch_size=2), space.encode_image(images, batch_size=5), rtol=0, atol=1e-6
    )


def test_text_errors_and_truncation(unclip_home, tmp_path):
    home, _ = unclip_home
    space = AlignedSpace.from_pretrained(write_space_config(tmp_path / "e", "stable-unclip-h"), weights_dir=home)
    with pytest.raises(GenAlignError, match="empty"):
        space.encode_text(["fine", "   "])
    with pytest.warns(UserWarning, match="truncat"):
        long = space.encode_text(["word " * 200])
    assert long.shape == (1, HIDDEN) and torch.isfinite(long).all()


def test_audio_without_head_or_tower_is_refused(unclip_home, tmp_path):
    home, _ = unclip_home
    space = AlignedSpace.from_pretrained(write_space_config(tmp_path / "f", "stable-unclip-h"), weights_dir=home)
    with pytest.raises(ConfigError, match="no audio tower loaded"):
        space.encode_audio([(np.zeros(16000, dtype=np.float32), 16000)])


# ----------------------------------------------------------------------------- typed configs (issue 15)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["towers"]["audio"].update(window_seconds="ten"),
            r"towers.audio.window_seconds .* must be a number",
        ),
        (lambda c: c.update(embedding_dim="sixty-four"), r"embedding_dim .* must be a positive integer"),
        (lambda c: c.update(heads=["audio"]), r"heads .* must be an object"),
        (lambda c: c["towers"]["audio"].update(window_second=10), r"unknown key\(s\) \['window_second'\]"),
        (lambda c: c["towers"]["text"].update(kind="clip-txt"), r"towers.text.kind .* expected one of"),
        (lambda c: c["towers"]["image"].pop("source"), r"towers.image \(open-clip-vision\) .* needs 'source'"),
        (lambda c: c["heads"]["audio"].update(in_dim="ninety-six"), r"heads.audio .* in_dim must be an integer"),
        (lambda c: c["heads"]["text"].update(depth=3), r"heads.text .*unexpected keyword.*valid keys"),
        (lambda c: c.update(output_norm=-1.0), r"output_norm .* positive number or null"),
        (lambda c: c["towers"].update(audio="beats"), r"towers.audio in .* must be an object"),
        (lambda c: c.update(text_vocabulary=["circle"]), r"text_vocabulary .* must be an object \{'words'"),
    ],
)
def test_wrongly_typed_space_configs_are_refused_with_the_key(tmp_path, edit, message):
    import shutil

    from gen_align.cli import main
    from gen_align.mini.shipped import MINI_SPACE

    space = tmp_path / "space"
    shutil.copytree(MINI_SPACE, space)
    config = json.loads((space / "config.json").read_text())
    edit(config)
    (space / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        AlignedSpace.from_pretrained(space)
    # a tower that is never built may lack its source (generate --text builds no image tower); anything else: exit 2
    expected = 0 if "needs 'source'" in message else 2
    assert main(["generate", "--space", str(space), "--text", "a star", "--out", str(tmp_path / "out")]) == expected


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_weights_file_is_a_clear_error(tmp_path, damage):
    """A truncated download or a header that claims more than the file holds, in a tower or in the heads: a
    CheckpointError naming the file's folder and the fix (the CLI's exit 2), not safetensors' bare error."""
    import shutil

    from tiny_models import tiny_audio_space

    from gen_align.errors import CheckpointError

    source = Path(tiny_audio_space(tmp_path / "ok"))
    for target in sorted(p.relative_to(source) for p in source.rglob("*.safetensors")):
        copy = tmp_path / f"{damage}-{target.parent.name}-{target.stem}"
        shutil.copytree(source, copy)
        data = (copy / target).read_bytes()
        (copy / target).write_bytes(
            data[: len(data) // 2] if damage == "truncate" else (10**12).to_bytes(8, "little") + data[8:]
        )
        with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
            AlignedSpace.from_pretrained(copy)
        assert str(copy) in str(caught.value) or str((copy / target).parent) in str(caught.value), caught.value
