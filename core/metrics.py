"""Fidelity and accuracy of a candidate model against a reference, on a data set."""

from __future__ import annotations

import numpy as np

from mcomp.data import Dataset
from mcomp.kernels import fidelity as fk


def run_all(session, dataset: Dataset) -> list[list[np.ndarray]]:
    """Every output for every feed: ``outputs[k]`` is the list of per-feed arrays of output k."""
    per_feed = [session.run(None, feed) for feed in dataset.feeds]
    return [list(col) for col in zip(*per_feed)]


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """One array per output: concatenated along the batch axis where shapes allow, else flattened."""
    if all(a.ndim and a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.ravel() for a in arrays])


FIDELITY_MODES = ("slice", "whole")


def slice_axes(ref: list[list[np.ndarray]]) -> list[list[int]]:
    """The channel-like axes of each reference output: found once where many candidates are scored."""
    return [fk.channel_axes(_joined(r_list)) if r_list else [] for r_list in ref]


def fidelity(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], names: list[str],
             axes: list[list[int]] | None = None) -> dict:
    """Per-output cosine, relative L2, max abs error, the worst slice along channel-like axes (a
    detector's class rows), and top-1 agreement where an output is class scores (per time step for
    sequences); plus a summary with the worst of each. ``summary["slice_cosine"]`` is the lowest
    worst-slice cosine (the whole-output cosine for outputs without channel-like axes): the figure
    gates use unless asked for ``whole`` (see ``figure``)."""
    outputs = {}
    for k, (name, r_list, c_list) in enumerate(zip(names, ref, cand)):
        r, c = _joined(r_list), _joined(c_list)
        if r.shape != c.shape:
            outputs[name] = {"error": f"shape {list(c.shape)} differs from the reference's {list(r.shape)}"}
            continue
        if r.dtype.kind not in "fc":
            outputs[name] = {"exact_match": float(np.mean(r == c))}
            continue
        entry = {"cosine": fk.cosine(r, c), "relative_l2": fk.relative_l2(r, c), "max_abs_error": fk.max_abs(r, c),
                 "sqnr_db": _finite(fk.sqnr_db(r, c))}
        worst = fk.worst_slice(r, c, None if axes is None else axes[k])
        if worst is not None:
            entry["worst_slice"] = {**worst, "sqnr_db": _finite(worst["sqnr_db"])}
        if fk.is_class_scores(r):
            entry["top1_agreement"] = fk.top1_agreement(r, c)
            step = fk.worst_step_top1(r, c)
            if step is not None:
                entry["worst_step_top1"] = step
        outputs[name] = entry
    floats = {n: o for n, o in outputs.items() if "cosine" in o}
    slices = {n: o["worst_slice"] for n, o in floats.items() if "worst_slice" in o}
    worst_name = min(slices, key=lambda n: slices[n]["cosine"], default=None)
    summary = {
        "cosine": min((o["cosine"] for o in floats.values()), default=None),
        "slice_cosine": min((o.get("worst_slice", o)["cosine"] for o in floats.values()), default=None),
        "worst_slice": None if worst_name is None else {"output": worst_name, **slices[worst_name]},
        "relative_l2": max((o["relative_l2"] for o in floats.values()), default=None),
        "max_abs_error": max((o["max_abs_error"] for o in floats.values()), default=None),
        "top1_agreement": next((o["top1_agreement"] for o in floats.values() if "top1_agreement" in o), None),
        "shape_mismatch": [n for n, o in outputs.items() if "error" in o],
    }
    return {"summary": summary, "outputs": outputs}


def figure(summary: dict, mode: str = "slice") -> float | None:
    """The fidelity figure a gate or a guard compares: the worst slice (default) or the whole-output cosine."""
    if mode not in FIDELITY_MODES:
        raise ValueError(f"fidelity mode {mode!r}: expected one of {FIDELITY_MODES}")
    return summary.get("slice_cosine") if mode == "slice" else summary.get("cosine")


def _finite(value: float) -> float | None:
    """JSON has no infinity: an exact match (SQNR +inf) is reported as null."""
    return value if np.isfinite(value) else None


def accuracy(outputs: list[list[np.ndarray]], dataset: Dataset) -> float | None:
    """Top-1 accuracy of the first class-score output, where the data has labels."""
    if not dataset.has_labels:
        return None
    for per_feed in outputs:
        if per_feed and fk.is_class_scores(per_feed[0]):
            scores = np.concatenate(per_feed, axis=0)
            labels = np.concatenate([np.atleast_1d(l) for l in dataset.labels])
            if len(labels) != len(scores.reshape(-1, scores.shape[-1])):
                return None
            return fk.accuracy(scores, labels)
    return None
