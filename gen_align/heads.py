"""Projection heads: non-anchor modality features -> the anchor (image) embedding space."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from gen_align.checks import choice, integer, non_negative
from gen_align.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """``linear``: one Linear. ``mlp``: LayerNorm → Linear(in, hidden) → GELU → Dropout → Linear(hidden, out).
    ``spectral_norm`` constrains every Linear to spectral norm 1 (a Lipschitz head). ``residual``: the head computes
    x + net(x) with net's last Linear zero at initialisation, so it starts at the identity — for a tower already in
    the anchor's space (CLIP's own text tower), whose alignment training then starts from, as the paper's
    pretrained encoders do; it needs in_dim == out_dim."""

    in_dim: int
    out_dim: int
    kind: str = "mlp"
    hidden_dim: int | None = None
    layer_norm: bool = True
    spectral_norm: bool = False
    dropout: float = 0.0
    residual: bool = False

    def __post_init__(self) -> None:
        integer(self.in_dim, "head in_dim")
        integer(self.out_dim, "head out_dim")
        choice(self.kind, "head kind", HEAD_KINDS)
        if self.hidden_dim is not None:
            integer(self.hidden_dim, "head hidden_dim")
        non_negative(self.dropout, "head dropout")
        if not isinstance(self.residual, bool):
            raise ConfigError(f"head residual must be true or false, got {self.residual!r}.")
        if self.residual and self.in_dim != self.out_dim:
            raise ConfigError(
                f"a residual head starts at the identity, so it needs in_dim == out_dim; got {self.in_dim} → "
                f"{self.out_dim}. Leave residual off for this modality."
            )
        if self.residual and self.spectral_norm:
            raise ConfigError("a residual head starts with a zero last layer, which spectral_norm cannot normalise.")

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
        if config.residual:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return features + out if self.config.residual else out


class HeadSet(nn.Module):
    """The heads of a space as one module (what DDP wraps): ``{m: features}`` → ``{m: head_m(features)}``;
    modalities without a head (the anchor) pass through unchanged."""

    def __init__(self, configs: dict[str, HeadConfig]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: ProjectionHead(c) for m, c in configs.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](x) if m in self.heads else x for m, x in features.items()}
