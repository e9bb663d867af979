"""The worst slice as a user meets it: ``mcomp quantize`` and ``mcomp compare`` on a detector-shaped model."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx_ir as ir
import pytest

from clirun import Batch, run_mcomp, run_shell, selected_keys, uses
from helpers import tiny_detector

QUANTIZE = ["quantize", "det.onnx", "--data", "calib.npz", "--no-latency-guard", "--runs", "3", "--json"]
RUNS = {
    "default": [*QUANTIZE, "-o", "good.onnx"],
    # the defect, made on purpose: one scale over the head's Concat, judged by the whole-output cosine
    "broken": [*QUANTIZE, "--max-range-ratio", "1e12", "--fidelity", "whole", "-o", "broken.onnx"],
    "gate": ["run", "gate.yaml", "det.onnx", "-o", "gated.onnx", "--json"],
    "bad-mode": ["optimize", "det.onnx", "--fidelity", "mean"],
}
COMPARE = "mcomp compare det.onnx broken.onnx --data calib.npz --runs 3 {extra}"
GATE = """steps:
  - quantize: {latency_guard: false, max_range_ratio: 1.0e+12, min_fidelity: 0.5}
data: {calibration: calib.npz}
measure: {runs: 3, fidelity: whole}
gate: {min_fidelity: 0.99}
"""


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key):
        folder = tmp_path_factory.mktemp(key)
        (folder / "det.onnx").write_bytes(ir.serde.serialize_model(tiny_detector()).SerializeToString())
        rng = np.random.default_rng(1)
        np.savez(folder / "calib.npz", x=rng.random((16, 1, 3, 32, 32), dtype=np.float32))
        (folder / "gate.yaml").write_text(GATE)
        if key.startswith("compare"):
            extra = "--fidelity whole" if key == "compare-whole" else ""

            def after_broken():
                # The compare tests name "broken" before their own runs, so it was started first: waiting for it
                # here cannot hold up the pool.
                made = batch["broken"]
                assert made.returncode == 0, made.explain()
                shutil.copy(made.folder / "broken.onnx", folder / "broken.onnx")
                return run_shell(COMPARE.format(extra=extra), cwd=folder)
            return after_broken
        return lambda: run_mcomp(*RUNS[key], cwd=folder)

    batch = Batch(prepare, [])  # bound before any run starts: the compare runs read batch["broken"]
    for key in selected_keys(request, sys.modules[__name__]):
        batch.start(key)
    yield batch
    batch.close()


@uses("default", "broken")
def test_the_report_shows_the_worst_slice_beside_the_whole_cosine(runs):
    good, broken = runs["default"], runs["broken"]
    assert good.returncode == 0 and broken.returncode == 0, good.explain() + broken.explain()
    good_doc, broken_doc = json.loads(good.out), json.loads(broken.out)
    assert "fidelity, worst slice" in good.stderr and "shared 8-bit scale" in good.stderr
    assert good_doc["fidelity"]["summary"]["slice_cosine"] >= 0.95
    whole, worst = broken_doc["fidelity"]["summary"]["cosine"], broken_doc["fidelity"]["summary"]["worst_slice"]
    assert whole > 0.99 and worst["cosine"] < 0.5 and worst["index"] >= 4  # a class row
    assert "top-1 agreement" not in broken.stderr  # a detector head is not class scores


@uses("broken", "compare", "compare-whole")  # compare reads the model that "broken" writes
def test_compare_leads_with_the_worst_slice_and_whole_keeps_the_old_figure(runs):
    res, whole = runs["compare"], runs["compare-whole"]
    assert res.returncode == 0, res.explain()
    lead = next(line for line in res.out.splitlines() if line.startswith("fidelity"))
    assert lead.startswith("fidelity (slice, ") and float(lead.split(": ")[1].split(";")[0]) < 0.5
    assert "worst slice y axis 1" in lead
    lead = next(line for line in whole.out.splitlines() if line.startswith("fidelity"))
    assert lead.startswith("fidelity (whole, cosine):") and float(lead.split(": ")[1].split(";")[0]) > 0.99


@uses("gate")
def test_a_fidelity_gate_in_whole_mode_passes_what_the_default_would_fail(runs):
    res = runs["gate"]
    assert res.returncode == 0, res.explain()
    gate = json.loads(res.out)["gates"]["min_fidelity"]
    assert gate["passed"] and gate["fidelity"] == "whole"
    assert json.loads(res.out)["fidelity"]["summary"]["slice_cosine"] < 0.99  # what slice mode would have failed


@uses("bad-mode")
def test_an_unknown_fidelity_mode_is_exit_2_in_one_line(runs):
    res = runs["bad-mode"]
    assert res.returncode == 2 and "--fidelity 'mean'" in res.stderr and "Traceback" not in res.stderr, res.explain()


def _kept_above(threshold: float):
    """y = the inputs above ``threshold`` (as many as there are: a length the data decides), z = 2·x."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Greater", ["x", "t"], ["above"]), helper.make_node("Compress", ["x", "above"], ["y"]),
             helper.make_node("Mul", ["x", "two"], ["z"])]
    consts = [numpy_helper.from_array(np.array(threshold, np.float32), "t"),
              numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(nodes, "kept", [helper.make_tensor_value_info("x", f, [16])],
                              [helper.make_tensor_value_info("y", f, ["k"]),
                               helper.make_tensor_value_info("z", f, [16])],
                              consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compare_counts_an_output_of_another_length_as_cosine_zero(tmp_path):
    """A decoder that stops at another step (SLANet's Loop): the output of another length was left out,
    and the other output's cosine 1.0 stood for the model."""
    import onnx

    onnx.save(_kept_above(0.5), tmp_path / "a.onnx")
    onnx.save(_kept_above(0.45), tmp_path / "b.onnx")
    np.savez(tmp_path / "d.npz", x=np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 16))
    res = run_mcomp("compare", "a.onnx", "b.onnx", "--data", "d.npz", "--runs", "3", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    assert "fidelity (slice, worst-slice cosine): 0.000000; outputs of another shape (below)" in res.out
    assert ("output y of another shape, counted as cosine 0: shape [3] differs from the reference's [0] (feed 2 of 4)"
            in res.out)
