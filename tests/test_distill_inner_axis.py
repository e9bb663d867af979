"""Distillation of models whose examples lie on an inner axis (an RNN state [layers, batch, hidden]).

silero-vad op15 takes ``state [2, batch, 128]`` and gives ``stateN [2, batch, 128]``: training
holds such inputs examples-first and runs graphs with a Transpose on each such input and output
(``passes/distill/layout.py``); the written model keeps its own layout.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from clirun import run_mcomp
from mcomp import model as model_io
from mcomp.data import Dataset
from mcomp.errors import BadInput, NotApplicable
from mcomp.passes.distill import layout
from mcomp.passes.distill.samples import from_arrays, from_dataset


def _rnn_like(path, seed: int = 0, noise: float = 0.0, state_first: bool = False):
    """x [N, 3], state [2, N, 4], a scalar gain → y [N, 4] and stateN [2, N, 4] (the state carried on);
    ``state_first``: the state is the first input and stateN the first output (dim 0 of the first
    input, 2, is then not the batch)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    u = rng.normal(size=(4, 4)).astype(np.float32)
    if noise:
        w = w + noise * rng.normal(size=w.shape).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["xw"]),
             oh.make_node("ReduceSum", ["state", "axis0"], ["s"], keepdims=0),  # [N, 4]
             oh.make_node("MatMul", ["s", "u"], ["su"]),
             oh.make_node("Add", ["xw", "su"], ["pre"]),
             oh.make_node("Mul", ["pre", "gain"], ["scaled"]),
             oh.make_node("Tanh", ["scaled"], ["y"]),
             oh.make_node("Unsqueeze", ["y", "axis0"], ["y1"]),
             oh.make_node("Add", ["state", "y1"], ["stateN"])]
    f = onnx.TensorProto.FLOAT
    inputs = [oh.make_tensor_value_info("x", f, ["batch", 3]), oh.make_tensor_value_info("state", f, [2, "batch", 4]),
              oh.make_tensor_value_info("gain", f, [])]
    outputs = [oh.make_tensor_value_info("y", f, ["batch", 4]), oh.make_tensor_value_info("stateN", f, [2, "batch", 4])]
    if state_first:
        inputs, outputs = [inputs[1], inputs[0], inputs[2]], outputs[::-1]
    graph = oh.make_graph(nodes, "rnn", inputs, outputs,
                          [nh.from_array(w, "w"), nh.from_array(u, "u"),
                           nh.from_array(np.array([0], np.int64), "axis0")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _feeds(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 3)).astype(np.float32),
            "state": rng.normal(size=(2, n, 4)).astype(np.float32), "gain": np.array(0.5, np.float32)}


def test_samples_hold_inner_axis_inputs_examples_first_and_keep_where_the_model_wants_them():
    feeds = [{"input": np.full((n, 5), i, np.float32), "state": np.full((2, n, 3), i, np.float32),
              "sr": np.array(16000, np.int64)} for i, n in enumerate((4, 4, 2))]
    for ds in (Dataset(feeds, None, False, "t", inner_batch={"state": 1}),  # as the loader says
               Dataset(feeds, None, False, "t")):  # found from the feeds: the state differs per feed
        samples = from_dataset(ds, "training")
        assert len(samples) == 10 and samples.axes == {"state": 1} and set(samples.constants) == {"sr"}
        assert samples.inputs["state"].shape == (10, 2, 3)
        np.testing.assert_array_equal(samples.inputs["state"][:, 0, 0], samples.inputs["input"][:, 0])
        part = samples.take(np.array([9, 0]))
        assert part.axes == {"state": 1} and part.batch(np.array([0]))["state"].shape == (1, 2, 3)
        back = from_arrays(samples.arrays())  # as the workers of --nproc read them
        assert back.axes == {"state": 1} and back.inputs["state"].shape == (10, 2, 3)


