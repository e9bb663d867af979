"""One trial of ``mcomp auto``: a pipeline drawn from the space, run and measured exactly as
``mcomp run`` measures it (accuracy on the evaluation data with labels, else fidelity against
the input; latency interleaved against the input with its A/A band; size and MACs).

Steps come from the study folder's step cache when an earlier trial ran the same prefix.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

OBJECTIVES = ("latency", "size", "macs")


@dataclass(frozen=True)
class Settings:
    """What every worker needs to run trials; plain values, so it crosses to worker processes."""

    model: str
    train: str
    evaluation: str | None
    folder: str  # the study folder: step cache, trial models
    objective: str = "latency"
    max_drop: float | None = None  # accuracy budget (fraction: 0.01 = one point); needs labels
    min_fidelity: float | None = None  # or a fidelity floor (worst-slice cosine)
    fidelity: str = "slice"
    provider: str = "auto"
    threads: int | None = None
    input_shape: dict | None = None
    runs: int = 30
    seed: int = 0
    arch: str | None = None
    trust_checkpoint: bool = False
    metric: str | None = None  # file.py:function scoring outputs against labels, in place of top-1 accuracy

    @property
    def budget(self) -> tuple[str, float]:
        if self.max_drop is not None:
            return "max_drop", self.max_drop
        return "min_fidelity", self.min_fidelity if self.min_fidelity is not None else 0.99


@dataclass
class Measured:
    """A trial's figures. ``loss`` is what the budget bounds (accuracy points lost, or 1 − fidelity)."""

    loss: float
    objective: float  # the objective's ratio to the input (latency, size or MACs): lower is better
    accuracy: float | None
    accuracy_input: float | None
    fidelity: float | None
    latency_ratio: float | None
    latency_band: float | None  # relative half-width of the A/A band: ratios closer than this are a tie
    latency_ms: float | None
    size_ratio: float | None
    macs_ratio: float | None
    parameters_ratio: float | None
    seconds: float
    cached_steps: int = 0

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Stopped(Exception):
    """Raised from a training pass's epoch hook to stop a trial that is clearly worse."""


class OutOfTime(BaseException):
    """Raised from a pass's progress report once the search's time budget has run out. Not an
    ``Exception``: a pass that catches any failure of a library it calls (the quantizer's fallback
    retries the nodes onnxruntime's quantizer fails on) must not take the clock for one."""


# Steps that change what the model computes, so that a distillation after them has something to win back.
CHANGES_THE_STUDENT = ("prune", "quantize")


