"""The choice made again from the finalists timed side by side.

Each trial's latency ratio comes from its own measurement against the input, minutes apart from the
others' on a machine whose load changes, and the fastest of many noisy figures is partly the luckiest:
the chosen model re-measured read ×0.343 → ×0.405 on the digits CNN and ×0.436 → ×0.509 on the MNIST CNN,
and one architecture read ×0.49 in one trial and ×0.70 in the next. The A/A band of one measurement does
not cover that drift. So the fastest trials within the budget (up to ``MAX_FINALISTS``, within
``MARGIN`` of the fastest) are built again from the step cache and timed with the chosen one and the
input in one interleaved run, and ``front.choose`` decides again on those ratios with that run's band.
Size and MACs are exact: for those objectives the chosen model alone is re-measured, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mcomp.auto import front as fronts
from mcomp.auto import trial as trials
from mcomp.errors import McompError

MAX_FINALISTS = 3  # the chosen trial and the next fastest two: a measurement of four models, the input's included
# Trials slower in the search than the fastest by more than this share are not timed again: two measurements of one
# architecture differed by up to 40 % on a loaded 2-core machine, 10–20 % on a quiet one.
MARGIN = 0.25


def rivals(doc: dict) -> list[dict]:
    """The trials within the budget that are timed beside the chosen one: the fastest in the search, up to
    ``MAX_FINALISTS`` − 1, none slower than the fastest by more than ``MARGIN``; none where the objective is
    exact (size, MACs)."""
    chosen = doc["chosen"]
    if doc["objective"] != "latency" or chosen is None:
        return []
    feasible = [t for t in doc["trials"] if t["state"] == "complete" and t["feasible"] and t.get("repeat_of") is None]
    fastest = min(t["measured"]["objective"] for t in feasible)
    near = [t for t in feasible
            if t["number"] != chosen["number"] and t["measured"]["objective"] <= fastest * (1 + MARGIN)]
    return sorted(near, key=lambda t: t["measured"]["objective"])[:MAX_FINALISTS - 1]


def final_choice(settings: trials.Settings, doc: dict, scratch: Path,
                 progress: Callable[[str, int, int], None]) -> tuple[dict, trials.Measured, dict, Path]:
    """The chosen trial's row, its re-measured figures, its run report and the path of its model: the
    search's choice re-measured alone, or, with rivals, the choice made again from one side-by-side run
    (``doc["finalists"]`` says what was timed and what each read)."""
    chosen, others = doc["chosen"], rivals(doc)
    built = {}
    for k, row in enumerate(others, 1):
        progress(f"building finalist {k} of {len(others)} (trial {row['number']})", k - 1, len(others))
        path = scratch.with_name(f"finalist-{row['number']}.onnx")
        try:
            rebuilt, report = trials.run(settings, [tuple(s) for s in row["steps"]], str(path), latency=False)
        except McompError:  # it ran once in the search; a rival that cannot be built again is not timed
            continue
        built[row["number"]] = (row, path, report, rebuilt)
    progress("re-measuring the chosen model" + (" beside the finalists" if built else ""), 0, 1)
    again, report = trials.run(settings, [tuple(s) for s in chosen["steps"]], str(scratch),
                               side_by_side=tuple((_label(n), str(path)) for n, (_, path, _, _) in built.items()))
    if not built:
        return chosen, again, report, scratch
    figures = {chosen["number"]: (chosen, again, report, scratch)}
    for number, (row, path, other, rebuilt) in built.items():
        other["latency"] = report["latency"]["side_by_side"][_label(number)]
        measured = trials.measure(settings, other, rebuilt.seconds)
        measured.cached_steps = rebuilt.cached_steps
        figures[number] = (row, measured, other, path)
    band = fronts.SQRT2 * (trials.tie_band(report["latency"].get("noise_floor"), settings.runs) or 0.0)
    points = [fronts.Point(n, m.loss, m.objective, trials.budget_met(settings, m), m.size_ratio, m.macs_ratio,
                           len(row["steps"])) for n, (row, m, _, _) in figures.items()]
    best = fronts.choose(points, band) or points[0]
    doc["finalists"] = {
        "band": round(band, 4), "chosen": best.number, "chosen_in_search": chosen["number"],
        "trials": [{"number": n, "in_search": row["measured"]["objective"], "side_by_side": m.objective,
                    "loss": m.loss} for n, (row, m, _, _) in figures.items()]}
    for number, (_, _, _, path) in figures.items():
        if number != best.number:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)
    if best.number not in doc["front"]:  # chosen on what the search did not see: shown with the front
        doc["front"].append(best.number)
    return figures[best.number]


def described(final: dict) -> str:
    """The side-by-side re-measurement: each finalist's ratio there and in the search, and the choice."""
    timed = ", ".join(f"trial {t['number']} ×{t['side_by_side']:.3f} (search ×{t['in_search']:.3f})"
                      for t in final["trials"])
    changed = ("" if final["chosen"] == final["chosen_in_search"]
               else f" (the search had chosen trial {final['chosen_in_search']})")
    return (f"finalists timed side by side with the input in one run (tie band ±{final['band']:.3f}): {timed}; "
            f"chosen: trial {final['chosen']}{changed}")


def _label(number: int) -> str:
    return f"trial {number}"
