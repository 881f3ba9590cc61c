"""Learning-rate schedules by name (registry): linear warmup, then cosine / one-cycle / constant."""
from __future__ import annotations

import math
from typing import Callable

import torch

from artextract.config import OptimConfig
from artextract.core.registry import Registry

# (step, total steps, warmup steps) -> LR multiplier.
SCHEDULES: Registry[Callable[[int, int, int], float]] = Registry("schedule")


def _warm(step: int, warmup: int) -> float | None:
    return (step + 1) / warmup if step < warmup else None


@SCHEDULES.register("cosine")
def _cosine(step: int, total: int, warmup: int) -> float:
    w = _warm(step, warmup)
    if w is not None:
        return w
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("onecycle")
def _onecycle(step: int, total: int, warmup: int) -> float:
    # Smith's one-cycle: ramp up from lr/25 over the warmup (30% when none is set), anneal to ~0.
    ramp = warmup or max(1, int(0.3 * total))
    if step < ramp:
        return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * step / ramp))
    t = min(1.0, (step - ramp) / max(1, total - ramp))
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("constant")
def _constant(step: int, total: int, warmup: int) -> float:
    w = _warm(step, warmup)
    return 1.0 if w is None else w


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR for ``cfg.schedule`` over ``total_steps`` with ``cfg.warmup_epochs`` of warmup."""
    fn = SCHEDULES[cfg.schedule]
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fn(s, max(total_steps, 1), warmup))