def without_idle_distill(steps: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The steps less a distillation that nothing before it changed: its student would be the input
    itself, which it can fit no better than it already does, while it costs the longest step of the
    trial (benchmarks/auto.py on MNIST: 1–3 minutes each, three of the first eight trials)."""
    out, changed = [], False
    for name, options in steps:
        if name == "distill" and not changed:
            continue
        changed = changed or name in CHANGES_THE_STUDENT
        out.append((name, options))
    return out


@dataclass(frozen=True)
class LossUnits:
    """A trial's loss as people read the budget: accuracy points dropped (``max_drop``), or
    1 − fidelity. The table once printed a bare "loss 0.0037" under lines reading "-0.37 pts"."""

    title: str  # a column's heading
    scale: float
    digits: int
    suffix: str = ""

    def cell(self, loss) -> str:
        return f"{loss * self.scale:.{self.digits}f}" if isinstance(loss, (int, float)) else ""

    def phrase(self, loss) -> str:
        return f"{self.title.split(' (')[0]} {self.cell(loss)}{self.suffix}"


def loss_units(budget_kind: str | None) -> LossUnits:
    if budget_kind == "max_drop":
        return LossUnits("drop (pts)", 100.0, 2, " pts")
    return LossUnits("1 − fidelity", 1.0, 4)


def for_objective(steps: list[tuple[str, dict]], objective: str) -> list[tuple[str, dict]]:
    """The steps as the objective needs them. Asked for the smallest model, an int8 quantization
    (static, dynamic) runs without its latency guard, unless the space sets ``latency_guard``: the
    guard keeps int8 only where it runs faster, so a size search never saw the int8 model where int8
    does not pay (PP-OCRv4 rec: static int8 at ×0.93–0.97 of the input's latency, inside the noise,
    declined in a trial; half the size). The trial still measures its latency."""
    if objective != "size":
        return steps
    from mcomp import registry
    from mcomp.passes.quantize import schemes

    out = []
    for name, options in steps:
        if name == "quantize" and "latency_guard" not in options:
            mode = options.get("mode", registry.get("quantize").Config().mode)
            if not schemes.get(mode).slowdown_bounded:  # weight-only's slowdown bound stays
                options = {**options, "latency_guard": False}
        out.append((name, options))
    return out


def pipeline_for(settings: Settings, steps: list[tuple[str, dict]], *, latency: bool = True):
    """The trial's pipeline: what ``--save-pipeline`` writes and ``mcomp run`` reproduces."""
    from mcomp.pipeline_spec import DataRoles, Measure, Pipeline, parse_step

    roles = DataRoles(calibration=settings.train, training=settings.train,
                      evaluation=settings.evaluation or settings.train)
    return Pipeline(model=settings.model, data=roles, steps=[parse_step(n, o) for n, o in steps],
                    provider=settings.provider, threads=settings.threads, seed=settings.seed,
                    input_shape=settings.input_shape,
                    measure=Measure(runs=settings.runs, latency=latency, fidelity=settings.fidelity,
                                    metric=settings.metric))


def run(settings: Settings, steps: list[tuple[str, dict]], output: str,
        on_epoch: Callable[[dict], None] | None = None, cache: bool = True,
        before_step: Callable[[str], None] | None = None,
        during_step: Callable[[str], None] | None = None,
        step_time: Callable[[str], float | None] | None = None,
        progress: Callable[[str, int, int], None] | None = None, latency: bool = True,
        side_by_side: tuple[tuple[str, str], ...] = ()) -> tuple[Measured, dict]:
    """Runs the steps on the input, writes the model to ``output`` and returns (figures, run report).
    ``on_epoch`` and ``before_step`` may raise ``Stopped`` to end the trial, ``during_step`` ``OutOfTime``;
    ``step_time(step)``: the seconds a step with a time budget may take (``RunRequest.step_time``).
    ``latency`` false: not timed (its objective is then infinite where it is latency); ``side_by_side``:
    (label, path) of models timed in the same rounds (``RunRequest.side_by_side``)."""
    from mcomp import model as model_io
    from mcomp.pipeline import RunRequest, execute
    from mcomp.step_cache import StepCache

    started = time.perf_counter()
    pipeline = pipeline_for(settings, steps, latency=latency)
    shapes = {k: tuple(v) for k, v in (settings.input_shape or {}).items()} or None
    load = model_io.LoadOptions(settings.arch, settings.trust_checkpoint, shapes)
    steps_cache = StepCache(Path(settings.folder) / "cache") if cache else None
    outcome = execute(pipeline, RunRequest(settings.model, output, load, "mcomp auto (trial)", cache=steps_cache,
                                           on_epoch=on_epoch, before_step=before_step,
                                           during_step=during_step, step_time=step_time, side_by_side=side_by_side,
                                           progress=progress or (lambda description, done, total: None)))
    measured = measure(settings, outcome.report, time.perf_counter() - started)
    measured.cached_steps = sum(1 for s in outcome.report["steps"] if s.get("cached"))
    return measured, outcome.report


def as_run(steps: list[tuple[str, dict]], doc: dict) -> list[tuple[str, dict]]:
    """The steps with the options a time-bound step ran with (its time budget): the trial's record, what
    ``--save-pipeline`` writes, and the key under which the step cache holds its result."""
    records = doc.get("steps") or [{}] * len(steps)
    return [(name, {**options, "time_budget": record["options"]["time_budget"]}) if record.get("time_bound")
            else (name, options) for (name, options), record in zip(steps, records)]


def measure(settings: Settings, doc: dict, seconds: float) -> Measured:
    """The trial's figures from its run report."""
    from mcomp import evaluate

    accuracy = doc.get("accuracy") or {}
    fidelity = evaluate.figure(doc["fidelity"]["summary"], settings.fidelity)
    latency = doc.get("latency") or {}
    band = tie_band(latency.get("noise_floor"), settings.runs)
    before, after = doc["input"], doc["output"]
    counted = before.get("macs") and not before.get("macs_unknown") and not after.get("macs_unknown")
    macs = after["macs"] / before["macs"] if counted else None  # fused contrib ops are not counted: no ratio
    if settings.max_drop is not None:
        loss = accuracy["drop"] if accuracy.get("known") else float("inf")
    else:
        loss = 1 - fidelity if fidelity is not None else float("inf")
    ratios = {"latency": latency.get("ratio"), "size": doc.get("size_ratio"), "macs": macs}
    objective = ratios[settings.objective]
    return Measured(
        loss=float(loss), objective=float(objective) if objective is not None else float("inf"),
        accuracy=accuracy.get("candidate"), accuracy_input=accuracy.get("reference"), fidelity=fidelity,
        latency_ratio=latency.get("ratio"), latency_band=band,
        latency_ms=(latency.get("candidate") or {}).get("p50_ms"), size_ratio=doc.get("size_ratio"),
        macs_ratio=macs, parameters_ratio=after["parameters"] / before["parameters"] if before.get("parameters") else None,
        seconds=round(seconds, 3))


def tie_band(floor: dict | None, runs: int) -> float | None:
    """How far apart two latency ratios of this trial must be to differ: the larger of how far the
    input timed against itself reads from 1 at the median, and the spread of its per-round ratios
    (p10..p90) shrunk by √runs, as the median of ``runs`` rounds varies far less than one round."""
    if not floor:
        return None
    spread = (floor.get("p90", 1) - floor.get("p10", 1)) / 2
    return max(abs(floor.get("median", 1) - 1), spread / max(1, runs) ** 0.5)


def budget_met(settings: Settings, measured: Measured) -> bool:
    kind, value = settings.budget
    limit = value if kind == "max_drop" else 1 - value
    return measured.loss <= limit + 1e-12
