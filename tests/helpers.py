"""Tiny models built in the tests, in ONNX text, and the switch that sends them down big-model paths."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir


def from_text(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def conv_bn_relu(seed: int = 0) -> ir.Model:
    """x[N,3,8,8] → Conv(3→4, 3×3, pad 1) → BatchNorm → Identity → Dropout → Relu → y."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    mean = rng.standard_normal(4).astype(np.float32)
    var = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         onnx.helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
         onnx.helper.make_node("Identity", ["n"], ["i"], name="id"),
         onnx.helper.make_node("Dropout", ["i"], ["d"], name="drop"),
         onnx.helper.make_node("Relu", ["d"], ["y"], name="relu")],
        "conv_bn_relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])],
        [onnx.numpy_helper.from_array(a, n) for a, n in ((w, "w"), (scale, "s"), (bias, "b"), (mean, "m"), (var, "v"))],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    data = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def tiny_detector(classes: int = 8, size: int = 32, seed: int = 0) -> ir.Model:
    """A YOLOv8-shaped head in miniature: x[1,3,S,S] → conv features → box rows in pixels (0–300) and
    sigmoid class rows (0–1), ``Concat``-ed on axis 1 and flattened to y[1, 4 + classes, S·S]. One 8-bit
    scale over that Concat rounds every class score to zero while the whole-output cosine stays ≈ 1."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
               "wb": rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 0.3,
               "wc": rng.standard_normal((classes, 16, 1, 1)).astype(np.float32) * 0.3,
               "scale": np.array(300.0, np.float32), "shape": np.array([1, -1, size * size], np.int64)}
    node = onnx.helper.make_node
    nodes = [node("Conv", ["x", "w1"], ["f"], "conv1", pads=[1, 1, 1, 1]), node("Relu", ["f"], ["r"], "relu1"),
             node("Conv", ["r", "wb"], ["b"], "conv_box"), node("Sigmoid", ["b"], ["bs"], "sig_box"),
             node("Mul", ["bs", "scale"], ["box"], "to_pixels"), node("Conv", ["r", "wc"], ["c"], "conv_cls"),
             node("Sigmoid", ["c"], ["cls"], "sig_cls"), node("Concat", ["box", "cls"], ["cat"], "head_concat", axis=1),
             node("Reshape", ["cat", "shape"], ["y"], "flatten")]
    graph = onnx.helper.make_graph(
        nodes, "tiny_detector", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, size, size])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4 + classes, size * size])],
        [onnx.numpy_helper.from_array(a, n) for n, a in weights.items()])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def treated_as_big(monkeypatch) -> None:
    """Every weight mapped and spilled, every model timed and measured as a big one: the big-model paths on a
    model small enough for a test."""
    from mcomp import evaluate, external_data, offline, sources
    from mcomp.passes.quantize import mapped_source, prepare

    monkeypatch.setattr(external_data, "MAPPED_FROM", 0)
    monkeypatch.setattr(mapped_source, "MIN_BYTES", 0)
    for module in (prepare, evaluate, offline, sources):
        monkeypatch.setattr(module, "BIG_WEIGHTS", 1)
