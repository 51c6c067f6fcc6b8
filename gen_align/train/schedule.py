"""The learning-rate schedule every training loop shares: linear warm-up, then cosine decay to 0 (or constant)."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "constant")


def warmup_schedule(warmup: int, total: int, schedule: str = "cosine") -> Callable[[int], float]:
    """The LR factor of step ``step`` (for ``torch.optim.lr_scheduler.LambdaLR``): ``(step + 1) / warmup`` for the
    first ``warmup`` steps, then ``½(1 + cos(π · progress))`` over the remaining ``total − warmup`` steps, or 1
    with ``schedule="constant"``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
