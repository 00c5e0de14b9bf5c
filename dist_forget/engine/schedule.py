"""Learning rate per step: linear warmup, then cosine / linear decay to min_lr_ratio·lr, or constant.

A pure function of the step, so a resumed run needs no scheduler state to get the same rates.
"""

from __future__ import annotations

import math

from dist_forget.engine.config import ScheduleConfig


def lr_at(step: int, peak: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.warmup and step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    if cfg.kind == "constant":
        return peak
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = peak * cfg.min_lr_ratio
    if cfg.kind == "linear":
        return peak - (peak - floor) * progress
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
