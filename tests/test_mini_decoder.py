"""The mini pixel-space unCLIP decoder: save/inspect/load through the generic functions, per-image seeds, errors,
a session end to end, learning solid colours from one-hot codes, and resumable training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from tiny_models import HIDDEN, tiny_space

import gen_align.mini.recipes.decoder as decoder_train
from gen_align.errors import ConfigError, EmbeddingError, InputDataError
from gen_align.mini.recipes.decoder import build_unet, train_decoder, unet_config
from gen_align.mini.recipes.loop import FitSettings
from gen_align.pipelines.decoders import Decoder, EmbeddingStats, inspect_decoder, load_decoder
from gen_align.pipelines.generate import DecodeOptions, generate
from gen_align.pipelines.mini import MiniDecoder, MiniUnCLIPPipeline, mini_scheduler
from gen_align.pipelines.session import Condition, RuntimeOptions

TINY = {"block_out_channels": (8, 16), "sample_size": 16}
COLOURS = torch.tensor([[230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30]], dtype=torch.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pipe = MiniUnCLIPPipeline(unet=build_unet(HIDDEN, seed=1, **TINY), scheduler=mini_scheduler())
    path = tmp_path_factory.mktemp("mini") / "decoder"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def decoder(folder):
    return load_decoder(str(folder), device="cpu", stats=EmbeddingStats(mean_norm=3.0), progress=False)


def pixels(images):
    return np.stack([np.asarray(im) for im in images]).astype(int)


def embeds(n, seed=0):
    return torch.randn(n, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 3


def test_config_is_small_and_pixel_space():
    config = unet_config(64)
    unet = build_unet(64)
    assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (3, 3, 32)
    assert config["class_embed_type"] == "projection" and config["projection_class_embeddings_input_dim"] == 64
    assert 0.5e6 < sum(p.numel() for p in unet.parameters()) < 3e6
    assert unet_config(8, **TINY)["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D")


def test_save_inspect_load_round_trip(folder, decoder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "MiniUnCLIPPipeline" and list((folder / "unet").glob("*.safetensors"))
    info = inspect_decoder(str(folder))
    assert (info.kind, info.embedding_dim) == ("mini", HIDDEN)
    assert isinstance(decoder, MiniDecoder) and isinstance(decoder, Decoder)
    assert (decoder.embedding_dim, decoder.native_size, decoder.default_steps) == (HIDDEN, 16, 25)
    assert decoder.describe() == {"kind": "mini", "embedding_dim": HIDDEN, "dtype": "fp32"}
    z = embeds(2)
    images = decoder(z, seed=4, steps=3, guidance=2.0)
    assert [im.size for im in images] == [(16, 16)] * 2 and images[0].mode == "RGB"
    direct = decoder.pipe(
        z, num_inference_steps=3, guidance_scale=2.0, generator=[torch.Generator().manual_seed(4 + i) for i in range(2)]
    ).images
    np.testing.assert_array_equal(pixels(images), pixels(direct))
    tensor = decoder.pipe(z[:1], num_inference_steps=2, output_type="pt").images
    assert tensor.shape == (1, 3, 16, 16) and 0 <= tensor.min() and tensor.max() <= 1


def test_per_image_seeds(decoder):
    z = embeds(3, seed=2)
    first = pixels(decoder(z, seed=5, steps=3))
    np.testing.assert_array_equal(first, pixels(decoder(z, seed=5, steps=3)))
    alone = pixels(decoder(z[1:2], seed=6, steps=3))
    chunked = pixels(decoder(z, seed=[5, 6, 7], batch_size=2, steps=3))
    assert np.abs(alone[0] - first[1]).max() <= 1 and np.abs(chunked - first).max() <= 1
    assert np.abs(pixels(decoder(z[1:2], seed=9, steps=3))[0] - first[1]).mean() > 5
    ddpm = MiniUnCLIPPipeline(unet=decoder.pipe.unet, scheduler=DDPMScheduler.from_config(mini_scheduler().config))
    ddpm.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    batch = ddpm(z, num_inference_steps=3, generator=gens, output_type="np").images
    single = ddpm(z[1:2], num_inference_steps=3, generator=[torch.Generator().manual_seed(6)], output_type="np").images
    np.testing.assert_allclose(batch[1], single[0], atol=1e-4)


def test_call_errors_say_what_is_wrong(decoder):
    with pytest.raises(EmbeddingError, match=f"takes {HIDDEN}-d image embeddings but got 16-d"):
        decoder(torch.randn(1, 16), steps=1)
    bad = embeds(1)
    bad[0, 3] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        decoder(bad, steps=1)
    with pytest.raises(ConfigError, match="16x16 pixels only.*leave height/width out"):
        decoder(embeds(1), steps=1, height=32)
    with pytest.raises(ConfigError, match="unknown options"):
        decoder(embeds(1), steps=1, noise_level=3)
    with pytest.raises(ConfigError, match="--noise-level applies to the stable-unclip decoder only"):
        DecodeOptions(noise_level=2).call_kwargs("mini")
    with pytest.raises(EmbeddingError, match=r"\(B, 32\)"):
        decoder.pipe(torch.randn(2, 8))


def test_generate_command_flow_with_a_mini_decoder(folder, tmp_path):
    space = tiny_space(tmp_path / "space", output_norm=3.0)
    options = RuntimeOptions(space=str(space), decoder=str(folder), device="cpu", progress=False)
    result = generate(
        options, [Condition("text", "a red circle")], n=2, decode=DecodeOptions(steps=2), out=tmp_path / "out"
    )
    record = result.record
    assert record["decoder"]["kind"] == "mini" and (record["steps"], record["guidance"]) == (2, 4.0)
    assert record["size"] == [16, 16] and (tmp_path / "out" / "grid.png").is_file()
    assert "noise_level" not in record


def test_training_data_is_validated(tmp_path):
    settings = FitSettings(steps=1, batch_size=2, lr=1e-3)
    good = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    z = torch.zeros(4, 8)
    cases = [
        (good.float(), z, "uint8"),
        (good[:, :1], z, r"\(N, 3, S, S\)"),
        (good, z[:3], "4 images but 3 embeddings"),
        (good, z.long(), "float tensor"),
        (good, torch.full((4, 8), float("nan")), "NaN"),
    ]
    for images, codes, message in cases:
        with pytest.raises(InputDataError, match=message):
            train_decoder(images, codes, out_dir=tmp_path, settings=settings, unet_overrides=TINY)
    with pytest.raises(ConfigError, match="cond_dropout"):
        train_decoder(good, z, out_dir=tmp_path, settings=settings, cond_dropout=1.0)
    with pytest.raises(ConfigError, match="sample_size 32 differs"):
        train_decoder(good, z, out_dir=tmp_path, settings=settings, unet_overrides={"sample_size": 32})
    with pytest.raises(ConfigError, match="snr_gamma"):
        train_decoder(good, z, out_dir=tmp_path, settings=settings, snr_gamma=0.0, unet_overrides=TINY)


def cosine_snr(steps=1000, s=0.008):
    """SNR_t of the squared-cosine schedule from its definition (Nichol & Dhariwal 2021, Eq. 17), in numpy."""
    f = np.cos((np.arange(steps + 1) / steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    alphas = np.cumprod(1 - betas)
    return alphas / (1 - alphas)


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_min_snr_weights_follow_the_formula(prediction):
    noise = DDPMScheduler.from_config(mini_scheduler(prediction_type=prediction).config)
    snr = cosine_snr()
    denominator = snr + 1 if prediction == "v_prediction" else snr
    expected = np.minimum(snr, 5.0) / denominator
    np.testing.assert_allclose(decoder_train.min_snr_weights(noise, 5.0).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(decoder_train.min_snr_weights(noise, None), torch.ones(1000))


def colour_set(side=8, n=64):
    labels = torch.arange(n) % len(COLOURS)
    images = COLOURS[labels][:, :, None, None].expand(n, 3, side, side).contiguous()
    codes = torch.eye(len(COLOURS), 8) * 3.0
    return images, codes[labels], codes


def test_training_learns_the_colour_of_each_code(tmp_path):
    images, z, codes = colour_set()
    settings = FitSettings(steps=200, batch_size=16, lr=1e-2, warmup=10, ema_decay=0.9, seed=0)
    tiny = {"block_out_channels": (8, 16)}
    pipe = train_decoder(images, z, out_dir=tmp_path / "dec", settings=settings, unet_overrides=tiny, progress=False)
    assert inspect_decoder(str(tmp_path / "dec")).kind == "mini"
    pipe.set_progress_bar_config(disable=True)
    codes = codes.repeat_interleave(2, dim=0)
    generators = [torch.Generator().manual_seed(s) for s in range(len(codes))]
    out = pipe(codes, num_inference_steps=10, generator=generators, output_type="np").images
    means = torch.from_numpy(out.mean(axis=(1, 2)) * 255)
    nearest = torch.cdist(means, COLOURS.float()).argmin(dim=1)
    assert nearest.tolist() == torch.arange(len(COLOURS)).repeat_interleave(2).tolist()


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    images, z, _ = colour_set(n=8)
    settings = FitSettings(steps=6, batch_size=4, lr=1e-3, ema_decay=0.9, checkpoint_every=2, seed=3)
    kwargs = {"settings": settings, "unet_overrides": {"block_out_channels": (8, 16)}, "progress": False}
    straight = train_decoder(images, z, out_dir=tmp_path / "a", **kwargs)

    make_loss = decoder_train.make_loss
    calls = []

    def interrupted(*args, **kw):
        loss_fn = make_loss(*args, **kw)

        def wrapped(model, indices, generator):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return loss_fn(model, indices, generator)

        return wrapped

    monkeypatch.setattr(decoder_train, "make_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_decoder(images, z, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", **kwargs)
    assert (tmp_path / "ckpt" / "fit_state.pt").is_file() and not (tmp_path / "b").exists()
    resumed = train_decoder(images, z, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", **kwargs)
    assert len(calls) == 4 + 4  # stopped in step 4 (state saved after step 2), then steps 3-6 again
    reloaded = MiniUnCLIPPipeline.from_pretrained(tmp_path / "b")
    for name, tensor in straight.unet.state_dict().items():
        assert torch.equal(tensor, resumed.unet.state_dict()[name]), name
        assert torch.equal(tensor, reloaded.unet.state_dict()[name]), name


def test_a_latent_decoder_round_trips_and_decodes_through_its_autoencoder(tmp_path):
    """With an AutoencoderKL the UNet denoises 4-channel latents at a quarter of the side; the images are the
    autoencoder's decoding of the final latents divided by its scaling factor (diffusers' convention)."""
    from gen_align.mini.recipes.autoencoder import build_autoencoder

    vae = build_autoencoder(block_out_channels=(8, 8, 8), norm_num_groups=4, sample_size=16)
    vae.register_to_config(scaling_factor=0.5)
    unet = build_unet(HIDDEN, seed=1, block_out_channels=(8, 16), sample_size=4, in_channels=4, out_channels=4)
    pipe = MiniUnCLIPPipeline(unet=unet, scheduler=mini_scheduler(clip_sample=False), vae=vae)
    pipe.save_pretrained(tmp_path / "latent", safe_serialization=True)
    decoder = load_decoder(str(tmp_path / "latent"), device="cpu", stats=EmbeddingStats(mean_norm=3.0), progress=False)
    assert decoder.native_size == 16 and decoder.pipe.vae is not None
    z = embeds(2)
    images = decoder(z, seed=4, steps=2)
    assert [im.size for im in images] == [(16, 16)] * 2
    # the same steps by hand: DDIM over latents from each image's own generator, then vae.decode(x / 0.5)
    sched = mini_scheduler(clip_sample=False)
    sched.set_timesteps(2)
    x = torch.cat([torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(4 + i)) for i in range(2)])
    with torch.no_grad():
        for t in sched.timesteps:
            both = decoder.pipe.unet(
                torch.cat([x, x]), t, None, class_labels=torch.cat([torch.zeros_like(z), z])
            ).sample
            uncond, cond = both.chunk(2)
            x = sched.step(uncond + decoder.default_guidance * (cond - uncond), t, x).prev_sample
        by_hand = ((decoder.pipe.vae.decode(x / 0.5).sample.clamp(-1, 1) + 1) * 127.5).round()
    assert np.abs(pixels(images) - by_hand.permute(0, 2, 3, 1).numpy()).max() <= 1
    with pytest.raises(ConfigError, match="4-channel latents but the UNet takes 3"):
        MiniUnCLIPPipeline(unet=build_unet(HIDDEN, **TINY), scheduler=mini_scheduler(), vae=vae)


def test_the_autoencoder_trains_and_a_latent_decoder_trains_on_its_latents(tmp_path):
    """train_autoencoder: the loss falls, scaling_factor is 1 / std of the posterior means (Stable Diffusion's rule,
    recomputed here); train_decoder(vae=...) then diffuses 4-channel latents at a quarter of the side and saves a
    pipeline that draws full-size images."""
    from gen_align.mini.recipes.autoencoder import train_autoencoder

    images, z, _ = colour_set(side=16, n=8)
    arch = {"block_out_channels": (8, 8, 8), "norm_num_groups": 4}
    settings = FitSettings(steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, seed=1)
    vae = train_autoencoder(images, settings=settings, overrides=arch, progress=False)
    with torch.no_grad():
        means = vae.encode(images.float() / 127.5 - 1).latent_dist.mean
    assert means.shape[1:] == (4, 4, 4)
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(means.std()), rel=1e-5)
    pipe = train_decoder(
        images, z, out_dir=tmp_path / "latent", settings=replace(settings, ema_decay=0.9), vae=vae,
        unet_overrides={"block_out_channels": (8, 16)}, progress=False,
    )  # fmt: skip
    assert pipe.unet.config.in_channels == 4 and pipe.unet.config.sample_size == 4
    assert pipe.scheduler.config.clip_sample is False  # latents are unbounded
    reloaded = MiniUnCLIPPipeline.from_pretrained(tmp_path / "latent")
    assert reloaded.image_size == 16 and reloaded.vae.config.scaling_factor == vae.config.scaling_factor
    out = reloaded(z[:1], num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 16, 16)


def test_image_tokens_condition_the_unet_as_kandinsky_2_2(tmp_path):
    """With ``token_levels`` the embedding is also the cross-attention context, as Kandinsky 2.2's decoder has it:
    tokens = LayerNorm(reshape(W e + b, (32, C))) (written out here), attended at those levels; the class embedding
    stays. The pipeline and the training loss give the UNet exactly that context."""
    from gen_align.pipelines.mini import unet_prediction

    config = unet_config(HIDDEN, token_levels=(0,), **TINY)
    assert config["down_block_types"] == ("CrossAttnDownBlock2D", "DownBlock2D")
    assert config["up_block_types"] == ("UpBlock2D", "CrossAttnUpBlock2D")
    assert (config["encoder_hid_dim_type"], config["encoder_hid_dim"], config["cross_attention_dim"]) == (
        "image_proj", HIDDEN, 8
    )  # fmt: skip
    assert unet_config(HIDDEN, token_levels=(1,), **TINY)["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    with pytest.raises(ConfigError, match="token_levels .* level indices in 0..1"):
        unet_config(HIDDEN, token_levels=(2,), **TINY)
    unet = build_unet(HIDDEN, seed=1, token_levels=(0,), **TINY).eval()
    heads = [m.heads for m in unet.modules() if type(m).__name__ == "Attention"]
    assert heads and all(h == 1 for h in heads)  # 8- and 16-channel levels: one head each, not one per channel
    z, x, t = embeds(2), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 900])
    proj = unet.encoder_hid_proj
    linear = z @ proj.image_embeds.weight.T + proj.image_embeds.bias
    tokens = torch.nn.functional.layer_norm(linear.reshape(2, 32, 8), (8,), proj.norm.weight, proj.norm.bias)
    with torch.no_grad():
        ours = unet_prediction(unet, x, t, z)
        unet.encoder_hid_proj = None  # the same UNet given the tokens directly
        direct = unet(x, t, encoder_hidden_states=tokens, class_labels=z).sample
        other_tokens = unet(x, t, encoder_hidden_states=torch.zeros_like(tokens), class_labels=z).sample
        unet.encoder_hid_proj = proj
    assert torch.allclose(ours, direct, atol=1e-5)
    assert not torch.allclose(ours, other_tokens, atol=1e-3)  # the tokens matter
    images, codes_z, _ = colour_set(side=16, n=8)
    settings = FitSettings(steps=3, batch_size=4, lr=1e-3, ema_decay=0.9, checkpoint_every=2)
    train_decoder(
        images, codes_z, out_dir=tmp_path / "tokens", settings=settings,
        unet_overrides={"block_out_channels": (8, 16), "token_levels": (1,)}, progress=False,
    )  # fmt: skip
    reloaded = MiniUnCLIPPipeline.from_pretrained(tmp_path / "tokens")
    assert reloaded.unet.config.encoder_hid_dim_type == "image_proj"
    out = reloaded(codes_z[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 3, 16, 16) and torch.isfinite(out.images).all()


def test_a_failing_compiler_falls_back_to_eager_training_with_a_warning(tmp_path, monkeypatch):
    """train_decoder(compile=True) where torch.compile's first call fails (no C++ compiler): a RuntimeWarning says so
    and the run trains eagerly to the weights of compile=False (up to float-level gradient differences of the
    channels-last convolutions, which Adam's normalised step can turn into at most ~lr per step); the saved decoder
    loads."""
    images, z, _ = colour_set(n=8)
    settings = FitSettings(steps=3, batch_size=4, lr=1e-3, ema_decay=0.9, seed=1)
    kwargs = {"settings": settings, "unet_overrides": {"block_out_channels": (8, 16)}, "progress": False}
    eager = train_decoder(images, z, out_dir=tmp_path / "eager", **kwargs)

    def broken_compile(module):
        def run(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler found")

        return run

    monkeypatch.setattr(decoder_train.torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*C\\+\\+ compiler"):
        fallback = train_decoder(images, z, out_dir=tmp_path / "fallback", compile=True, **kwargs)
    reloaded = MiniUnCLIPPipeline.from_pretrained(tmp_path / "fallback")
    for name, tensor in eager.unet.state_dict().items():
        torch.testing.assert_close(
            fallback.unet.state_dict()[name], tensor, rtol=0, atol=2 * settings.lr * settings.steps
        )
        assert torch.equal(reloaded.unet.state_dict()[name], fallback.unet.state_dict()[name])
