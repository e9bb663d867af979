"""Numerical check of a rewritten graph against the input model, on the pipeline's data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp import evaluate
from mcomp.data import Dataset
from mcomp.errors import BadInput
from mcomp.kernels.fidelity import channel_axes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs_error: float
    reason: str | None = None


class OutputCheck:
    """Runs candidates on fixed feeds and compares every output with the reference's.

    A float output passes when ``max |candidate − reference| ≤ tolerance × max(1, max |reference|)``;
    with ``mode="slice"`` (the default) that holds for every slice along the output's channel-like axes
    too, so a detector's 0–1 class rows are held to their own scale, not to its 0–640 box rows'.
    Integer and boolean outputs must match exactly; shapes must be equal.
    """

    def __init__(self, reference: ir.Model, dataset: Dataset, providers: list[str], tolerance: float,
                 threads: int | None = None, mode: str = "slice") -> None:
        self.dataset = dataset
        self.mode = mode
        self.providers = providers
        self.threads = threads
        self.tolerance = tolerance
        try:
            self.expected = self._run(reference)
        except BadInput as exc:  # onnxruntime rejects the input itself: the user's model or data
            raise BadInput(f"optimize: the input model does not run on the check data ({exc})") from None

    def _run(self, model: ir.Model) -> list[list[np.ndarray]]:
        """Every output of ``model`` per feed (``[feed][output]``); onnxruntime's refusal is BadInput."""
        outputs = evaluate.run(evaluate.session(model, self.providers, self.threads), self.dataset)
        return [list(per_feed) for per_feed in zip(*outputs)]

    def __call__(self, model: ir.Model) -> Verdict:
        try:
            actual = self._run(model)
        except BadInput as exc:  # a rewrite onnxruntime cannot load or run: the stage is rejected
            return Verdict(False, float("inf"), f"onnxruntime cannot run the result ({exc})")
        worst = 0.0
        for got_feed, want_feed in zip(actual, self.expected):
            if len(got_feed) != len(want_feed):
                return Verdict(False, float("inf"), "the number of outputs changed")
            for got, want in zip(got_feed, want_feed):
                got, want = np.asarray(got), np.asarray(want)
                if got.shape != want.shape:
                    return Verdict(False, float("inf"), f"output shape changed {list(want.shape)} → {list(got.shape)}")
                if want.dtype.kind not in "fc":
                    if not np.array_equal(got, want):
                        return Verdict(False, float("inf"), "an integer output changed")
                    continue
                if want.size == 0:
                    continue
                err, limit, where = self._error(got, want)
                worst = max(worst, err)
                if err > limit:
                    return Verdict(False, err, f"max |Δ| {err:.3g}{where} exceeds the tolerance {limit:.3g}")
        return Verdict(True, worst)

    def _error(self, got: np.ndarray, want: np.ndarray) -> tuple[float, float, str]:
        """The error, its limit, and where: the whole output, or the slice that is furthest over its own limit."""
        err, limit, where = _error(got, want), _limit(self.tolerance, want), ""
        if self.mode != "slice":
            return err, limit, where
        for axis in channel_axes(want):
            for i in range(want.shape[axis]):
                w, g = np.take(want, i, axis=axis), np.take(got, i, axis=axis)
                e, lim = _error(g, w), _limit(self.tolerance, w)
                if e / lim > err / limit:
                    err, limit, where = e, lim, f" in slice {i} of axis {axis}"
        return err, limit, where


def _limit(tolerance: float, want: np.ndarray) -> float:
    return tolerance * max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))


def _error(got: np.ndarray, want: np.ndarray) -> float:
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    if not np.isfinite(err) and np.array_equal(np.isnan(got), np.isnan(want)):
        err = 0.0
    return err
