"""What a model adds to an input it passes through: the fidelity of ``output − input``.

Models that return their input plus a correction (a watermark encoder, a denoiser, an enhancer, a
residual autoencoder) have outputs dominated by the input they pass on, and every figure made on the
output reads that shared part: RivaGAN's watermark encoder (``invisible-watermark``) returns its frame
plus a watermark of 1.6 % of the frame's RMS; pruned by 80 % of its weights, its output kept cosine
0.9997 and centered cosine 0.9997 to the input model's while the watermark it added read cosine 0.61.
An output passes an input through when that input has its shape and the reference output's cosine to
it is ``PASSES_THROUGH`` or more; its ``residual`` entry then gives the cosine of what the two models
add to that input (``fk.residual_cosine``), which the default fidelity figure takes where lower
(``evaluate.figure``), and the summary's ``residual_cosine`` the lowest of them.
"""

from __future__ import annotations

import numpy as np

from mcomp.data import Dataset
from mcomp.kernels import fidelity as fk

PASSES_THROUGH = 0.9  # an output whose cosine to an input of its shape is this or more is mostly that input


def bases(ref: list[list[np.ndarray]], dataset: Dataset, input_names: list[str]) -> list[tuple | None]:
    """Per reference output, the input it passes through as (name, cosine to it, the input's arrays joined,
    the output's joined), else None: found once where one reference scores many candidates (quantize's budget)."""
    inputs = {name: fk.joined([feed[name] for feed in dataset.feeds])
              for name in input_names if dataset.feeds and all(name in feed for feed in dataset.feeds)}
    found = []
    for r_list in ref:
        output = fk.joined(r_list) if r_list else None
        through = passed_through(output, inputs) if output is not None else None
        found.append(None if through is None else (*through, inputs[through[0]], output))
    return found


def added(fid: dict, ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], names: list[str],
          dataset: Dataset, input_names: list[str]) -> dict:
    """``fid`` with a ``residual`` entry for each float output that passes one of ``input_names`` through
    (``bases``), and the summary's ``residual_cosine``, the lowest of them."""
    lowest = []
    for name, r_list, c_list, base in zip(names, ref, cand, bases(ref, dataset, input_names)):
        entry = fid["outputs"].get(name) or {}
        value = _cosine(r_list, c_list, base) if "cosine" in entry else None
        if value is not None:
            entry["residual"] = {"input": base[0], "passes_through": round(base[1], 6), "cosine": round(value, 6)}
            lowest.append(entry["residual"]["cosine"])
    fid["summary"]["residual_cosine"] = min(lowest) if lowest else None
    return fid


def lowest(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], found: list[tuple | None]) -> float | None:
    """The lowest residual cosine over the outputs ``bases`` found to pass an input through; None where none does."""
    values = [v for v in (_cosine(r, c, base) for r, c, base in zip(ref, cand, found)) if v is not None]
    return min(values) if values else None


def _cosine(r_list: list[np.ndarray], c_list: list[np.ndarray], base: tuple | None) -> float | None:
    if base is None or not r_list or len(c_list) != len(r_list):
        return None
    value = fk.residual_cosine(base[3], fk.joined(c_list), base[2])
    return float(value) if value is not None and np.isfinite(value) else None


def passed_through(output: np.ndarray | None, inputs: dict[str, np.ndarray | None]) -> tuple[str, float] | None:
    """The input (name, cosine to it) that ``output`` is mostly made of, or None: of the float inputs of its
    shape, the closest, where its cosine is ``PASSES_THROUGH`` or more."""
    if output is None or output.dtype.kind != "f":
        return None
    found = [(name, fk.whole(array, output)["cosine"]) for name, array in inputs.items()
             if array is not None and array.dtype.kind == "f" and array.shape == output.shape]
    best = max(found, key=lambda pair: pair[1], default=None)
    return best if best is not None and best[1] >= PASSES_THROUGH else None
