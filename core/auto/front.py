"""The Pareto front of a study and the model it chooses, with latency noise taken seriously.

Two latency ratios closer than the A/A band (the input timed against itself) are a tie: on a
busy machine ×0.62 and ×0.66 may be the same model twice, and a front that ranks them invents a
winner. So a point beats another on the objective only when it is lower by more than the band;
within the band it must win on quality. Size and MAC ratios are exact: their band is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median


MAX_BAND = 0.15  # a band wider than this says the machine was too busy to time; it no longer hides ±15 %


@dataclass(frozen=True)
class Point:
    number: int  # the trial
    loss: float  # what the budget bounds: lower is better
    objective: float  # ratio to the input: lower is better
    feasible: bool
    size: float | None = None
    macs: float | None = None  # MACs ratio: exact, so it breaks latency ties before quality does


def band_of(bands: list[float | None], objective: str) -> float:
    """The study's tie band on the objective: the median A/A half-width of its trials (0 but for latency)."""
    known = [b for b in bands if b is not None]
    return min(MAX_BAND, float(median(known))) if objective == "latency" and known else 0.0


def dominates(a: Point, b: Point, band: float) -> bool:
    """a is no worse than b on both, and better on one, where 'better on the objective' means beyond the band."""
    tie_or_better = a.objective <= b.objective * (1 + band)
    better = a.objective < b.objective * (1 - band)
    if tie_or_better and not better and band and a.macs is not None and b.macs is not None \
            and round(a.macs, 3) > round(b.macs, 3):
        return False  # tied on latency, b has fewer MACs: the tie-break ``choose`` applies, so b stays on the front
    return a.loss <= b.loss and tie_or_better and (a.loss < b.loss or better)


def front(points: list[Point], band: float) -> list[Point]:
    """The points no other point dominates, by objective."""
    return sorted((p for p in points if not any(dominates(q, p, band) for q in points if q is not p)),
                  key=lambda p: (p.objective, p.loss))


def choose(points: list[Point], band: float) -> Point | None:
    """Within the budget: the lowest objective. Points within the band of it are tied on latency;
    among them the fewest MACs (exact, and what latency follows once the machine is quiet), then
    the better quality, then the smaller size wins. None when no point meets the budget."""
    feasible = [p for p in points if p.feasible]
    if not feasible:
        return None
    best = min(p.objective for p in feasible)
    tied = [p for p in feasible if p.objective <= best * (1 + band)]
    inf = float("inf")

    def order(p: Point) -> tuple:
        by_macs = round(p.macs, 3) if band and p.macs is not None else inf  # no band: the objective decided
        return by_macs, p.loss, p.size if p.size is not None else inf, p.objective

    return min(tied, key=order)


def closest(points: list[Point], n: int = 3) -> list[Point]:
    """When nothing met the budget: the trials nearest to it."""
    return sorted(points, key=lambda p: (p.loss, p.objective))[:n]
