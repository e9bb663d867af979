"""How long a distillation runs: the first steps timed, the epochs that fit a time budget planned,
the learning-rate schedule rebuilt to end with them, and the words that say so (ETA, estimate, why)."""

from __future__ import annotations

import math
import time

from mcomp.kernels.schedules import Schedule, steps_within
from mcomp.passes.distill.ddp import Comm

# The clock of time budgets and estimates (a test may put a fake one here). Monotonic and
# system-wide, so the workers that ``--nproc`` spawns read the same clock as the pass.
clock = time.perf_counter


class Pace:
    """How long the run is, and its learning-rate schedule. The first steps of the run are timed
    (``probe`` of them); then the steps that fit in the time budget are planned (all ``epochs``
    without one), the schedule is rebuilt to end with them (so a cosine completes instead of
    being cut mid-way), and progress lines get an ETA. Past the budget's deadline (the plan was
    an estimate; the machine may have slowed) the run stops at the next step."""

    def __init__(self, cfg, lr: float, steps_per_epoch: int, done: int, started: float, reserve: float,
                 overhead: float, comm: Comm) -> None:
        self.cfg, self.lr, self.spe, self.comm = cfg, lr, steps_per_epoch, comm
        self.start_step = done
        self.limit = self.total = cfg.epochs * steps_per_epoch
        self.schedule = self._schedule(cfg.epochs, cfg.warmup_epochs)
        self.started, self.reserve, self.overhead = started, reserve, overhead
        self.deadline = started + cfg.time_budget - reserve - overhead if cfg.time_budget else None
        self.probe = min(steps_per_epoch, max(3, steps_per_epoch // 10))
        self.run_steps, self.first_step_end = 0, None
        self.step_seconds: float | None = None
        self.spent_before = 0.0  # seconds from the pass's start to the first step (teacher outputs, range test)
        self.out_of_time = False

    def _schedule(self, epochs: float, warmup: float) -> Schedule:
        c = self.cfg
        return Schedule(c.schedule, self.lr, epochs, self.spe, warmup_epochs=warmup, decay=c.lr_decay,
                        step_epochs=c.lr_step_epochs, power=c.lr_power, min_lr=c.min_lr)

    @property
    def last_epoch(self) -> int:
        return math.ceil(self.total / self.spe)

    def after_step(self, step: int) -> bool:
        """Called after each optimizer step (``step`` taken in all); True: stop now, out of time."""
        self.run_steps += 1
        now = clock()
        if self.run_steps == 1:
            self.first_step_end = now
        if self.step_seconds is None and self.run_steps >= self.probe:
            # The first step pays for allocations and warm-up: timed from its end where there are others.
            span = now - self.first_step_end if self.run_steps > 1 else now - self.started
            self._plan(step, span / max(self.run_steps - 1, 1), now)
        if self.deadline is not None and step < self.total:
            self.out_of_time = self.comm.max_([float(now > self.deadline)])[0] > 0
        return self.out_of_time

    def _plan(self, step: int, step_seconds: float, now: float) -> None:
        self.step_seconds, elapsed = self.comm.max_([step_seconds, now - self.started])
        self.spent_before = elapsed - self.run_steps * self.step_seconds
        if self.cfg.time_budget is None:
            return
        left = self.cfg.time_budget - self.reserve - elapsed
        self.total = max(step, steps_within(left, self.step_seconds, self.spe, self.overhead, step, self.limit))
        if self.total < self.limit:
            planned = self.total / self.spe
            self.schedule = self._schedule(planned, min(self.cfg.warmup_epochs, planned / 4))

    @property
    def epoch_seconds(self) -> float | None:
        return None if self.step_seconds is None else self.step_seconds * self.spe + self.overhead

    def eta(self, step: int) -> str:
        if self.step_seconds is None:
            return ""
        epochs_left = self.last_epoch - math.ceil(step / self.spe) + (step % self.spe > 0)
        return f" · ≈ {duration((self.total - step) * self.step_seconds + epochs_left * self.overhead)} left"

    def estimate(self, epoch: int, seconds: float) -> str:
        """The line said once the first epoch of the run is done: its time and the run's."""
        epochs = (self.total - self.start_step) / self.spe
        return f"epoch {epoch} took {seconds:.1f} s; {epochs_text(epochs)} ≈ {duration(seconds * epochs)}"

    def report(self, state: object, resumed: int | None) -> dict:
        cfg, ran = self.cfg, state.epoch - (resumed or 0)
        unplanned = cfg.time_budget is not None and self.step_seconds is None
        planned = None if unplanned else round(self.total / self.spe, 3)
        out = {"budget_seconds": cfg.time_budget, "epochs": cfg.epochs, "planned_epochs": planned, "epochs_run": ran,
               "seconds_per_epoch_estimate": None if self.epoch_seconds is None else round(self.epoch_seconds, 3),
               # the budget shaped the result: fewer steps planned, or cut short (a cache keys such a run apart)
               "time_bound": cfg.time_budget is not None and (unplanned or self.total < self.limit
                                                              or self.out_of_time)}
        if cfg.time_budget is None:
            why = f"--epochs {cfg.epochs} (no time budget)"
        elif unplanned:
            why = (f"time budget {cfg.time_budget:g} s: spent before the first {self.probe} steps could be timed "
                   "(teacher outputs, LR range test, starting workers)")
        elif self.total >= self.limit:
            why = (f"all {cfg.epochs} epochs fit in the time budget of {cfg.time_budget:g} s "
                   f"(≈ {self.epoch_seconds:.1f} s each)")
        else:
            why = (f"time budget {cfg.time_budget:g} s: {self.spent_before:.1f} s went before training and an epoch "
                   f"takes ≈ {self.epoch_seconds:.1f} s, so {epochs_text(planned)} of {cfg.epochs} fit; the "
                   f"{cfg.schedule} schedule was planned to end with them")
        if self.out_of_time:
            why += f"; the budget ran out in epoch {state.epoch}: stopped there, the schedule cut short"
        elif state.stopped and planned is not None and state.epoch < math.ceil(planned):
            why += f"; stopped early in epoch {state.epoch} (no better validation {cfg.monitor} for {cfg.patience} " \
                   "epochs, or the loss diverged)"
        out["why"] = why
        return out


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 1.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    return f"{seconds / 3600:.1f} h"


def epochs_text(n: float) -> str:
    """1 epoch, 3 epochs, 0.25 epochs."""
    return f"{n:g} epoch" + ("" if n == 1 else "s") if n == int(n) else f"{n:.2f} epochs"
