"""BEATs transformer backbone: the modules of microsoft/unilm ``beats/backbone.py`` with the same parameter names.

Tensors are batch-first here ((B, N, D)); the reference works time-first, which changes nothing numerically.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from gen_align.encoders.beats import BEATsConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}
_ALPHA = 32.0  # the reference scales q down by this before q·k and back up after subtracting the row max


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with old-style ``weight_norm(dim=2)``: ``weight_g`` (1, 1, K), ``weight_v``, ``bias``."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel_size // 2, groups
        std = math.sqrt(4.0 / (kernel_size * channels))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel_size) * std)
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(self.weight_v.detach(), dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> Tensor:
        norm = torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last step an even-sized 'same' convolution produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove else x


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5-style buckets: exact below ``num_buckets // 4``, log-spaced up to ``max_distance``."""
    num_buckets //= 2
    buckets = (relative > 0).long() * num_buckets
    relative = relative.abs()
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (
        torch.log(relative.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class MultiheadAttention(nn.Module):
    """Self-attention with the bucketed relative position bias and its per-query gate (``grep_linear``, ``grep_a``)."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.embed_dim, self.num_heads, self.head_dim = dim, heads, dim // heads
        self.scaling = self.head_dim**-0.5
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads) if cfg.relative_position_embedding else None
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout_module = nn.Dropout(cfg.attention_dropout)
        self.gru_rel_pos = cfg.gru_rel_pos
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def compute_bias(self, length: int) -> Tensor:
        """(H, N, N) bias: ``bias[h, i, j]`` = table[bucket(j - i), h]."""
        pos = torch.arange(length, device=self.relative_attention_bias.weight.device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None, position_bias: Tensor | None, attention: str
    ) -> tuple[Tensor, Tensor | None]:
        B, N, D = x.shape
        if self.relative_attention_bias is not None and position_bias is None:
            position_bias = self.compute_bias(N)

        def heads(t: Tensor) -> Tensor:
            return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:  # the gate reads the unscaled query
                gates = torch.sigmoid(self.grep_linear(q).view(B, self.num_heads, N, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        if attention == "sdpa":
            mask = bias
            if key_padding_mask is not None:
                pad = torch.zeros(B, 1, 1, N, dtype=q.dtype, device=q.device)
                pad = pad.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
                mask = pad if mask is None else mask + pad
            p = self.dropout_module.p if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), dropout_p=p
            )
        else:
            out = self._naive(q, k, v, bias, key_padding_mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D)), position_bias

    def _naive(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, key_padding_mask: Tensor | None) -> Tensor:
        """Explicit matmul/softmax in the reference's order of operations."""
        weights = (q * self.scaling * (1.0 / _ALPHA)) @ k.transpose(-1, -2)
        weights = (weights - weights.amax(dim=-1, keepdim=True)) * _ALPHA
        if key_padding_mask is not None:
            weights = weights.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if bias is not None:
            weights = weights + bias
        return self.dropout_module(torch.softmax(weights, dim=-1)) @ v


class TransformerSentenceEncoderLayer(nn.Module):
    """Attention + FFN block; post-LN with DeepNorm residual scaling, or pre-LN when ``layer_norm_first``."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.activation_fn = ACTIVATIONS[cfg.activation_fn]
        self.self_attn = MultiheadAttention(cfg)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.deep_norm_alpha = math.pow(2 * cfg.encoder_layers, 1 / 4) if cfg.deep_norm else 1.0

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation_fn(self.fc1(x)))))

    def forward(
        self, x: Tensor, padding_mask: Tensor | None, pos_bias: Tensor | None, attention: str
    ) -> tuple[Tensor, Tensor | None]:
        if self.layer_norm_first:
            h, pos_bias = self.self_attn(self.self_attn_layer_norm(x), padding_mask, pos_bias, attention)
            x = x + self.dropout1(h)
            return x + self._ffn(self.final_layer_norm(x)), pos_bias
        h, pos_bias = self.self_attn(x, padding_mask, pos_bias, attention)
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha + self.dropout1(h))
        return self.final_layer_norm(x * self.deep_norm_alpha + self._ffn(x)), pos_bias


class TransformerEncoder(nn.Module):
    """Conv positional embedding, then the layers; one relative-position table shared by all layers."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), SamePad(cfg.conv_pos), nn.GELU()
        )
        self.layers = nn.ModuleList(TransformerSentenceEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.relative_position_embedding:
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm_first = cfg.layer_norm_first
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout_p = cfg.dropout
        self.layerdrop = cfg.encoder_layerdrop
        self.layer_wise_gradient_decay_ratio = cfg.layer_wise_gradient_decay_ratio
        self._init_weights(cfg)

    def _init_weights(self, cfg: BEATsConfig) -> None:
        """BERT-style init (normal 0.02, zero biases), then DeepNorm's scaled Xavier init, as the reference."""
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        if cfg.deep_norm:
            beta = math.pow(8 * cfg.encoder_layers, -1 / 4)
            for layer in self.layers:
                attn = layer.self_attn
                for linear, gain in (
                    (attn.k_proj, 1.0),
                    (attn.q_proj, 1.0),
                    (attn.v_proj, beta),
                    (attn.out_proj, beta),
                ):
                    nn.init.xavier_normal_(linear.weight, gain=gain)
                for linear in (layer.fc1, layer.fc2):
                    nn.init.xavier_normal_(linear.weight, gain=beta)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, attention: str = "sdpa") -> Tensor:
        """(B, N, D) tokens, (B, N) bool mask (True = padded) -> (B, N, D) last-layer features."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout_p, training=self.training)
        pos_bias = None
        for layer in self.layers:
            if self.layer_wise_gradient_decay_ratio != 1.0 and torch.is_grad_enabled() and x.requires_grad:
                x = GradMultiply.apply(x, self.layer_wise_gradient_decay_ratio)
            if self.training and self.layerdrop > 0 and float(torch.rand(())) <= self.layerdrop:
                continue
            x, pos_bias = layer(x, padding_mask, pos_bias, attention)
        return self.layer_norm(x) if self.layer_norm_first else x
