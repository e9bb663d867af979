"""The accuracy budget: the most sensitive layers go back to float until the budget holds.

A budget is an accuracy drop (``max_drop``, with labels) and/or a fidelity floor
(``min_fidelity``: cosine, or top-1 agreement, against the input, without labels). Layers
are grouped (a compute layer with the element-wise ops after it) and ranked by the damage each
does when it alone is quantized (``sensitivity``): 1, 2, 4 … groups are sent back to float until
the budget holds, then a bisection finds the fewest that do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mcomp import evaluate, residuals
from mcomp.data import Dataset
from mcomp.errors import BadInput
from mcomp.passes.quantize import mapped_source

# When no budget is given: every whole output keeps cosine ≥ 0.98 against the input, and (with the
# default per-slice fidelity) every slice along a channel-like axis ≥ 0.95 — a slice is a smaller,
# noisier vector (a detector's class row over its anchors), and NNCF's int8 YOLOv8n scores 0.89-0.92 there.
DEFAULT_FLOOR = 0.98
DEFAULT_SLICE_FLOOR = 0.95
# With labels (a class-score output, or --metric), the default budget also bounds the accuracy drop, as
# Intel Neural Compressor's default criterion does (1 % with an evaluation function): within the cosine
# floors alone, weight-only int4 kept ddddocr's captcha CRNN 63.5 points worse on exact strings (cosine
# 0.999), and k-means basic-pitch 4.12 points worse on note F1. Read on the pass's examples, the bound is
# at least one of them. Without labels no such bound: a top-1 agreement floor would have caught the CRNN
# (93.9 % of its steps) but held int4 back from language models, whose top tokens it moves by design.
DEFAULT_MAX_DROP = 0.01


@dataclass
class Score:
    fidelity: float | None  # the figure in force: worst-slice cosine, or whole-output with --fidelity whole
    top1: float | None
    accuracy: float | None  # of the candidate, with labels
    cosine: float | None = None  # whole-output cosine (the lowest over outputs)
    worst_slice: dict | None = None  # {"output", "axis", "index", "cosine", "sqnr_db", "slices"}
    slice: float | None = None  # the worst slice's cosine (the whole cosine for outputs without slices)
    centered: float | None = None  # the lowest centered cosine of the outputs that vary (evaluate.lowest_centered)
    residual: float | None = None  # the lowest cosine of what outputs add to an input they pass on (residuals.lowest)

    @property
    def strict(self) -> float | None:
        """The worst slice's cosine, or the centered or residual cosine where lower: what the default figure
        reads (``evaluate.figure``), so the budget a pass holds is the figure its report and gates read."""
        if self.slice is None:
            return None
        return min(v for v in (self.slice, self.centered, self.residual) if v is not None)

    def to_dict(self, reference_accuracy: float | None) -> dict:
        out = {"fidelity": _r(self.fidelity), "cosine": _r(self.cosine), "top1_agreement": _r(self.top1)}
        if self.centered is not None:
            out["centered_cosine"] = _r(self.centered)
        if self.residual is not None:
            out["residual_cosine"] = _r(self.residual)
        if self.worst_slice is not None:
            out["worst_slice"] = {k: _r(v) if isinstance(v, float) else v for k, v in self.worst_slice.items()}
        if self.accuracy is not None and reference_accuracy is not None:
            out.update(accuracy=_r(self.accuracy), accuracy_drop=_r(reference_accuracy - self.accuracy))
        return out


class Evaluator:
    """Scores candidates against the reference's outputs on a fixed set of feeds; ``mode`` picks the
    fidelity figure (``slice``: the worst slice along channel-like axes; ``whole``: whole outputs)."""

    def __init__(self, reference: bytes, dataset: Dataset, providers: list[str], threads: int | None,
                 mode: str = "slice", heads: dict[str, int] | None = None, metric=None):
        self.dataset, self.heads = dataset, heads  # heads: top-1 agreement on raw logits (mcomp.heads)
        self.metric = metric  # the user's task metric (mcomp.metric.Metric): accuracy in place of top-1
        self.providers, self.threads, self.mode = providers, threads, mode
        session = evaluate.session(reference, providers, threads)
        self.names = [o.name for o in session.get_outputs()]
        self.reference = _run(session, dataset, "input")
        self.bases = residuals.bases(self.reference, dataset, [i.name for i in session.get_inputs()])
        self.axes = evaluate.slice_axes(self.reference)  # the reference's: the same for every candidate
        self.means = evaluate.centers(self.reference)  # likewise: its mean over the examples, where it varies
        self.reference_accuracy = evaluate.task_accuracy(self.reference, self.names, dataset, metric)
        self.calls = 0

    def scored_on(self) -> str:
        """The phrase " on the pass's N feeds": the pass scores its first feeds, so its figures are not the
        report's (which reads all the data)."""
        n = len(self.dataset.feeds)
        return f" on the pass's {n} feed{'' if n == 1 else 's'}"

    def score(self, candidate: onnx.ModelProto | bytes) -> Score:
        self.calls += 1
        data = candidate if isinstance(candidate, bytes) else mapped_source.as_source(candidate)
        outputs = _run(evaluate.session(data, self.providers, self.threads), self.dataset, "candidate")
        fid = evaluate.fidelity(self.reference, outputs[: len(self.names)], self.names, self.axes,
                                self.heads)["summary"]
        fid["centered_cosine"] = evaluate.lowest_centered(self.reference, outputs[: len(self.names)], self.means)
        fid["residual_cosine"] = residuals.lowest(self.reference, outputs[: len(self.names)], self.bases)
        accuracy = evaluate.task_accuracy(outputs[: len(self.names)], self.names, self.dataset, self.metric)
        return Score(evaluate.figure(fid, self.mode), fid["top1_agreement"], accuracy,
                     fid["cosine"], fid["worst_slice"], fid["slice_cosine"], fid["centered_cosine"],
                     fid["residual_cosine"])


