"""The attention switch of our transformer towers: SDPA, or the explicit softmax the reference code computes."""

from __future__ import annotations

from gen_align.errors import ConfigError

ATTENTION_MODES = ("sdpa", "naive")


class SelectableAttention:
    """``model.attention = "sdpa"`` runs ``F.scaled_dot_product_attention``; ``"naive"`` the explicit
    softmax(q kᵀ / √d) v, in the reference's order of operations (for checks and the benchmark)."""

    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, mode: str) -> None:
        if mode not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self._attention = mode
