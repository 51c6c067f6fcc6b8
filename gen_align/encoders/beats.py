"""BEATs audio encoder (microsoft/unilm ``beats/``), reimplemented with the official state-dict names.

``load_beats(path)`` reads an official checkpoint (``{'cfg': dict, 'model': state_dict}``) with
``torch.load(weights_only=True)`` and strict key matching. ``BEATs.extract_features`` reproduces the reference's
batched output, padding-mask quirks included; for clip embeddings that do not depend on batch-mates use
:class:`gen_align.encoders.beats_clips.BEATsEncoder`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

from gen_align.encoders.attention_mode import SelectableAttention
from gen_align.encoders.beats_backbone import ACTIVATIONS, TransformerEncoder
from gen_align.errors import CheckpointError, ConfigError, InputDataError, InputFileError

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
_FRAME_LENGTH, _FRAME_SHIFT = 400, 160  # samples at 16 kHz (25 ms / 10 ms)


@dataclass
class BEATsConfig:
    """BEATs hyperparameters, named as in the official cfg dict.

    Defaults are the cfg of the released BEATs_iter3+ AS2M checkpoint (768-d, 12 layers, DeepNorm, gated
    relative positions); ``predictor_*`` default to the official class defaults (fine-tuned checkpoints only).
    """

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 0.6
    layer_norm_first: bool = False
    deep_norm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        """Build from an official cfg dict; unknown keys are ignored, known ones validated."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"a BEATs cfg must be a dict, got {type(cfg).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The cfg dict as stored in official checkpoints."""
        return asdict(self)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        positive = ("input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim")
        positive += ("encoder_attention_heads", "conv_pos", "conv_pos_groups", "num_buckets", "predictor_class")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"BEATs cfg {name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"BEATs cfg {name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.predictor_dropout <= 1.0:
            raise ConfigError(f"BEATs cfg predictor_dropout must be in [0, 1], got {self.predictor_dropout}")
        if self.input_patch_size > NUM_MEL_BINS:
            raise ConfigError(f"BEATs cfg input_patch_size must be <= {NUM_MEL_BINS}, got {self.input_patch_size}")
        dim = self.encoder_embed_dim
        for name in ("encoder_attention_heads", "conv_pos_groups"):
            if dim % getattr(self, name):
                raise ConfigError(
                    f"BEATs cfg encoder_embed_dim={dim} must be divisible by {name}={getattr(self, name)}"
                )
        if self.activation_fn not in ACTIVATIONS:
            raise ConfigError(
                f"BEATs cfg activation_fn={self.activation_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ConfigError("BEATs cfg deep_norm and layer_norm_first cannot both be True (DeepNorm is post-LN)")
        if self.relative_position_embedding and (self.num_buckets < 8 or self.max_distance <= self.num_buckets // 4):
            raise ConfigError(
                f"BEATs cfg needs num_buckets >= 8 and max_distance > num_buckets // 4 for relative positions, "
                f"got num_buckets={self.num_buckets}, max_distance={self.max_distance}"
            )


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Check one cfg value against its annotated type (bool accepts 0/1; float accepts int)."""
    ok = {
        "bool": isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        raise ConfigError(f"BEATs cfg {name} must be {kind}, got {value!r} ({type(value).__name__})")
    return {"bool": bool, "int": int, "float": float, "str": str}[kind](value)


def compute_fbank(waveform: Tensor, mean: float = FBANK_MEAN, std: float = FBANK_STD) -> Tensor:
    """(T,) float waveform in [-1, 1] at 16 kHz -> (frames, 128) normalised Kaldi fbank, as ``BEATs.preprocess``."""
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0) * 2**15,
        num_mel_bins=NUM_MEL_BINS,
        sample_frequency=SAMPLE_RATE,
        frame_length=25,
        frame_shift=10,
    )
    return (fbank - mean) / (2 * std)


def num_frames(num_samples: int) -> int:
    """Kaldi frames (snip_edges) for a clip of ``num_samples``: 25 ms windows every 10 ms."""
    return 0 if num_samples < _FRAME_LENGTH else 1 + (num_samples - _FRAME_LENGTH) // _FRAME_SHIFT


