"""Taylor importance's gradients (``passes/prune/gradients.py``) where nothing can be scored."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from mcomp.data import Dataset
from mcomp.errors import BadInput
from mcomp.passes.prune.gradients import collect


def _model() -> ir.Model:
    """y = Relu(x) and Shape(w): w is read, but no float output depends on it (silero-vad v6 reaches
    its weights through If branches; torch raised "element 0 of tensors does not require grad", exit 1)."""
    f = onnx.TensorProto.FLOAT
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"]), oh.make_node("Shape", ["w"], ["s"])], "g",
                          [oh.make_tensor_value_info("x", f, ["N", 4])],
                          [oh.make_tensor_value_info("y", f, ["N", 4]),
                           oh.make_tensor_value_info("s", onnx.TensorProto.INT64, [2])],
                          [nh.from_array(np.ones((4, 4), np.float32), "w")])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def _data() -> Dataset:
    return Dataset([{"x": np.ones((2, 4), np.float32)}], None, False, "t")


def test_no_weight_to_score_runs_nothing():
    got = collect(_model(), _data(), set(), batches=4)
    assert got.summed == {} and got.batches == 0


def test_a_weight_that_does_not_reach_the_loss_is_bad_input_with_the_way_out():
    with pytest.raises(BadInput, match=r"none of the 1 weights it scores reaches the outputs.*another importance"):
        collect(_model(), _data(), {"w"}, batches=4)
