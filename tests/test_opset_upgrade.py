"""Raising a graph's opset (``mcomp.opset.upgrade_opset``) with its big float weights held aside: the same graph
as onnx's converter writes, the input unchanged, and weights in files (a big model's prepared graph refers to
them by absolute paths, which onnx's checker refuses) carried through."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from mcomp.opset import HELD_FROM, upgrade_opset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import big_models  # noqa: E402
from helpers import treated_as_big  # noqa: E402


def gather_reduce(table: np.ndarray) -> onnx.ModelProto:
    """A Gather on ``table``, then ReduceMean (whose ``axes`` become an input at 18, an adapter that adds a
    Constant) and a Reshape reading an int64 initializer: opset 13."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
         helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[1]),
         helper.make_node("Reshape", ["m", "shape"], ["y"], name="flat")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([3], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_big_inline_weight_is_held_aside_and_the_graph_is_onnxs_conversion():
    table = np.random.default_rng(0).standard_normal((HELD_FROM // 256 + 1, 64)).astype(np.float32)  # > HELD_FROM
    model = gather_reduce(table)
    before = model.SerializeToString()
    ours, theirs = upgrade_opset(model, 21), version_converter.convert_version(model, 21)
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert model.SerializeToString() == before


def test_weights_in_files_by_absolute_path_are_carried_through(tmp_path):
    """The checker refuses an absolute external location: the upgrade raised, and weight-only left every big
    model's Gather tables float ("block quantization needs opset 21")."""
    model = gather_reduce(np.ones((8, 4), np.float32))
    table = model.graph.initializer[0]
    table.ClearField("raw_data")
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", str(tmp_path / "w.bin")), ("offset", "0"), ("length", "128")):
        table.external_data.add(key=key, value=value)
    with pytest.raises(Exception, match="absolute path"):
        onnx.checker.check_model(version_converter.convert_version(model, 21))
    converted = upgrade_opset(model, 21)
    assert converted.opset_import[0].version == 21
    assert converted.graph.initializer[0] == table  # the same reference, as it was


def test_weight_only_quantizes_a_big_llms_table(tmp_path, monkeypatch):
    """``big_models --layout llm`` with every weight in a file: the opset reaches 21 and the table is
    block-quantized with the MatMuls; onnxruntime's basic optimization runs without its constant folding."""
    from mcomp.model import load
    from mcomp.pass_base import Context
    from mcomp.passes.quantize import Quantize

    treated_as_big(monkeypatch)
    big_models.build_llm(tmp_path / "m.onnx", layers=2, dim=128, vocab=1024)  # the table past 64 k elements
    result = Quantize(mode="weight-only", latency_guard=False, min_fidelity=0.5)(
        load(str(tmp_path / "m.onnx")).model, Context(providers=["CPUExecutionProvider"], input_shapes={"ids": (1,)}))
    assert result.modified and result.details["quantized_ops"].get("Gather") == 1, result.details["float_reasons"]
    # the tied head's Transpose(table), folded, was a second table: the graph is optimized without folding
    assert any("constant folding would copy 'table'" in note for note in result.notes), result.notes
