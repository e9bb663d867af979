"""Learning-rate schedules: the learning rate as a pure function of training progress.

Time ``t`` is counted in epochs (fractional: updated every step), so the options mean the
same whatever the batch size. With ``T`` the epochs after warm-up and ``η₀`` the base rate:

============  ==========================================  ===========================
kind          η(t)                                        option
============  ==========================================  ===========================
constant      η₀
step          η₀ · γ^⌊t / s⌋                              γ = ``decay``, s = ``step_epochs``
exponential   η₀ · e^(−k t)                               k = ``decay``
polynomial    η₀ · (1 − t/T)^α                            α = ``power``
inverse-time  η₀ / (1 + k t)                              k = ``decay``
cosine        η_min + (η₀ − η_min) · (1 + cos(π t/T)) / 2
============  ==========================================  ===========================

Every kind is floored at ``min_lr``. Warm-up rises linearly from ``η₀ / warmup steps`` to
``η₀`` over the first ``warmup`` epochs; the schedule's clock starts after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

KINDS = ("cosine", "constant", "step", "exponential", "polynomial", "inverse-time")


def constant(t: float, total: float, base: float, **_) -> float:
    return base


def step(t: float, total: float, base: float, *, decay: float = 0.1, step_epochs: float = 10, **_) -> float:
    return base * decay ** math.floor(t / step_epochs)


def exponential(t: float, total: float, base: float, *, decay: float = 0.1, **_) -> float:
    return base * math.exp(-decay * t)


def polynomial(t: float, total: float, base: float, *, power: float = 1.0, **_) -> float:
    return base * max(0.0, 1.0 - t / total) ** power if total > 0 else base


def inverse_time(t: float, total: float, base: float, *, decay: float = 0.1, **_) -> float:
    return base / (1.0 + decay * t)


def cosine(t: float, total: float, base: float, *, min_lr: float = 0.0, **_) -> float:
    if total <= 0:
        return base
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "constant": constant, "step": step, "exponential": exponential, "polynomial": polynomial,
    "inverse-time": inverse_time, "cosine": cosine,
}


@dataclass(frozen=True)
class Schedule:
    """``Schedule(...)(step)`` is the learning rate at optimizer step ``step`` (0-based)."""

    kind: str
    base_lr: float
    epochs: float
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    decay: float = 0.1
    step_epochs: float = 10.0
    power: float = 1.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _FUNCTIONS:
            raise ValueError(f"unknown schedule {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be at least 1")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_epochs * self.steps_per_epoch)

    def __call__(self, step: int) -> float:
        warm = self.warmup_steps
        if step < warm:
            return self.base_lr * (step + 1) / warm
        t = (step - warm) / self.steps_per_epoch
        total = max(self.epochs - warm / self.steps_per_epoch, 0.0)
        lr = _FUNCTIONS[self.kind](t, total, self.base_lr, decay=self.decay, step_epochs=self.step_epochs,
                                   power=self.power, min_lr=self.min_lr)
        return max(lr, self.min_lr)


def steps_within(seconds: float, step_seconds: float, steps_per_epoch: int, epoch_overhead: float, done: int,
                 limit: int) -> int:
    """The total optimizer steps (``done`` included, at most ``limit``) that end within ``seconds``
    from now, at ``step_seconds`` a step plus ``epoch_overhead`` (validation) at each epoch's end:
    whole epochs where the current one fits, else the steps of the current epoch that fit. A
    schedule planned for this many steps ends when the time does, instead of being cut mid-way."""
    rest = steps_per_epoch - done % steps_per_epoch  # steps left in the current epoch
    current = rest * step_seconds + epoch_overhead
    if current > seconds:
        return min(limit, done + max(0, int((seconds - epoch_overhead) / step_seconds)))
    more = int((seconds - current) / (steps_per_epoch * step_seconds + epoch_overhead))
    return min(limit, done + rest + more * steps_per_epoch)
