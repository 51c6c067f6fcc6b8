"""Decoder adapters on tiny real pipeline classes saved in the hub layout and loaded like the real presets:
same pixels as the pipelines called directly, the Kandinsky zero-image negative, seeds, batching, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import HIDDEN, PRESET_PATHS, tiny_kandinsky_prior_pipeline, tiny_weights_home

import gen_align.pipelines.kandinsky as kandinsky_module
from gen_align.errors import ConfigError, EmbeddingError, GenAlignError, InputFileError, WeightsNotFoundError
from gen_align.pipelines.decoders import (
    Decoder,
    DecoderOutOfMemoryError,
    DiffusersDecoder,
    EmbeddingStats,
    inspect_decoder,
    load_decoder,
    resolve_device,
    resolve_dtype,
)
from gen_align.pipelines.kandinsky import KandinskyDecoder, zero_image_embed
from gen_align.pipelines.stable_unclip import StableUnCLIPDecoder

SD, _ = PRESET_PATHS["stable-unclip-h"]
KD, PRIOR = PRESET_PATHS["kandinsky-2.2"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tiny_weights_home(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def unclip(home):
    return load_decoder(SD, weights_dir=home, device="cpu", stats=EmbeddingStats(mean_norm=4.0), progress=False)


@pytest.fixture(scope="module")
def kandinsky(home):
    return load_decoder(KD, weights_dir=home, device="cpu", progress=False)


def pixels(images):
    return np.stack([np.asarray(im) for im in images])


def embeds(n, seed=0):
    return torch.randn(n, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 4


def test_inspect_reads_kind_and_dimension_from_json(home):
    assert inspect_decoder(SD, weights_dir=home).kind == "stable-unclip"
    info = inspect_decoder(KD, weights_dir=home)
    assert (info.kind, info.embedding_dim, info.location) == ("kandinsky-2.2", HIDDEN, str(home / KD))


def test_stable_unclip_equals_the_pipeline_called_directly(unclip):
    assert isinstance(unclip, StableUnCLIPDecoder) and isinstance(unclip, Decoder)
    assert (unclip.embedding_dim, unclip.native_size, unclip.stats.mean_norm) == (HIDDEN, 32, 4.0)
    z = embeds(2)
    ours = unclip(z, seed=11, steps=2, guidance=3.0, noise_level=5, height=16, width=16)
    theirs = unclip.pipe(
        image_embeds=z,
        prompt=[""] * 2,
        noise_level=5,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(11 + i) for i in range(2)],
        height=16,
        width=16,
    ).images
    assert len(ours) == 2 and ours[0].size == (16, 16)
    np.testing.assert_array_equal(pixels(ours), pixels(theirs))


def test_kandinsky_negative_is_the_priors_zero_image_embedding(kandinsky, home):
    prior = tiny_kandinsky_prior_pipeline()
    expected = prior.get_zero_embed()
    torch.testing.assert_close(zero_image_embed(prior.image_encoder), expected, rtol=0, atol=0)
    # Loaded from the prior in the weights dir on first use, then cached.
    torch.testing.assert_close(kandinsky.negative_embed, expected, rtol=0, atol=1e-6)
    assert kandinsky.negative_embed is kandinsky.negative_embed
    z = embeds(2, seed=1)
    ours = kandinsky(z, seed=3, steps=2)
    theirs = kandinsky.pipe(
        image_embeds=z,
        # the negative the adapter holds (equal to the prior's to 1e-6 above, not bit for bit: it was computed by
        # the prior reloaded from disk), so that a rounding boundary of the 8-bit pixels cannot flip one value
        negative_image_embeds=kandinsky.negative_embed.expand(2, -1),
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(3 + i) for i in range(2)],
        height=16,
        width=16,
    ).images
    np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert (kandinsky.default_guidance, kandinsky.native_size) == (4.0, 16)


def test_kandinsky_negative_from_a_given_encoder_skips_the_prior(home, monkeypatch):
    prior = tiny_kandinsky_prior_pipeline()
    calls = []
    monkeypatch.setattr(kandinsky_module, "load_from_source", lambda *a, **k: calls.append(a))
    decoder = KandinskyDecoder.from_pretrained(
        str(home / KD), image_encoder=prior.image_encoder, device="cpu", progress=False
    )
    torch.testing.assert_close(decoder.negative_embed, prior.get_zero_embed(), rtol=0, atol=0)
    assert calls == []
    with pytest.raises(ConfigError, match="takes 32-d"):
        KandinskyDecoder(decoder.pipe, negative_embed=torch.zeros(1, 8), progress=False)


def test_same_seed_same_pixels_and_per_image_seeds(unclip, kandinsky):
    for decoder in (unclip, kandinsky):
        z = embeds(3, seed=2)
        small = {"steps": 2, "height": 16, "width": 16}
        first = pixels(decoder(z, seed=5, **small))
        np.testing.assert_array_equal(first, pixels(decoder(z, seed=5, **small)))
        assert not np.array_equal(first[:1], pixels(decoder(z[:1], seed=6, **small)))
        # Image i has seed 5 + i whatever the batching: alone, or in chunks of 2.
        alone = pixels(decoder(z[1:2], seed=6, **small))
        chunked = pixels(decoder(z, seed=[5, 6, 7], batch_size=2, **small))
        assert np.abs(alone[0].astype(int) - first[1].astype(int)).max() <= 2
        assert np.abs(chunked.astype(int) - first.astype(int)).max() <= 2


def test_call_errors_say_what_is_wrong(unclip, kandinsky):
    with pytest.raises(EmbeddingError, match="takes 32-d image embeddings but got 16-d"):
        unclip(torch.randn(1, 16), steps=1)
    bad = embeds(1)
    bad[0, 0] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        kandinsky(bad, steps=1)
    with pytest.raises(ConfigError, match=r"noise level must be an integer in 0\.\.999"):
        unclip(embeds(1), steps=1, noise_level=1000)
    with pytest.raises(ConfigError, match="multiple of 8"):
        unclip(embeds(1), steps=1, height=30)
    with pytest.raises(ConfigError, match="one per embedding"):
        unclip(embeds(2), seed=[1], steps=1)
    with pytest.raises(ConfigError, match="steps must be an integer"):
        unclip(embeds(1), steps=0)
    with pytest.raises(ConfigError, match="unknown options"):
        kandinsky(embeds(1), steps=1, noise_level=3)


def test_out_of_memory_suggests_offload(unclip, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(unclip, "_generate", boom)
    with pytest.raises(DecoderOutOfMemoryError, match=r"try offload \(model CPU offload\), attention_slicing") as err:
        unclip(embeds(4), steps=1)
    assert "smaller num_images or batch_size" in str(err.value) and isinstance(err.value, GenAlignError)


def test_device_and_dtype_options(unclip):
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.warns(UserWarning, match="fp32"):
        assert resolve_dtype("fp16", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            StableUnCLIPDecoder(unclip.pipe, device="cpu", offload=True)


def test_bf16_on_cpu_runs(home):
    decoder = load_decoder(SD, weights_dir=home, device="cpu", dtype="bf16", progress=False, attention_slicing=True)
    assert decoder.dtype == torch.bfloat16 and decoder.describe()["dtype"] == "bf16"
    images = decoder(embeds(1), steps=1, height=16, width=24)
    assert images[0].size == (24, 16)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_loading_errors_name_the_problem(home, tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        load_decoder("stabilityai/stable-diffusion-2-1-unclip", weights_dir=tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty" / SD) in message and f"hf download {SD}" in message
    with pytest.raises(ConfigError, match="holds a KandinskyV22PriorPipeline pipeline"):
        inspect_decoder(str(home / PRIOR))
    broken = tmp_path / "broken"
    shutil.copytree(home / SD, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputFileError, match="could not be loaded"):
        load_decoder(str(broken), device="cpu")
    config = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps(config)[:-5])
    with pytest.raises(InputFileError, match="could not be loaded"):
        inspect_decoder(str(broken))


def test_base_class_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        DiffusersDecoder(None)
