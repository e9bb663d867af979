"""The accuracy budget: the most sensitive layers go back to float until the budget holds.

A budget is an accuracy drop (``max_drop``, with labels) and/or a fidelity floor
(``min_fidelity``: cosine, or top-1 agreement, against the input, without labels). Layers
are tried in the order of the noise they add (``sensitivity``): 1, 2, 4 … of them are sent
back to float until the budget holds, then a bisection finds the fewest that do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mcomp import metrics
from mcomp.data import Dataset

DEFAULT_FLOOR = 0.99  # cosine against the input, when no budget is given


@dataclass
class Score:
    cosine: float | None
    top1: float | None
    accuracy: float | None  # of the candidate, with labels

    def to_dict(self, reference_accuracy: float | None) -> dict:
        out = {"cosine": _r(self.cosine), "top1_agreement": _r(self.top1)}
        if self.accuracy is not None and reference_accuracy is not None:
            out.update(accuracy=_r(self.accuracy), accuracy_drop=_r(reference_accuracy - self.accuracy))
        return out


class Evaluator:
    """Scores candidates against the reference's outputs on a fixed set of feeds."""

    def __init__(self, reference: bytes, dataset: Dataset, providers: list[str], threads: int | None):
        from mcomp.session import make_session

        self.dataset = dataset
        self.providers, self.threads = providers, threads
        session = make_session(reference, providers, threads)
        self.names = [o.name for o in session.get_outputs()]
        self.reference = metrics.run_all(session, dataset)
        self.reference_accuracy = metrics.accuracy(self.reference, dataset)
        self.calls = 0

    def score(self, candidate: onnx.ModelProto | bytes) -> Score:
        from mcomp.session import make_session

        self.calls += 1
        data = candidate if isinstance(candidate, bytes) else candidate.SerializeToString()
        outputs = metrics.run_all(make_session(data, self.providers, self.threads), self.dataset)
        fid = metrics.fidelity(self.reference, outputs[: len(self.names)], self.names)["summary"]
        return Score(fid["cosine"], fid["top1_agreement"], metrics.accuracy(outputs, self.dataset))


@dataclass(frozen=True)
class Budget:
    max_drop: float | None = None
    min_fidelity: float | None = None
    metric: str = "cosine"  # or "top1"

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_fidelity is not None

    def holds(self, score: Score, reference_accuracy: float | None) -> bool:
        if self.max_drop is not None and reference_accuracy is not None and score.accuracy is not None:
            if reference_accuracy - score.accuracy > self.max_drop + 1e-12:
                return False
        if self.min_fidelity is not None:
            value = score.top1 if self.metric == "top1" else score.cosine
            if value is None and self.metric == "top1":
                value = score.cosine  # no classifier-shaped output: cosine stands in
            if value is None or value < self.min_fidelity:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"accuracy drop ≤ {self.max_drop:g}")
        if self.min_fidelity is not None:
            parts.append(f"{'top-1 agreement' if self.metric == 'top1' else 'cosine'} ≥ {self.min_fidelity:g}")
        return " and ".join(parts) or "none"


@dataclass
class Fit:
    exclude: list[str]  # layers sent back to float, most sensitive first
    score: Score
    holds: bool
    trials: list[dict]


def fit(build, evaluator: Evaluator, budget: Budget, ranked: list[str], base: set[str]) -> Fit:
    """The fewest of ``ranked`` (most sensitive first) to exclude, on top of ``base``, for the budget to hold."""
    trials: list[dict] = []
    cache: dict[int, Score] = {}

    def attempt(k: int) -> bool:
        if k not in cache:
            cache[k] = evaluator.score(build(base | set(ranked[:k])))
            trials.append({"float_layers": k, **cache[k].to_dict(evaluator.reference_accuracy),
                           "holds": budget.holds(cache[k], evaluator.reference_accuracy)})
        return budget.holds(cache[k], evaluator.reference_accuracy)

    if attempt(0):
        return Fit([], cache[0], True, trials)
    low, k = 0, 1
    while k < len(ranked) and not attempt(k):  # 1, 2, 4 … until it holds
        low, k = k, min(2 * k, len(ranked))
    if k >= len(ranked) and not attempt(len(ranked)):
        return Fit(list(ranked), cache[len(ranked)], False, trials)
    high = k
    while high - low > 1:  # bisection: holds at high, not at low
        mid = (low + high) // 2
        if attempt(mid):
            high = mid
        else:
            low = mid
    return Fit(list(ranked[:high]), cache[high], True, trials)


def _r(value):
    return None if value is None else round(float(value), 6)


def as_feeds(dataset: Dataset, limit: int) -> Dataset:
    """At most ``limit`` feeds of ``dataset`` (spread over it, labels kept)."""
    if len(dataset) <= limit:
        return dataset
    idx = np.linspace(0, len(dataset) - 1, limit).round().astype(int)
    labels = None if dataset.labels is None else [dataset.labels[i] for i in idx]
    return Dataset([dataset.feeds[i] for i in idx], labels, dataset.synthetic, dataset.source, dataset.notes)
