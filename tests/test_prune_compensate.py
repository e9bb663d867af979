"""Mean compensation in structured pruning: a removed channel's average contribution stays in its consumers' biases.

The model: x → Conv A (16 channels, 1×1) → Relu → Conv B (1×1, the consumer) → y. Eight of A's channels have
weights near zero and biases of 2–5, so they carry near-constant activations: L1 importance cuts exactly those,
and without the correction y moves by B's weights times those constants. With it, y stays within what the
small weights varied. A 3×3 consumer with zero padding is left as it is (a bias would add at the borders what
the padding hides), and so is a run without data (synthetic inputs' means are not the model's). It is opt-in
(``compensate``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from helpers import run
from mcomp import data
from mcomp.pass_base import Context
from mcomp.passes.prune import Prune

CPU = ["CPUExecutionProvider"]


def biased_channels(kernel: int = 1) -> ir.Model:
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((16, 3, 1, 1)).astype(np.float32)
    ba = np.zeros(16, np.float32)
    wa[8:] *= 1e-3  # the last eight: tiny weights, large biases: near-constant channels
    ba[8:] = np.linspace(2, 5, 8)
    wb = rng.standard_normal((4, 16, kernel, kernel)).astype(np.float32)
    pads = [kernel // 2] * 4
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb", "bb"], ["y"], name="B", pads=pads)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 6, 6])],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(ba, "ba"),
                               numpy_helper.from_array(wb, "wb"),
                               numpy_helper.from_array(np.zeros(4, np.float32), "bb")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def feeds(n: int = 4) -> list[dict]:
    return [{"x": np.random.default_rng(i).standard_normal((8, 3, 6, 6)).astype(np.float32)} for i in range(n)]


def prune(model: ir.Model, synthetic: bool = False, **options):
    ds = data.Dataset(feeds(), None, synthetic, "test")
    ctx = Context(data={"calibration": ds}, providers=CPU)
    config = Prune.Config(method="structured", rate=0.5, protect_ends=False, **{"compensate": True, **options})
    return Prune(config)(model, ctx)


def error(model: ir.Model, result) -> float:
    x = {"x": np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    want, got = run(model, x)[0], run(result.model, x)[0]
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_the_removed_channels_means_stay_in_the_consumers_bias():
    model = biased_channels()
    kept = prune(ir.serde.deserialize_model(ir.serde.serialize_model(model)))
    dropped = prune(ir.serde.deserialize_model(ir.serde.serialize_model(model)), compensate=False)
    assert kept.details["groups"][0]["channels_after"] == 8
    assert kept.details["compensated"] == {"consumers": 1, "of": 1, "examples": 32}
    assert "removed channels' means kept in 1 of 1 consumers' biases (32 examples)" in kept.summary
    assert error(model, kept) < 0.01 < error(model, dropped)
    assert dropped.details["compensated"] is None and "means" not in dropped.summary
    assert Prune.Config().compensate is False  # opt-in: it hurt PP-OCRv4's detector


def test_a_padded_consumer_and_synthetic_data_are_left_alone():
    model = biased_channels(kernel=3)
    padded = prune(ir.serde.deserialize_model(ir.serde.serialize_model(model)))
    assert padded.details["compensated"] == {"consumers": 0, "of": 1, "examples": 0}  # nothing to read means for
    assert "compensate: none of the 1 consumers could keep the removed channels' means" in padded.summary
    uncorrected = prune(ir.serde.deserialize_model(ir.serde.serialize_model(model)), compensate=False)
    assert error(model, padded) == error(model, uncorrected)
    noise = prune(biased_channels(), synthetic=True)
    assert noise.details["compensated"] is None