def reshape_padding_mask(mask: Tensor, size: int) -> Tensor:
    """The reference's mask downsampling: drop the last ``len % size`` steps, group into ``size`` blocks, all()."""
    extra = mask.size(1) % size
    if extra > 0:
        mask = mask[:, :-extra]
    return mask.view(mask.size(0), size, -1).all(-1)


class BEATs(SelectableAttention, nn.Module):
    """BEATs: fbank -> 16×16 patches -> LayerNorm -> ``post_extract_proj`` -> transformer (-> predictor)."""

    def __init__(self, cfg: BEATsConfig | Mapping[str, Any] | None = None, *, attention: str = "sdpa") -> None:
        super().__init__()
        cfg = BEATsConfig() if cfg is None else cfg
        self.cfg = cfg if isinstance(cfg, BEATsConfig) else BEATsConfig.from_dict(cfg)
        cfg = self.cfg
        self.embed = cfg.embed_dim
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None
        )
        self.input_patch_size = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, self.embed, kernel_size=self.input_patch_size, stride=self.input_patch_size, bias=cfg.conv_bias
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(self.embed)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None
        self.attention = attention
        self.label_dict: dict | None = None

    @property
    def embedding_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    @property
    def freq_patches(self) -> int:
        """Tokens per time patch (8 for 128 mel bins and 16×16 patches)."""
        return NUM_MEL_BINS // self.input_patch_size

    @property
    def min_samples(self) -> int:
        """Shortest waveform (16 kHz samples) that yields one time patch: 2800 (0.175 s) for 16×16 patches."""
        return _FRAME_LENGTH + (self.input_patch_size - 1) * _FRAME_SHIFT

    def num_tokens(self, frames: int) -> int:
        return (frames // self.input_patch_size) * self.freq_patches

    def preprocess(self, source: Tensor, fbank_mean: float = FBANK_MEAN, fbank_std: float = FBANK_STD) -> Tensor:
        """(B, T) waveforms -> (B, frames, 128) normalised fbank (on the padded waveforms, as the reference)."""
        return torch.stack([compute_fbank(w, fbank_mean, fbank_std) for w in source])

    def encode_fbank(self, fbank: Tensor, token_padding_mask: Tensor | None = None) -> Tensor:
        """(B, frames, 128) fbank, (B, N) bool token mask (True = padded) -> (B, N, D) encoder output.

        Tokens are time-major: token ``t * freq_patches + f`` is time patch t, frequency patch f.
        """
        x = self.patch_embedding(fbank.unsqueeze(1))
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x), padding_mask=token_padding_mask, attention=self.attention)

    def require_predictor(self) -> None:
        """Raise a ``ConfigError`` that explains what to load when this model has no predictor."""
        if self.predictor is None:
            raise ConfigError(
                "this BEATs model has no predictor (cfg finetuned_model=False); load a fine-tuned checkpoint "
                "(e.g. BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt) for class probabilities"
            )

    def predict_proba(self, features: Tensor, token_padding_mask: Tensor | None = None) -> Tensor:
        """(B, N, D) encoder output -> (B, C) sigmoid of the predictor logits averaged over unpadded tokens."""
        self.require_predictor()
        logits = self.predictor(self.predictor_dropout(features))
        if token_padding_mask is not None and token_padding_mask.any():
            logits = logits.masked_fill(token_padding_mask.unsqueeze(-1), 0.0).sum(dim=1)
            logits = logits / (~token_padding_mask).sum(dim=1, keepdim=True)
        else:
            logits = logits.mean(dim=1)
        return torch.sigmoid(logits)

    def extract_features(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        fbank_mean: float = FBANK_MEAN,
        fbank_std: float = FBANK_STD,
    ) -> tuple[Tensor, Tensor | None]:
        """The reference's batched call: (B, T) waveforms in [-1, 1], (B, T) bool mask (True = padded) ->
        ((B, N, D) features, or (B, C) probabilities for a fine-tuned model; (B, N) token mask or None).

        The token mask is made by the reference's reshapes (not by time patch), and padded waveforms enter the
        fbank: outputs for padded items differ from solo runs. Use ``BEATsEncoder`` for batch-independent results.
        """
        if not isinstance(source, Tensor) or source.dim() != 2 or not source.is_floating_point():
            raise InputDataError(f"source must be a (B, T) float tensor, got {_describe(source)}")
        if padding_mask is not None and (not isinstance(padding_mask, Tensor) or padding_mask.shape != source.shape):
            raise InputDataError(
                f"padding_mask must be a bool tensor of the shape of source {tuple(source.shape)}, "
                f"got {_describe(padding_mask)}"
            )
        fbank = self.preprocess(source.float(), fbank_mean=fbank_mean, fbank_std=fbank_std)
        token_mask = None
        if padding_mask is not None:
            padding_mask = padding_mask.bool()
            frame_mask = reshape_padding_mask(padding_mask, fbank.size(1))
            token_mask = reshape_padding_mask(frame_mask, self.num_tokens(fbank.size(1)))
        features = self.encode_fbank(fbank, token_mask)
        if self.predictor is not None:
            return self.predict_proba(features, token_mask), token_mask
        return features, token_mask

    forward = extract_features


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def save_beats(model: BEATs, path: str | os.PathLike) -> Path:
    """Write ``model`` in the official format ``{'cfg': dict, 'model': state_dict}`` (+ ``label_dict``)."""
    checkpoint: dict[str, Any] = {"cfg": model.cfg.to_dict(), "model": model.state_dict()}
    if model.label_dict is not None:
        checkpoint["label_dict"] = model.label_dict
    path = Path(path)
    torch.save(checkpoint, path)
    return path


