"""Projection heads: non-anchor modality features -> the anchor (image) embedding space."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from gen_align.checks import choice, integer, non_negative

HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """``linear``: one Linear. ``mlp``: LayerNorm → Linear(in, hidden) → GELU → Dropout → Linear(hidden, out).
    ``spectral_norm`` constrains every Linear to spectral norm 1 (a Lipschitz head)."""

    in_dim: int
    out_dim: int
    kind: str = "mlp"
    hidden_dim: int | None = None
    layer_norm: bool = True
    spectral_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        integer(self.in_dim, "head in_dim")
        integer(self.out_dim, "head out_dim")
        choice(self.kind, "head kind", HEAD_KINDS)
        if self.hidden_dim is not None:
            integer(self.hidden_dim, "head hidden_dim")
        non_negative(self.dropout, "head dropout")

    def to_dict(self) -> dict:
        return asdict(self)


class ProjectionHead(nn.Module):
    """Maps ``(B, in_dim)`` features of one modality to ``(B, out_dim)`` in the anchor space."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config

        def linear(i: int, o: int) -> nn.Module:
            layer = nn.Linear(i, o)
            return _spectral_norm(layer) if config.spectral_norm else layer

        if config.kind == "linear":
            layers = [nn.LayerNorm(config.in_dim)] if config.layer_norm else []
            layers.append(linear(config.in_dim, config.out_dim))
        else:
            hidden = config.hidden_dim or max(config.in_dim, config.out_dim)
            layers = [nn.LayerNorm(config.in_dim)] if config.layer_norm else []
            layers += [
                linear(config.in_dim, hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                linear(hidden, config.out_dim),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class HeadSet(nn.Module):
    """The heads of a space as one module (what DDP wraps): ``{m: features}`` → ``{m: head_m(features)}``;
    modalities without a head (the anchor) pass through unchanged."""

    def __init__(self, configs: dict[str, HeadConfig]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: ProjectionHead(c) for m, c in configs.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](x) if m in self.heads else x for m, x in features.items()}