def test_a_state_given_with_each_one_example_feed_is_per_example_even_when_all_alike():
    """silero-vad v6 data as stacked feeds of one window, each with its own zero state [2, 1, 128]:
    taken as a constant, batches of 64 windows got a state for one and the model failed in every
    distill trial of mcomp auto. A state given once (the same array in every feed) stays a constant."""
    feeds = [{"input": np.full((1, 5), i, np.float32), "state": np.zeros((2, 1, 3), np.float32),
              "sr": np.array(16000, np.int64)} for i in range(4)]
    samples = from_dataset(Dataset(feeds, None, False, "t"), "training")
    assert samples.axes == {"state": 1} and samples.inputs["state"].shape == (4, 2, 3)
    once = np.zeros((2, 1, 3), np.float32)
    given_once = [dict(f, state=once) for f in feeds]
    assert set(from_dataset(Dataset(given_once, None, False, "t"), "training").constants) == {"state", "sr"}


def test_examples_first_graph_computes_the_model_with_its_inner_axes_moved(tmp_path):
    path = _rnn_like(tmp_path / "m.onnx")
    model = model_io.load(path).model
    samples = from_dataset(Dataset([_feeds(5)], None, False, "t", inner_batch={"state": 1}), "training")
    moved, axes, _ = layout.for_training(model, samples, {k: k for k in ("x", "state", "gain")},
                                      ["CPUExecutionProvider"], 1, "student")
    assert axes == {"stateN": 1}  # y [N, 4] holds them on axis 0 already
    got = ort.InferenceSession(model_io.to_bytes(moved)).run(None, samples.batch(np.arange(5)))
    want = ort.InferenceSession(str(path)).run(None, _feeds(5))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], np.moveaxis(want[1], 1, 0), rtol=1e-6)
    assert [v.name for v in moved.graph.inputs] == ["x", "state", "gain"]
    assert [v.name for v in moved.graph.outputs] == ["y", "stateN"]
    assert model.graph.inputs[1].shape[1] == "batch" or str(model.graph.inputs[1].shape[1]) == "batch"  # untouched


def test_an_input_and_output_of_unknown_shape_are_moved_by_the_rank_they_ran_at(tmp_path):
    path = _rnn_like(tmp_path / "m.onnx")
    model = model_io.load(path).model
    model.graph.inputs[1].shape = model.graph.outputs[1].shape = None  # state and stateN: no shape declared
    samples = from_dataset(Dataset([_feeds(5)], None, False, "t", inner_batch={"state": 1}), "training")
    moved, axes, _ = layout.for_training(model, samples, {k: k for k in ("x", "state", "gain")},
                                      ["CPUExecutionProvider"], 1, "student")
    got = ort.InferenceSession(model_io.to_bytes(moved)).run(["stateN"], samples.batch(np.arange(5)))[0]
    want = ort.InferenceSession(str(path)).run(["stateN"], _feeds(5))[0]
    assert axes == {"stateN": 1} and got.shape == (5, 2, 4)
    np.testing.assert_allclose(got, np.moveaxis(want, 1, 0), rtol=1e-6)


def test_an_output_that_does_not_follow_the_examples_is_refused_with_its_shapes():
    outs = {2: [np.zeros((2, 4)), np.zeros((7,))], 3: [np.zeros((3, 4)), np.zeros((7,))]}
    with pytest.raises(NotApplicable, match=r"output 'total' does not follow the examples \(shape \[7\] for 2"):
        layout.output_axes(lambda n: outs[n], ["y", "total"])
    # a hint tensor is the option's choice, not the model's: refused, but another hint may do
    with pytest.raises(BadInput, match=r"hint tensor 'total' does not follow") as refused:
        layout.output_axes(lambda n: outs[n], ["y", "total"], hints={"total"})
    assert not isinstance(refused.value, NotApplicable)
    moving = {2: [np.zeros((2, 2, 4))], 3: [np.zeros((2, 3, 4))]}  # axis 0 is 2 at both sizes: axis 1 follows
    assert layout.output_axes(lambda n: moving[n], ["stateN"]) == {"stateN": 1}


