"""The Pareto front of a study and the model it chooses, with latency noise taken seriously.

Two latency ratios closer than the A/A band (the input timed against itself) are a tie: on a
busy machine ×0.62 and ×0.66 may be the same model twice, and a front that ranks them invents a
winner. So a point beats another on the objective only when it is lower by more than the band;
within the band it must win on quality. Size and MAC ratios are exact: their band is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median


SQRT2 = 2 ** 0.5
MAX_BAND = 0.15  # a band wider than this says the machine was too busy to time; it no longer hides ±15 %


@dataclass(frozen=True)
class Point:
    number: int  # the trial
    loss: float  # what the budget bounds: lower is better
    objective: float  # ratio to the input: lower is better
    feasible: bool
    size: float | None = None
    macs: float | None = None  # MACs ratio: exact, so it breaks ties of latency and quality
    steps: int = 0  # the pipeline's length: of two pipelines that made the same model, the shorter


def band_of(bands: list[float | None], objective: str) -> float:
    """The study's tie band on the objective (0 but for latency): the median A/A half-width of its
    trials, times √2. A trial's half-width is the uncertainty of its own ratio, each timed against the
    input in its own run; two trials compared differ by both uncertainties, which add as √2 of one."""
    known = [b for b in bands if b is not None]
    return min(MAX_BAND, SQRT2 * float(median(known))) if objective == "latency" and known else 0.0


def dominates(a: Point, b: Point, band: float) -> bool:
    """a is no worse than b on both, and better on one, where 'better on the objective' means beyond the band."""
    tie_or_better = a.objective <= b.objective * (1 + band)
    better = a.objective < b.objective * (1 - band)
    return a.loss <= b.loss and tie_or_better and (a.loss < b.loss or better)


def front(points: list[Point], band: float, keep: Point | None = None) -> list[Point]:
    """The points no other point dominates, by objective, and ``keep`` (the chosen point). A tie is
    not transitive: the chosen point, tied with the fastest and more accurate, can itself be tied
    with a slower point more accurate still, which the front would let dominate it."""
    return sorted((p for p in points if p is keep or not any(dominates(q, p, band) for q in points if q is not p)),
                  key=lambda p: (p.objective, p.loss))


def choose(points: list[Point], band: float) -> Point | None:
    """Within the budget: the lowest objective. Points within the band of it are tied on latency;
    among them the better quality wins (the user's other axis: inside the noise, a faster model
    is not known, a more accurate one is), then the fewest MACs (exact, and what latency follows
    once the machine is quiet), then the smaller size, then the shorter pipeline (steps that
    changed nothing made the same model). None when no point meets the budget.

    Quality came after MACs once: the digits search then chose a model 0.56 points down over a tied
    one 0.19 points up (MACs ×0.087 against ×0.116), and so did not dominate the quickstart recipe,
    which lost 0.19 points."""
    feasible = [p for p in points if p.feasible]
    if not feasible:
        return None
    best = min(p.objective for p in feasible)
    tied = [p for p in feasible if p.objective <= best * (1 + band)]
    inf = float("inf")

    def order(p: Point) -> tuple:
        by_macs = round(p.macs, 3) if band and p.macs is not None else inf  # no band: the objective decided
        return p.loss, by_macs, p.size if p.size is not None else inf, p.steps, p.objective

    return min(tied, key=order)


def closest(points: list[Point], n: int = 3) -> list[Point]:
    """When nothing met the budget: the trials nearest to it."""
    return sorted(points, key=lambda p: (p.loss, p.objective))[:n]
