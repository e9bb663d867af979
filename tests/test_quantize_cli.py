"""``mcomp quantize`` as a user runs it: a subprocess per run, started together (see ``clirun``)."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest

from clirun import DIGITS, DIGITS_EVAL, Batch, run_mcomp, selected_keys, uses

RUNS = {
    "static": ["quantize", "digits.onnx", "--data", "digits_eval.npz", "--no-latency-guard", "--explain", "--runs", "5"],
    "guarded": ["quantize", "digits.onnx", "--data", "digits_eval.npz", "--guard-runs", "10", "--runs", "5",
                "-o", "guarded.onnx"],
    "gate": ["quantize", "digits.onnx", "--data", "digits_eval.npz", "--no-latency-guard", "--min-speedup", "1000000000",
             "--runs", "5", "-o", "gated.onnx"],
    "requantize": "requantize",
    "no-data": ["quantize", "digits.onnx"],
    "wrong-data": ["quantize", "digits.onnx", "--data", "other.npz"],
    "kmeans": ["quantize", "digits.onnx", "--mode", "kmeans", "--bits", "4", "--runs", "5", "--json", "-o", "k.onnx"],
    "bad-bits": ["quantize", "digits.onnx", "--mode", "static", "--bits", "4"],
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key):
        folder = tmp_path_factory.mktemp(key)
        shutil.copy(DIGITS, folder / "digits.onnx")
        shutil.copy(DIGITS_EVAL, folder / "digits_eval.npz")
        np.savez(folder / "other.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
        if RUNS[key] == "requantize":
            def both():
                first = run_mcomp(*RUNS["static"], cwd=folder)
                assert first.returncode == 0, first.explain()
                return run_mcomp("quantize", "digits.quantize.onnx", "--data", "digits_eval.npz", "-o", "twice.onnx",
                                 cwd=folder)
            return both
        return lambda: run_mcomp(*RUNS[key], cwd=folder)

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


@uses("static")
def test_static_writes_the_model_the_report_and_the_explain_table(runs):
    res = runs["static"]
    assert res.returncode == 0, res.explain()
    report = json.loads((res.folder / "digits.quantize.report.json").read_text())
    step = report["steps"][0]
    assert step["pass"] == "quantize" and step["modified"]
    assert step["changes"]["explain"] and "sqnr_db" in step["changes"]["explain"][0]
    assert report["accuracy"]["known"] and report["accuracy"]["drop"] <= 0.005
    assert "per-layer error" in res.stderr and "step quantize" in res.stderr


@uses("guarded")
def test_the_guard_measures_both_models_and_decides_by_the_recorded_ratio(runs):
    """Whatever the machine's load, the guard must have timed the input and its best candidate, and its
    decision (and so whether the model changed) must follow from the ratio and the A/A band it recorded."""
    from mcomp.passes.quantize.guard import GAIN

    res = runs["guarded"]
    assert res.returncode == 0, res.explain()
    step = json.loads((res.folder / "guarded.report.json").read_text())["steps"][0]
    guard = step["changes"]["latency_guard"]
    floor = guard["noise_floor"]
    assert guard["p50_ms"]["input"] > 0 and guard["p50_ms"]["candidate"] > 0
    assert 0 < floor["p10"] <= floor["median"] <= floor["p90"]
    last = max(t["round"] for t in guard["trials"])  # a lone candidate is measured once, the best of several twice
    assert last == (2 if len(guard["trials"]) > 1 else 1)
    assert any(t["round"] == last and t["ratio"] == guard["ratio"] for t in guard["trials"])
    assert guard["threshold"] == round(min(1.0, floor["median"]) - GAIN, 4)
    assert guard["faster"] == (guard["ratio"] <= guard["threshold"])
    assert step["modified"] == guard["faster"]
    # The texts print the unrounded ratio; the record keeps 4 decimals: compare the numbers.
    if guard["faster"]:
        said = re.search(r"latency ×([0-9.]+) of the input", step["summary"])
        assert said and abs(float(said.group(1)) - guard["ratio"]) <= 0.006, step["summary"]
    else:
        said = re.match(r"(?:not faster|latency too noisy to tell) \(.*best ×([0-9.]+)\)", step["changes"]["unchanged"])
        assert said and abs(float(said.group(1)) - guard["ratio"]) <= 0.0006, step["changes"]["unchanged"]
        assert any("returned unchanged" in n for n in step["notes"])


@uses("gate")
def test_min_speedup_is_a_gate_with_exit_3_and_nothing_written(runs):
    res = runs["gate"]
    assert res.returncode == 3, res.explain()
    assert "min_speedup" in res.stderr
    assert not (res.folder / "gated.onnx").exists()


@uses("requantize")
def test_an_already_quantized_model_is_refused_with_exit_2(runs):
    res = runs["requantize"]
    assert res.returncode == 2, res.explain()
    assert "already quantized" in res.stderr and "--force" in res.stderr


@uses("no-data", "wrong-data")
def test_calibration_data_errors_are_clear(runs):
    res = runs["no-data"]
    assert res.returncode == 2, res.explain()
    assert "needs data: static quantization calibrates activation ranges" in res.stderr, res.explain()
    res = runs["wrong-data"]
    assert res.returncode == 2 and "do not match the model's inputs" in res.stderr, res.explain()
    assert not (res.folder / "digits.quantize.onnx").exists()


@uses("kmeans")
def test_kmeans_reports_the_deployable_size_as_json(runs):
    res = runs["kmeans"]
    assert res.returncode == 0, res.explain()
    step = json.loads(res.out)["steps"][0]
    changes = step["changes"]
    assert changes["bytes"]["deployable_huffman"] < changes["bytes"]["float32"] / 5
    # the compression factor says which way: a bare "×5.3" beside the byte counts read as a growth
    said = r"\(\d+\.\d× smaller with Huffman-coded indices, \d+\.\d× smaller fixed-width\)"
    assert re.search(said, step["summary"]), step["summary"]


@uses("bad-bits")
def test_bad_options_are_exit_2(runs):
    res = runs["bad-bits"]
    assert res.returncode == 2 and "bits" in res.stderr, res.explain()


def test_with_labels_the_default_budget_bounds_the_accuracy_drop_too(tmp_path):
    """A classifier whose logits share a large offset (softmax does not see it): int8 noise flips 28 % of
    its top classes while cosine stays 0.999998. With labels and no budget given, the default budget
    bounds the accuracy drop (1 point, or one of the pass's examples), so that model is not written."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 10)) * 0.1).astype(np.float32)
    weight[0] = 0  # the wide input below sets the activations' int8 step, and carries nothing itself
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["logits"])], "offset",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full(10, 100.0,
                                                                                                    np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    x = rng.standard_normal((256, 32)).astype(np.float32)
    x[:, 0] = rng.uniform(-100, 100, 256)
    np.savez(tmp_path / "d.npz", x=x, labels=(x @ weight).argmax(1))
    res = run_mcomp("quantize", "m.onnx", "--data", "d.npz", "--no-latency-guard", "--runs", "5", "-o", "q.onnx",
                    "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    assert doc["accuracy"]["reference"] == 1.0 and doc["accuracy"]["drop"] <= 0.01, doc["accuracy"]
    notes = " ".join(doc["steps"][0]["notes"])
    assert "kept accuracy drop ≤ 0.01 and cosine ≥ 0.98" in notes and "pass's 256 labelled examples" in notes