@pytest.mark.parametrize("state_first", [False, True])
def test_distill_trains_a_student_whose_state_holds_examples_on_axis_1(tmp_path, state_first):
    """Refused before with "distillation batches examples on axis 0 only"; now trained, and the
    written model keeps the student's layout (no Transpose left in it)."""
    teacher = _rnn_like(tmp_path / "t.onnx", state_first=state_first)
    student = _rnn_like(tmp_path / "s.onnx", noise=0.5, state_first=state_first)
    f = _feeds(256)
    np.savez(tmp_path / "train.npz", **f)
    res = run_mcomp("distill", student, "--teacher", teacher, "--data", tmp_path / "train.npz", "--epochs", "30",
                    "--lr", "0.01", "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", "--seed", "0",
                    cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert any("trained with them moved first: state (axis 1), stateN (axis 1)" in n for n in step["notes"])
    fid = step["changes"]["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"] + 0.01, fid
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in onnx.load(student).graph.node]
    ys = ort.InferenceSession(str(tmp_path / "out.onnx")).run(["stateN"], _feeds(3, seed=9))
    assert ys[0].shape == (2, 3, 4)


@pytest.mark.realmodel
@pytest.mark.slow  # ~11 s; make test is kept near 8 minutes
def test_silero_vad_op15_pruned_is_distilled_back_towards_its_teacher(real_model, tmp_path):
    """The real model the refusal was written for: state [2, batch, 128], stateN likewise."""
    import realmodels

    vad = real_model("silero-vad-op15")
    windows = [realmodels._feeds_vad(s, batch=16) for s in range(6)]
    x = np.concatenate([w["input"] for w in windows])
    np.savez(tmp_path / "train.npz", input=x, state=np.zeros((2, len(x), 128), np.float32), sr=np.array(16000))
    res = run_mcomp("prune", vad.path, "--rate", "0.6", "--data", tmp_path / "train.npz", "-o",
                    tmp_path / "pruned.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    res = run_mcomp("distill", tmp_path / "pruned.onnx", "--teacher", vad.path, "--data", tmp_path / "train.npz",
                    "--epochs", "4", "--seed", "0", "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json",
                    cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    fid = step["changes"]["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"], fid
    feeds = realmodels._feeds_vad(99, batch=5)  # the written model takes the model's own layout
    out = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, feeds)
    assert out[0].shape == (5, 1) and out[1].shape == (2, 5, 128)


