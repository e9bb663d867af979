"""``mcomp prune --method structured --target macs`` on PP-OCRv4 det, read the way a user reads it.

Issue 10: ``--rate 0.3`` removed 40 % of the MACs while the note said it bisected to −30 %. Two
causes: the pass counted MACs at its own default shape (64×64) while the report counted them at
the pipeline's shapes, and rounding kept channels to multiples of 8 made the uniform rate a
staircase (every 24-channel group drops to 16 at rate 1/6 together: −17 % → −40 % MACs in one
step). So the figures checked here are the report's input/output MACs, not the pass's own, and
the pass's ``macs_before`` must be the report's input MACs (both measured at the same shapes).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import realmodels
from clirun import run_mcomp

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

RATES = (0.1, 0.3)
TOLERANCE = 0.02  # points of MACs removed, either side of the target
# Measured on the realistic feeds (tests/realmodels.py, 256×256): the report's cosine of the
# probability map was 0.41 at −10 % MACs (l1); a mis-sliced cut or a far overshoot (−40 %) gives
# 0.04–0.12. Pruning without fine-tuning damages this small, distilled detector a lot, so the bar
# only separates "damaged" from "destroyed".
MIN_COSINE_AT_10 = 0.3


@pytest.fixture(scope="module")
def pruned(real_model, tmp_path_factory):
    """rate -> (report, output model path, the model) for each of RATES, through the CLI."""
    model = real_model("ppocr-det")
    folder = tmp_path_factory.mktemp("prune_macs")
    data = realmodels.write_npz(model, folder / "calib.npz")
    runs = {}
    for rate in RATES:
        out = folder / f"det_{rate}.onnx"
        res = run_mcomp("prune", str(model.path), "--method", "structured", "--target", "macs",
                        "--rate", str(rate), "--data", str(data), "-o", str(out), "--json", "-q", cwd=folder)
        assert res.returncode == 0, res.explain()
        runs[rate] = (json.loads(res.out), out, model)
    return runs


@pytest.mark.parametrize("rate", RATES)
def test_report_macs_meet_the_target(pruned, rate):
    report, _, _ = pruned[rate]
    before, after = report["input"]["macs"], report["output"]["macs"]
    removed = 1 - after / before
    step = report["steps"][0]
    assert abs(removed - rate) <= TOLERANCE, (removed, step["summary"], step["notes"])
    # the pass bisected on the figure the report shows: same shapes, same count
    assert step["changes"]["macs_before"] == before
    assert step["changes"]["macs_after"] == after
    note = next(n for n in step["notes"] if "found by bisection" in n)
    assert f"removed −{removed:.1%}" in note  # the note states what was achieved, not just the goal


def test_pruned_model_runs_and_keeps_its_output(pruned):
    report, path, model = pruned[0.1]
    assert report["fidelity"]["summary"]["cosine"] > MIN_COSINE_AT_10, report["fidelity"]
    reference = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = model.feeds(seed=5)  # not one of the --data batches
    want, got = reference.run(None, feeds)[0], candidate.run(None, feeds)[0]
    assert got.shape == want.shape
    assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1  # still a probability map
    cosine = float(want.ravel() @ got.ravel() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cosine > MIN_COSINE_AT_10