@dataclass(frozen=True)
class Budget:
    max_drop: float | None = None
    min_fidelity: float | None = None
    metric: str = "cosine"  # or "top1"
    mode: str = "slice"  # what "cosine" means: the worst slice, or the whole outputs
    min_slice: float | None = None  # a second floor, on the worst slice (the default budget's)

    @classmethod
    def default(cls, mode: str, examples: int | None = None) -> "Budget":
        """Whole outputs ≥ ``DEFAULT_FLOOR``; with per-slice fidelity, every slice ≥ ``DEFAULT_SLICE_FLOOR``;
        with ``examples`` (labelled ones, on which the input scores above 0) an accuracy drop of at most
        ``DEFAULT_MAX_DROP`` or one example, whichever is more (on 32 examples, 1 point would allow none)."""
        drop = max(DEFAULT_MAX_DROP, 1 / examples) if examples else None
        return cls(max_drop=drop, min_fidelity=DEFAULT_FLOOR, mode="whole",
                   min_slice=DEFAULT_SLICE_FLOOR if mode == "slice" else None)

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_fidelity is not None

    def holds(self, score: Score, reference_accuracy: float | None) -> bool:
        if self.max_drop is not None and reference_accuracy is not None and score.accuracy is not None:
            if reference_accuracy - score.accuracy > self.max_drop + 1e-12:
                return False
        if self.min_fidelity is not None:
            value = score.top1 if self.metric == "top1" else self.cosine_of(score)
            if value is None and self.metric == "top1":
                value = self.cosine_of(score)  # no class-score output: cosine stands in
            if value is None or value < self.min_fidelity:
                return False
        if self.min_slice is not None and (score.strict is None or score.strict < self.min_slice):
            return False
        return True

    def cosine_of(self, score: Score) -> float | None:
        """The cosine ``min_fidelity`` bounds: the worst slice's (or the centered or residual cosine where lower:
        ``Score.strict``), or the whole outputs'."""
        return score.strict if self.mode == "slice" else score.cosine

    def cosine_floors(self, score: Score) -> list[tuple[float, float]] | None:
        """(measured, floor) for each cosine floor of the budget; None when it has none (an accuracy drop
        alone, a top-1 ``min_fidelity``) or ``score`` lacks a figure one of them reads. An accuracy drop
        beside the floors (the default budget's, with labels) is checked on each candidate all the same."""
        if self.min_fidelity is not None and self.metric != "cosine":
            return None
        floors = [(self.cosine_of(score), self.min_fidelity)] if self.min_fidelity is not None else []
        if self.min_slice is not None:
            floors.append((score.strict, self.min_slice))
        if not floors or any(value is None for value, _ in floors):
            return None
        return floors

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"accuracy drop ≤ {self.max_drop:g}")
        if self.min_fidelity is not None:
            cosine = "worst-slice (and centered, residual) cosine" if self.mode == "slice" else "cosine"
            parts.append(f"{'top-1 agreement' if self.metric == 'top1' else cosine} ≥ {self.min_fidelity:g}")
        if self.min_slice is not None:
            parts.append(f"worst-slice (and centered, residual) cosine ≥ {self.min_slice:g}")
        return " and ".join(parts) or "none"


@dataclass
class Fit:
    exclude: list[str]  # layers sent back to float, most sensitive first
    score: Score
    holds: bool
    trials: list[dict]


