"""ImageBind's audio tower (facebookresearch/ImageBind), reimplemented; it loads the audio part of the official
whole-model checkpoint (``imagebind_huge.pth``).

Per 2-s clip (:mod:`gen_align.encoders.imagebind_clips` makes the 128 × 204 normalised Kaldi fbank): 16 × 16 patches
with stride 10 (12 × 19 = 228; no bias) → LayerNorm → a CLS token in front, learned positional embedding → pre-LN
blocks (``norm_1`` → attention with a learned key/value token, PyTorch's ``add_bias_kv``; ``norm_2`` → GELU MLP × 4;
LayerNorms of eps 1e-6) → LayerNorm (eps 1e-6) → the CLS token → Linear (no bias) → L2-normalise → × 20 (the fixed
logit scale, stored as its log). The audio trunk has no LayerNorm before its blocks (only the vision trunk has).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gen_align.encoders.attention_mode import SelectableAttention
from gen_align.errors import CheckpointError, ConfigError, InputDataError, InputFileError
from gen_align.module_checkpoint import read_module_config, read_module_weights, save_module
from gen_align.weights import IMAGEBIND_HINT, IMAGEBIND_URL

MAX_LOGIT_SCALE = 100.0  # LearnableLogitScaling clips exp(log_logit_scale) at this
_OFFICIAL = {  # our parameter name (prefix) -> the official one, in the whole-model state_dict
    "cls_token": "modality_preprocessors.audio.cls_token",
    "stem.weight": "modality_preprocessors.audio.rgbt_stem.proj.weight",
    "stem_norm.": "modality_preprocessors.audio.rgbt_stem.norm_layer.",
    "pos_embed": "modality_preprocessors.audio.pos_embedding_helper.pos_embed",
    "blocks.": "modality_trunks.audio.blocks.",
    "head_norm.": "modality_heads.audio.0.",
    "head_proj.": "modality_heads.audio.2.",
    "log_logit_scale": "modality_postprocessors.audio.1.log_logit_scale",
}
AUDIO_PREFIXES = tuple(f"modality_{part}.audio." for part in ("preprocessors", "trunks", "heads", "postprocessors"))


@dataclass(frozen=True)
class ImageBindAudioConfig:
    """The audio tower's geometry; the defaults are ``imagebind_huge()``'s (768-d, 12 blocks, 12 heads → 1024-d)."""

    embed_dim: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    out_embed_dim: int = 1024
    mlp_ratio: int = 4
    kernel_size: int = 16
    stride: int = 10
    num_mel_bins: int = 128
    target_len: int = 204

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ImageBind audio config {f.name} must be a positive integer, got {value!r}.")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"ImageBind audio config embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}."
            )
        if self.kernel_size > min(self.num_mel_bins, self.target_len):
            raise ConfigError(
                f"ImageBind audio config kernel_size={self.kernel_size} is larger than the "
                f"{self.num_mel_bins} × {self.target_len} fbank."
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "the ImageBind audio config") -> ImageBindAudioConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; valid: {sorted(known)}.")
        return cls(**raw)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def patches_layout(self) -> tuple[int, int]:
        """(frequency, time) patches of the stem: (12, 19) for the released geometry."""
        return tuple((n - self.kernel_size) // self.stride + 1 for n in (self.num_mel_bins, self.target_len))

    @property
    def num_tokens(self) -> int:
        """Patches + the CLS token: 229 for the released geometry."""
        freq, time = self.patches_layout
        return freq * time + 1


class BiasKVAttention(nn.Module):
    """``nn.MultiheadAttention(add_bias_kv=True)``'s computation and parameter names: a packed q/k/v projection,
    one learned key and value appended to every sequence after the projection (L + 1 keys for L queries)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.bias_k = nn.Parameter(torch.zeros(1, 1, dim))
        self.bias_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_normal_(self.bias_k)
        nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: Tensor, attention: str = "sdpa") -> Tensor:
        batch, length, dim = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        k = torch.cat([k, self.bias_k.expand(batch, 1, dim)], dim=1)
        v = torch.cat([v, self.bias_v.expand(batch, 1, dim)], dim=1)

        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        if attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # the explicit softmax(q k^T / sqrt(d)) v
            out = torch.softmax((q * q.size(-1) ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """ImageBind's ``BlockWithMasking`` without layer scale: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, cfg: ImageBindAudioConfig) -> None:
        super().__init__()
        self.attn = BiasKVAttention(cfg.embed_dim, cfg.num_heads)
        self.norm_1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim)
        self.norm_2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(self, x: Tensor, attention: str) -> Tensor:
        x = x + self.attn(self.norm_1(x), attention)
        return x + self.mlp(self.norm_2(x))


class ImageBindAudio(SelectableAttention, nn.Module):
    """The audio tower: ``(B, 1, 128, 204)`` normalised fbank clips → ``(B, out_embed_dim)`` embeddings of norm 20."""

    def __init__(self, cfg: ImageBindAudioConfig | None = None, *, attention: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg = cfg or ImageBindAudioConfig()
        dim = cfg.embed_dim
        self.stem = nn.Conv2d(1, dim, kernel_size=cfg.kernel_size, stride=cfg.stride, bias=False)
        self.stem_norm = nn.LayerNorm(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens, dim) * dim**-0.5)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_proj = nn.Linear(dim, cfg.out_embed_dim, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(20.0).log(), requires_grad=False)
        self.attention = attention

    @property
    def embedding_dim(self) -> int:
        return self.cfg.out_embed_dim

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, mel: Tensor) -> Tensor:
        expected = (1, self.cfg.num_mel_bins, self.cfg.target_len)
        if mel.dim() != 4 or tuple(mel.shape[1:]) != expected:
            raise InputDataError(f"ImageBind audio takes (B, {', '.join(map(str, expected))}) fbank clips, got "
                              f"{tuple(mel.shape)}; make them with imagebind_clips.mel_clips.")  # fmt: skip
        x = self.stem_norm(self.stem(mel).flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x, self.attention)
        return F.normalize(self.head_proj(self.head_norm(x[:, 0])), dim=-1) * self.logit_scale

    # ------------------------------------------------------------------------------------- checkpoints
    def official_state_dict(self) -> dict[str, Tensor]:
        """This tower's tensors under the official whole-model names (``modality_*.audio.*``)."""
        return {official_name(k): v for k, v in self.state_dict().items()}


def official_name(name: str) -> str:
    """Our parameter name → its name in the official whole-model state_dict."""
    for ours, theirs in _OFFICIAL.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise KeyError(name)


def config_from_checkpoint(state: Mapping[str, Tensor], *, num_heads: int = 12, stride: int = 10,
                           source: str = "the checkpoint") -> ImageBindAudioConfig:  # fmt: skip
    """The geometry read from the audio tensors' shapes; ``num_heads`` and ``stride`` leave no trace in them (the
    released 12 and 10 by default). A positional embedding of another length than the stem gives is refused."""
    try:
        cls = state[_OFFICIAL["cls_token"]]
        stem = state[_OFFICIAL["stem.weight"]]
        fc1 = state[_OFFICIAL["blocks."] + "0.mlp.fc1.weight"]
        proj = state[_OFFICIAL["head_proj."] + "weight"]
        pos = state[_OFFICIAL["pos_embed"]]
    except KeyError as err:
        raise CheckpointError(
            f"{source} has no ImageBind audio tensor {err.args[0]!r}: it is not an ImageBind whole-model state_dict "
            "(imagebind_huge.pth) or a folder saved by gen-align."
        ) from err
    prefix = re.escape(_OFFICIAL["blocks."])
    blocks = {int(m.group(1)) for k in state if (m := re.match(prefix + r"(\d+)\.", k))}
    dim = int(cls.shape[-1])
    try:
        cfg = ImageBindAudioConfig(
            embed_dim=dim, num_blocks=len(blocks), num_heads=num_heads, out_embed_dim=int(proj.shape[0]),
            mlp_ratio=int(fc1.shape[0]) // dim, kernel_size=int(stem.shape[-1]), stride=stride,
        )  # fmt: skip
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from err
    if int(pos.shape[1]) != cfg.num_tokens:
        raise CheckpointError(
            f"{source}: the audio positional embedding has {int(pos.shape[1])} tokens, but {cfg.kernel_size}-wide "
            f"patches with stride {stride} on a {cfg.num_mel_bins} × {cfg.target_len} fbank give {cfg.num_tokens}; "
            "pass the stride the checkpoint was trained with."
        )
    return cfg


def load_state(model: ImageBindAudio, state: Mapping[str, Tensor], source: str) -> ImageBindAudio:
    """Assign the audio tensors of an official whole-model state_dict: strict on the audio keys (each missing,
    unexpected or misshapen one named), every other modality ignored."""
    expected = model.official_state_dict()
    present = {k for k in state if k.startswith(AUDIO_PREFIXES)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
            for label, keys in (("missing audio keys", missing), ("unexpected audio keys", unexpected),
                                ("wrong shapes", wrong))
            if keys
        ]  # fmt: skip
        raise CheckpointError(
            f"{source} does not hold the audio tower of this config ({model.cfg.to_dict()}): {'; '.join(parts)}."
        )
    ours = {k: state[official_name(k)].float() for k in model.state_dict()}
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` of an official checkpoint, memory-mapped when the file allows it (only the
    audio tensors of the 4.5 GB ``imagebind_huge.pth`` are then read)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ImageBind checkpoint not found: {path}. To fix: {IMAGEBIND_HINT}.")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors for bad files
        raise CheckpointError(
            f"could not load {path} with torch.load(weights_only=True): {err}. The file is truncated or corrupt "
            f"(download it again: {IMAGEBIND_URL}) or not a plain tensor checkpoint; pickled code is never run."
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, Mapping) else f"a dict with keys {sorted(state)[:6]}"
        raise CheckpointError(
            f"{path} is {kind}, not a state_dict of tensors: the official imagebind_huge.pth is the plain "
            "state_dict of the whole ImageBindModel."
        )
    return state


def load_imagebind_audio(
    path: str | os.PathLike, *, num_heads: int = 12, stride: int = 10, attention: str = "sdpa"
) -> ImageBindAudio:
    """The audio tower of an official whole-model checkpoint (e.g. ``imagebind_huge.pth``), or of a folder written by
    :func:`save_imagebind_audio` (``config.json`` + ``model.safetensors``). ``num_heads``/``stride`` apply to the
    official file only (its shapes do not record them)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, attention)
    state = read_official_checkpoint(path)
    source = f"ImageBind checkpoint {path}"
    cfg = config_from_checkpoint(state, num_heads=num_heads, stride=stride, source=source)
    with torch.device("meta"):  # no random init of 86 M parameters: the checkpoint's tensors are assigned
        model = ImageBindAudio(cfg, attention=attention)
    return load_state(model, state, source)


FOLDER_FORMAT = "imagebind-audio"
_FOLDER_FIX = "save the tower again with gen_align.encoders.imagebind.save_imagebind_audio"


def save_imagebind_audio(model: ImageBindAudio, directory: str | os.PathLike) -> Path:
    """``config.json`` + ``model.safetensors`` under ``directory`` (:mod:`gen_align.module_checkpoint`), atomically."""
    return save_module(directory, model, {"format": FOLDER_FORMAT, "config": model.cfg.to_dict()})


def _load_folder(path: Path, attention: str) -> ImageBindAudio:
    what = "ImageBind audio tower"
    raw = read_module_config(path, fmt=FOLDER_FORMAT, what=what, fix=_FOLDER_FIX)
    try:
        cfg = ImageBindAudioConfig.from_dict(raw["config"], f"{path}/config.json")
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{err} ({_FOLDER_FIX})") from err
    with torch.device("meta"):
        model = ImageBindAudio(cfg, attention=attention)
    model.load_state_dict(read_module_weights(path, model, what=what, fix=_FOLDER_FIX), strict=True, assign=True)
    return model.eval()
