"""One score per example and labels 0 and 1: a binary classifier's accuracy.

pipecat's smart-turn v3.2 says whether a speaker's turn is complete as one sigmoid probability per clip,
``logits [N, 1]``: with labelled clips, the report read "accuracy unknown (no classifier-shaped output)",
since one column has no argmax, and a --max-drop could not be held. A probability over 0.5 (every score
in 0..1), else a logit over 0, now reads as class 1.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clirun import run_mcomp
from mcomp import evaluate
from mcomp.data import Dataset
from mcomp.kernels import fidelity as fk


def test_a_probability_reads_over_half_and_a_logit_over_zero():
    labels = np.array([1, 0, 1, 0])
    assert fk.binary_accuracy(np.array([[0.9], [0.2], [0.4], [0.1]], np.float32), labels) == 0.75
    assert fk.binary_accuracy(np.array([2.0, -1.0, 0.3, -0.2], np.float32), labels) == 1.0  # logits: the sign
    assert fk.binary_accuracy(np.array([0.9, 0.2, 0.4, 0.1], np.float32), np.array([1, 2, 0, 0])) is None
    assert fk.binary_accuracy(np.zeros((4, 2), np.float32), labels) is None  # two columns: top-1's business
    assert fk.binary_accuracy(np.zeros(3, np.float32), labels) is None  # one score per example, or none


def test_only_a_models_one_output_is_read_so():
    labels = [np.array([1, 0]), np.array([1, 1])]
    data = Dataset([{"x": np.zeros((2, 3), np.float32)}] * 2, labels=labels)
    one = [[np.array([[0.8], [0.1]], np.float32), np.array([[0.7], [0.3]], np.float32)]]
    assert evaluate.accuracy(one, data) == 0.75
    assert evaluate.accuracy(one + one, data) is None  # which of two outputs is the score: not guessed
    rank0 = [[np.array(0.8, np.float32), np.array(0.3, np.float32)]]  # one score a feed, not joinable
    assert evaluate.accuracy(rank0, Dataset([{"x": np.zeros((1, 3), np.float32)}] * 2,
                                            labels=[np.array([1]), np.array([0])])) is None


@pytest.fixture()
def sigmoid_model(tmp_path):
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((6, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "turn.onnx")
    x = rng.standard_normal((32, 6)).astype(np.float32)
    truth = (x @ onnx.numpy_helper.to_array(weight) > 0).astype(np.int64).ravel()
    truth[:4] = 1 - truth[:4]  # four the model gets wrong: 87.5 %
    np.savez(tmp_path / "turns.npz", x=x, labels=truth)
    return tmp_path


def test_compare_reports_a_sigmoid_classifiers_accuracy(sigmoid_model):
    done = run_mcomp("compare", "turn.onnx", "turn.onnx", "--data", "turns.npz", cwd=sigmoid_model)
    assert done.returncode == 0, done
    assert "accuracy: 87.50% → 87.50%" in done.out, done


def test_distillation_reads_one_label_an_example_for_a_sigmoids_one_score(sigmoid_model):
    """Labels [N] for a sigmoid's [N, 1] were refused ("labels of shape [32] do not fit regression output
    'p' of shape [N, 1]"); they are its binary targets (cross-entropy)."""
    from mcomp.passes.distill import objective

    kinds = [objective.OutputKind("p", "regression", bernoulli=True)]
    labels = objective.check_labels(np.array([0, 1, 1]), kinds, np.zeros((3, 1), np.float32), "turns.npz")
    assert labels.shape == (3, 1) and labels.dtype.kind == "f"
    with pytest.raises(Exception, match="do not fit regression output"):
        objective.check_labels(np.array([0, 1, 1]), kinds, np.zeros((3, 2), np.float32), "turns.npz")
    done = run_mcomp("distill", "turn.onnx", "--teacher", "turn.onnx", "--data", "turns.npz", "--epochs", "2",
                     "-o", "student.onnx", cwd=sigmoid_model)
    assert done.returncode == 0, done
    assert "accuracy" in done.stderr and "87.50%" in done.stderr, done
