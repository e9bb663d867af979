"""onnxruntime's offline optimization of a big model (issue 12): weights its basic level only reads are
handed to it as graph inputs, so it does not write them again, and come back as the input's own tensors;
a weight it folds (a Transpose of it) or fuses into (a Conv's, through a BatchNorm) stays an initializer
and is optimized as before."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from helpers import treated_as_big
from mcomp import offline

CPU = ["CPUExecutionProvider"]


def _model() -> ir.Model:
    """x → MatMul(w1) + b → Relu → MatMul(Transpose(w2)) → y, and x → Conv(k) → BatchNorm → z;
    w1 and w2 of 512×512 (1 MiB each)."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((512, 512)), "b": rng.standard_normal(512),
              "w2": rng.standard_normal((512, 512)), "k": rng.standard_normal((4, 1, 3, 3)),
              "scale": rng.random(4) + 0.5, "bias": rng.standard_normal(4), "mean": rng.standard_normal(4),
              "var": rng.random(4) + 0.5}
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("Transpose", ["w2"], ["w2t"]),
             helper.make_node("MatMul", ["r1", "w2t"], ["y"]),
             helper.make_node("Conv", ["img", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512]),
                     helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _outputs(model: ir.Model, feed) -> list[np.ndarray]:
    data = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(data, providers=CPU).run(None, feed)


def test_a_big_models_read_only_weights_are_not_written_by_onnxruntime_and_come_back_as_they_were(monkeypatch):
    treated_as_big(monkeypatch)
    model = _model()
    before = {name: value.const_value for name, value in model.graph.initializers.items()}
    order, inputs = list(model.graph.initializers), [value.name for value in model.graph.inputs]
    handed_over = []
    session = ort.InferenceSession

    def watched(source, *args, **kwargs):  # what onnxruntime was given, to write back
        proto = ir.load(source) if isinstance(source, str) else ir.serde.deserialize_model(
            onnx.load_from_string(bytes(source)))
        handed_over.append(({v.name for v in proto.graph.inputs}, set(proto.graph.initializers)))
        return session(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", watched)
    optimized = offline.offline_optimized(model, "basic", CPU)
    monkeypatch.setattr(ort, "InferenceSession", session)

    given_inputs, given_weights = handed_over[0]
    assert "w1" in given_inputs and "w1" not in given_weights  # MatMul's weight: read only, handed as an input
    assert {"w2", "k"} <= given_weights  # folded (Transpose) and fused (Conv + BatchNorm): weights as before
    ops = [node.op_type for node in optimized.graph]
    assert "Gemm" in ops and "Transpose" not in ops and "BatchNormalization" not in ops  # optimized as before
    assert [value.name for value in optimized.graph.inputs] == ["x", "img"]
    assert optimized.graph.initializers["w1"].const_value is before["w1"]  # the input's own tensor, not a copy
    # the input model is as it was: its initializers in their order, its inputs
    assert list(model.graph.initializers) == order and [v.name for v in model.graph.inputs] == inputs
    assert all(model.graph.initializers[name].const_value is tensor for name, tensor in before.items())
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((2, 512)).astype(np.float32),
            "img": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)}
    for got, want in zip(_outputs(optimized, feed), _outputs(model, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_a_weight_read_by_a_node_of_constant_inputs_only_is_not_handed_over():
    """Gather(table, constant ids) is folded by onnxruntime: its table stays a weight."""
    table = numpy_helper.from_array(np.ones((1024, 256), np.float32), "table")
    ids = numpy_helper.from_array(np.array([1, 2], np.int64), "ids")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["g"]),
                               helper.make_node("Add", ["g", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table, ids])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert offline._passed_through(model) == []