def fit(build, evaluator: Evaluator, budget: Budget, ranked: list[list[str]], base: set[str],
        damages: list[float] | None = None, progress=None) -> Fit:
    """The fewest of the ``ranked`` groups (most damaging first) to send back to float, on top of ``base``,
    for the budget to hold. With the groups' ``damages`` (1 − cosine when each alone is quantized), a
    cosine budget starts from the count they predict; otherwise 1, 2, 4 … groups, then a bisection.
    How many trials that takes is not known ahead, so ``progress`` hears which trial runs, not a count."""
    trials: list[dict] = []
    cache: dict[int, Score] = {}

    def excluded(k: int) -> set[str]:
        return base.union(*ranked[:k]) if k else set(base)

    def attempt(k: int) -> bool:
        if k not in cache:
            if progress is not None:
                progress(f"quantize: accuracy budget, trial {len(cache) + 1} ({k} of {len(ranked)} layer groups "
                         "in float)", 0, 1)
            cache[k] = evaluator.score(build(excluded(k)))
            trials.append({"float_groups": k, "float_nodes": len(excluded(k) - base),
                           **cache[k].to_dict(evaluator.reference_accuracy),
                           "holds": budget.holds(cache[k], evaluator.reference_accuracy)})
        return budget.holds(cache[k], evaluator.reference_accuracy)

    if attempt(0):
        return Fit([], cache[0], True, trials)
    low, high = 0, None
    for _ in range(4 if damages else 0):  # predicted counts, each re-scaled by the last measurement
        k = predict(cache[low], budget, damages, low)
        if k is None or k in cache:
            break
        if attempt(k):
            high = k
            break
        low = k
    if high is not None:  # a prediction errs by about a group (its margin; damages do not add up): fewer are
        for _ in range(2):  # tried one at a time, then bisected
            if high - 1 <= low:
                break
            if not attempt(high - 1):
                low = high - 1
                break
            high -= 1
    else:
        k = min(low + 1, len(ranked))
        while k < len(ranked) and not attempt(k):  # 1, 2, 4 … more groups until it holds
            low, k = k, min(k + max(1, k - low) * 2, len(ranked))
        if k >= len(ranked) and not attempt(len(ranked)):
            return Fit(sorted(excluded(len(ranked)) - base), cache[len(ranked)], False, trials)
        high = k
    while high - low > 1:  # bisection: holds at high, not at low
        mid = (low + high) // 2
        if attempt(mid):
            high = mid
        else:
            low = mid
    return Fit(sorted(excluded(high) - base), cache[high], True, trials)


def predict(measured: Score, budget: Budget, damages: list[float], done: int = 0) -> int | None:
    """Groups to send back for the budget's cosine floors, given ``measured`` with the first ``done`` in
    float: the remaining groups' damages, scaled to the measured loss, are assumed to add up. Each floor
    (``min_fidelity`` on cosine, the default budget's ``min_slice``) is predicted on its own and the
    largest count is kept: on PP-OCRv4 rec the default budget then took 4 trials where 1, 2, 4 …
    and a bisection took 8, at 9 s a trial. None for an accuracy or top-1 budget (damages are cosines)."""
    floors = budget.cosine_floors(measured)
    if floors is None:
        return None
    counts = [_count(value, floor, damages, done) for value, floor in floors]
    if None in counts:
        return None
    return max(max(counts), done + 1)


def _count(value: float, floor: float, damages: list[float], done: int) -> int | None:
    """The fewest of the remaining groups whose damages, scaled so that all of them add up to the measured
    loss ``1 − value``, leave a loss within ``1 − floor`` (with a little margin: damages do not add up
    exactly); ``done`` when the floor already holds."""
    if value >= floor:
        return done
    left = sum(damages[done:])
    if left <= 0:
        return None
    scale = (1.0 - value) / left
    allowed = 1.0 - floor
    for k in range(done, len(damages)):
        if left * scale <= allowed * 0.9:
            return k
        left -= damages[k]
    return len(damages)


def _run(session, dataset: Dataset, which: str):
    """The outputs on ``dataset``; where synthetic inputs are what fails, the error says what to give."""
    try:
        return evaluate.run(session, dataset, which)
    except BadInput as exc:
        hint = " (synthetic inputs: give --data or --input-shape)" if dataset.synthetic else ""
        raise BadInput(f"quantize: {exc}{hint}") from None


def _r(value):
    return None if value is None else round(float(value), 6)


def as_feeds(dataset: Dataset, limit: int) -> Dataset:
    """At most ``limit`` feeds of ``dataset`` (spread over it, labels kept)."""
    if len(dataset) <= limit:
        return dataset
    idx = np.linspace(0, len(dataset) - 1, limit).round().astype(int)
    labels = None if dataset.labels is None else [dataset.labels[i] for i in idx]
    return Dataset([dataset.feeds[i] for i in idx], labels, dataset.synthetic, dataset.source, dataset.notes)