def _lstm_like(path, noise: float = 0.0):
    """x [N, 3] → y [N, 4] and Y_h [2, N, 4]: an exported LSTM's final state, with no state input
    (ONNX LSTM's initial state defaults to zeros)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    w = w + noise * np.random.default_rng(1).normal(size=w.shape).astype(np.float32)
    f = onnx.TensorProto.FLOAT
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"]), oh.make_node("Tanh", ["y"], ["t"]),
                           oh.make_node("Unsqueeze", ["t", "axis0"], ["t1"]),
                           oh.make_node("Concat", ["t1", "t1"], ["Y_h"], axis=0)], "lstm",
                          [oh.make_tensor_value_info("x", f, ["batch", 3])],
                          [oh.make_tensor_value_info("y", f, ["batch", 4]),
                           oh.make_tensor_value_info("Y_h", f, [2, "batch", 4])],
                          [nh.from_array(w, "w"), nh.from_array(np.array([0], np.int64), "axis0")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_an_output_state_with_examples_on_axis_1_is_trained_without_a_state_input(tmp_path):
    """Y_h [layers, batch, hidden] with no inner-axis input: found from the teacher's first batch."""
    teacher, student = _lstm_like(tmp_path / "t.onnx"), _lstm_like(tmp_path / "s.onnx", noise=0.5)
    np.savez(tmp_path / "train.npz", x=np.random.default_rng(2).normal(size=(128, 3)).astype(np.float32))
    res = run_mcomp("distill", student, "--teacher", teacher, "--data", tmp_path / "train.npz", "--epochs", "20",
                    "--lr", "0.01", "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", "--seed", "0",
                    cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert any("trained with them moved first: Y_h (axis 1)" in n for n in step["notes"]), step["notes"]
    fid = step["changes"]["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"], fid


def test_an_output_kept_for_the_whole_batch_is_refused_before_training(tmp_path):
    """A sequence model: axis 0 is time, and its state [1, 1, 4] is the whole sequence's
    (silero-vad's sequence model). numpy's "all the input array dimensions … must match" (exit 1)
    before; now one line naming the output."""
    f = onnx.TensorProto.FLOAT
    for name, scale in (("m.onnx", 1.0), ("t.onnx", 2.0)):  # a teacher that is the student's file is skipped
        graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"]),
                               oh.make_node("ReduceMean", ["y"], ["m"], keepdims=1),
                               oh.make_node("Mul", ["h", "m"], ["hn"])], "seq",
                              [oh.make_tensor_value_info("x", f, ["T", 4]),
                               oh.make_tensor_value_info("h", f, [1, 1, 4])],
                              [oh.make_tensor_value_info("y", f, ["T", 4]),
                               oh.make_tensor_value_info("hn", f, [1, 1, 4])],
                              [nh.from_array(scale * np.eye(4, dtype=np.float32), "w")])
        onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), tmp_path / name)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 32, 4), np.float32), h=np.ones((4, 1, 1, 4), np.float32))
    res = run_mcomp("distill", tmp_path / "m.onnx", "--teacher", tmp_path / "t.onnx", "--data", tmp_path / "d.npz",
                    "--epochs", "1", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert res.returncode == 2 and len(res.err_lines) == 1, res.explain()
    assert "output 'hn' does not follow the examples (shape [1, 1, 4] for 2 examples, [1, 1, 4] for 3)" in res.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_sequence_first_torch_lstm_is_distilled_after_pruning(tmp_path):
    """torch.nn.LSTM exported as ONNX's LSTM op: x [time 5, batch, 8] and h [layers 2, batch, 16]
    both hold the examples on axis 1 (refused before)."""
    import torch

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = torch.nn.LSTM(8, 16, num_layers=2), torch.nn.Linear(16, 3)

        def forward(self, x):
            y, (h, _) = self.lstm(x)
            return self.head(y[-1]), h

    torch.manual_seed(0)
    torch.onnx.export(Tagger().eval(), (torch.randn(5, 4, 8),), tmp_path / "lstm.onnx", input_names=["x"],
                      output_names=["logits", "h"], dynamo=False,
                      dynamic_axes={"x": {1: "batch"}, "logits": {0: "batch"}, "h": {1: "batch"}})
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(5, 256, 8)).astype(np.float32))
    res = run_mcomp("prune", tmp_path / "lstm.onnx", "--rate", "0.5", "--no-protect-ends", "--data",
                    tmp_path / "d.npz", "-o", tmp_path / "pruned.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    res = run_mcomp("distill", tmp_path / "pruned.onnx", "--teacher", tmp_path / "lstm.onnx", "--data",
                    tmp_path / "d.npz", "--epochs", "10", "--seed", "0", "-o", tmp_path / "out.onnx", "--report",
                    tmp_path / "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert any("x (axis 1), h (axis 1)" in n for n in step["notes"]), step["notes"]
    fid = step["changes"]["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"], fid
    out = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": np.zeros((5, 3, 8), np.float32)})
    assert out[0].shape == (3, 3) and out[1].shape == (2, 3, 16)


def test_hint_projections_start_in_the_models_fixed_batch(tmp_path):
    """A model exported at batch 1 with the batch in a Reshape's shape (a YOLO export's DFL: [1, 4, 16,
    anchors]) runs one example at a time. The hint projections' least-squares start ran 512
    examples at once: torch's "shape is invalid", exit 1 in every distill trial of ``mcomp auto``."""
    f = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(0)

    def save(path, noise):
        w = (np.eye(4, 8) + noise * rng.normal(size=(4, 8))).astype(np.float32)
        graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["r"]),
                               oh.make_node("Reshape", ["r", "shape"], ["y"])], "fixed",
                              [oh.make_tensor_value_info("x", f, [1, 4])],
                              [oh.make_tensor_value_info("y", f, [1, 2, 4])],
                              [nh.from_array(w, "w"), nh.from_array(np.array([1, 2, 4], np.int64), "shape")])
        onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)

    save(tmp_path / "t.onnx", 0.0)
    save(tmp_path / "s.onnx", 0.3)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 1, 4)).astype(np.float32))
    res = run_mcomp("distill", "s.onnx", "--teacher", "t.onnx", "--data", "d.npz", "--hint", "r=r", "--epochs", "2",
                    "--lr", "0.01", "-o", "out.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert any("batch dim is fixed at 1" in n for n in step["notes"]), step["notes"]


def _time_first_recognizer(path, reshape_batch: int, noise: float = 0.0, seed: int = 0):
    """ddddocr's recognizer in small: ``x [1, F, T]`` (batch fixed at 1) → ``[T, batch, F]`` → Gemm →
    CTC logits ``[T, batch, C]``, declared ``[1, seqlen]`` as its export declares them. ``reshape_batch``
    -1 lets the graph run any batch (ddddocr computes its shapes); 1 bakes the batch into the Reshape."""
    f, steps, feats, classes = onnx.TensorProto.FLOAT, 6, 4, 5
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(classes, feats)) + noise * np.random.default_rng(9).normal(size=(classes, feats)))
    graph = oh.make_graph(
        [oh.make_node("Transpose", ["x"], ["tbf"], perm=[2, 0, 1]),
         oh.make_node("Reshape", ["tbf", "rows"], ["flat"]),
         oh.make_node("Gemm", ["flat", "w"], ["scores"], transB=1),
         oh.make_node("Reshape", ["scores", "back"], ["logits"])], "ctc",
        [oh.make_tensor_value_info("x", f, [1, feats, steps])],
        [oh.make_tensor_value_info("logits", f, [1, "seqlen"])],
        [nh.from_array(w.astype(np.float32), "w"), nh.from_array(np.array([-1, feats], np.int64), "rows"),
         nh.from_array(np.array([steps, reshape_batch, classes], np.int64), "back")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("reshape_batch", [-1, 1])
def test_a_fixed_batch_model_with_time_first_logits_is_distilled(tmp_path, reshape_batch):
    """Found on ddddocr's recognizer (pruned, then distilled back): the axis that follows the examples
    was looked for by running 2 examples at once ("Got: 2 Expected: 1", exit 2 as if the data were
    wrong), then its Transpose followed the declared rank 2 of a rank-3 output, and the teacher's
    probe ran 8 examples on a session of batch 1."""
    _time_first_recognizer(tmp_path / "t.onnx", reshape_batch)
    _time_first_recognizer(tmp_path / "s.onnx", reshape_batch, noise=0.5)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(3).normal(size=(48, 1, 4, 6)).astype(np.float32))
    res = run_mcomp("distill", "s.onnx", "--teacher", "t.onnx", "--data", "d.npz", "--epochs", "15", "--lr", "0.01",
                    "--seed", "0", "-o", "out.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert any("trained with them moved first: logits (axis 1)" in n for n in step["notes"]), step["notes"]
    # the automatic hint is the Gemm's input before the Reshape that mixes time and examples into rows
    assert any(n.startswith("hints (auto): tbf (axis 1)") for n in step["notes"]), step["notes"]
    fid = step["changes"]["fidelity"]
    assert fid["after"]["cosine"] > fid["before"]["cosine"], fid
    out = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert out.run(None, {"x": np.zeros((1, 4, 6), np.float32)})[0].shape == (6, 1, 5)  # its own layout


def test_a_fixed_batch_output_whose_example_axis_cannot_be_told_is_refused():
    """At a fixed batch of 1, an output [3, 1, 1] has two axes of size 1 past 0: which follows the examples
    is unknowable, and saying so beats guessing."""
    assert layout.fixed_batch_axes([np.zeros((6, 1, 5))], ["y"], 1) == {"y": 1}
    assert layout.fixed_batch_axes([np.zeros((1, 6, 5))], ["y"], 1) == {}
    with pytest.raises(NotApplicable, match=r"'y' is \[3, 1, 1\] at the model's fixed batch of 1: axes 1, 2"):
        layout.fixed_batch_axes([np.zeros((3, 1, 1))], ["y"], 1)
    with pytest.raises(BadInput, match="hint tensor 'h'"):
        layout.fixed_batch_axes([np.zeros((3, 2))], ["h"], 1, hints={"h"})


def _squeezed(seed: int, noise: float = 0.0) -> model_io.ir.Model:
    """x [N, 4] → MatMul [4, 1] → Squeeze (every 1-dim): [N] for N examples, a rank-0 score for one, as
    PyTorch's squeeze() exports (speechmos's PLCMOS)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 1)).astype(np.float32) + noise * np.float32(1.0)
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["xw"]), oh.make_node("Squeeze", ["xw"], ["y"])], "sq",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [nh.from_array(w, "w")])
    return model_io.ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]))


def test_a_model_that_squeezes_one_example_to_rank_0_is_distilled():
    """No batch of one is run: the last batch of one joins the one before, and a chunk of one example is
    run twice. PLCMOS's distillation failed on a validation set of one clip (IndexError on a rank-0 score)."""
    from mcomp.pass_base import Context
    from mcomp.passes.distill import Distill
    from mcomp.passes.distill.samples import batches

    assert [len(g) for g in batches(np.arange(9), 4)] == [4, 5] and [len(g) for g in batches(np.arange(1), 4)] == [1]
    assert [len(g) for g in batches(np.arange(3), 1)] == [1, 1, 1]  # a batch fixed at 1 keeps every example
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    ctx = Context(reference=_squeezed(0), data={"training": Dataset([{"x": x}], None, False, "x.npz")}, threads=1,
                  progress=lambda *a: None)
    result = Distill(epochs=2, lr=0.01, batch_size=4, val_split=0.2)(_squeezed(0, noise=0.5), ctx)
    assert result.modified and [h["epoch"] for h in result.details["history"]] == [0, 1, 2]


def test_the_distill_summary_gives_the_centered_cosine_to_the_teacher():
    """A cut PLCMOS read cosine 1.0000 to its teacher before and after distillation: what tells one clip from
    another is read beside it, on a yardstick of two examples or more."""
    from mcomp.pass_base import Context
    from mcomp.passes.distill import Distill

    x = np.random.default_rng(4).normal(size=(12, 4)).astype(np.float32)
    ctx = Context(reference=_squeezed(0), data={"training": Dataset([{"x": x}], None, False, "x.npz")}, threads=1,
                  progress=lambda *a: None)
    result = Distill(epochs=2, lr=0.01, batch_size=4, val_split=0.25)(_squeezed(0, noise=0.5), ctx)
    assert re.search(r"cosine to the teacher [-0-9.]+ → [-0-9.]+ \(centered [-0-9.]+ → [-0-9.]+\)", result.summary)
    assert result.details["fidelity"]["after"]["centered_cosine"] is not None


def test_a_student_is_further_from_its_teacher_on_the_centered_cosine_where_it_is_lower():
    from types import SimpleNamespace

    from mcomp.passes.distill.candidates import further_from_teacher

    def plan(before, after, labels=None):
        return SimpleNamespace(yardstick=SimpleNamespace(before=before, after=after),
                               job=SimpleNamespace(train=SimpleNamespace(labels=labels)))

    flat = {"cosine": 1.0, "centered_cosine": 0.06}
    assert further_from_teacher(plan({"cosine": 1.0, "centered_cosine": 0.5}, flat))  # the cosine alone: no
    assert not further_from_teacher(plan(flat, {"cosine": 0.9999, "centered_cosine": 0.9}))  # the cosine alone: yes
    assert further_from_teacher(plan({"cosine": 0.9}, {"cosine": 0.8}))  # no centered figure: the cosine
    assert not further_from_teacher(plan(flat, {"cosine": 0.5, "centered_cosine": 0.01}, labels=np.zeros(3)))
    # what a watermark encoder adds to its frame: the residual cosine counts as the centered one does
    mark = {"cosine": 0.9999, "residual_cosine": 0.9}
    assert further_from_teacher(plan(mark, {**mark, "residual_cosine": 0.8}))
    assert not further_from_teacher(plan({**mark, "residual_cosine": 0.8}, {"cosine": 0.9998, "residual_cosine": 0.9}))