def _read_checkpoint(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise InputFileError(
            f"BEATs checkpoint not found: {path}. Download an official checkpoint (e.g. BEATs_iter3_plus_AS2M.pt, "
            "linked from the microsoft/unilm beats README) and pass its path."
        )
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise InputFileError(f"could not read BEATs checkpoint {path}: {err.strerror or err}") from err
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors for bad files
        raise CheckpointError(
            f"could not load {path} as a BEATs checkpoint with torch.load(weights_only=True): {err}. "
            "The file is corrupt or truncated (download it again), not a plain tensor checkpoint, or map_location "
            "names a device that is not available."
        ) from err


def _check_state_dict(model: BEATs, state: Any, source: str) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: 'model' must be a state dict, got {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != v.shape)
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        ]
        raise CheckpointError(
            f"{source} does not match its cfg: {'; '.join(parts)}. It is not a BEATs checkpoint of the official "
            "microsoft/unilm format, or its cfg is for another variant (pretrained vs fine-tuned, size)."
        )


def load_beats(
    path_or_checkpoint: str | os.PathLike | Mapping[str, Any], map_location: Any = "cpu", *, attention: str = "sdpa"
) -> BEATs:
    """Load an official BEATs checkpoint (path or the loaded dict) into an eval-mode :class:`BEATs`.

    Raises ``InputFileError`` for a missing file and ``CheckpointError`` for a corrupt file, a dict without
    ``'cfg'``/``'model'``, an invalid cfg, or state-dict keys/shapes that do not match the cfg.
    """
    if isinstance(path_or_checkpoint, Mapping):  # its tensors are copied, not shared with the model
        checkpoint, source, copy = path_or_checkpoint, "the BEATs checkpoint dict", True
    else:
        path = Path(path_or_checkpoint)
        checkpoint, source, copy = _read_checkpoint(path, map_location), f"BEATs checkpoint {path}", False
    if not isinstance(checkpoint, Mapping) or "cfg" not in checkpoint or "model" not in checkpoint:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{source} is not a BEATs checkpoint of the official format: expected a dict with 'cfg' and 'model', "
            f"found {found}"
        )
    try:
        cfg = BEATsConfig.from_dict(checkpoint["cfg"])
    except ConfigError as err:
        raise CheckpointError(f"{source} has an invalid cfg: {err}") from err
    with torch.device("meta"):  # no random init: the checkpoint's tensors are assigned below
        model = BEATs(cfg, attention=attention)
    _check_state_dict(model, checkpoint["model"], source)
    state = {k: v.clone() for k, v in checkpoint["model"].items()} if copy else checkpoint["model"]
    model.load_state_dict(state, strict=True, assign=True)
    model.label_dict = checkpoint.get("label_dict")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.float().eval()
