"""``optimize --level basic`` writes portable ONNX: only the opsets its nodes use, none outside the
standard domains (onnxruntime's optimized-model output declares every domain the runtime knows)."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import conv_bn_relu, run
from mcomp import data, offline
from mcomp.graph import copy
from mcomp.pass_base import Context
from mcomp.passes.optimize import Optimize, portable

FEEDS = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "org.pytorch.aten", "ai.onnx.preview.training")


def _declared(model: ir.Model) -> set[str]:
    return {o.domain for o in ir.serde.serialize_model(model).opset_import}


def _stage(result, name="onnxruntime") -> dict:
    return next(s for s in result.details["stages"] if s["name"] == name)


def _with_contrib_node(model: ir.Model) -> ir.Model:
    """``model`` with its Relu moved into the com.microsoft domain, and every onnxruntime domain declared."""
    proto = ir.serde.serialize_model(model)
    for node in proto.graph.node:
        if node.op_type == "Relu":
            node.domain = "com.microsoft"
    for domain in ORT_DOMAINS:
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return ir.serde.deserialize_model(proto)


def test_onnxruntime_raw_output_declares_domains_no_node_uses():
    """The premise: without the clean-up, level basic would write onnxruntime's whole domain list."""
    raw = offline.offline_optimized(conv_bn_relu(), "basic", ["CPUExecutionProvider"])
    assert {"com.microsoft", "com.microsoft.nchwc"} <= _declared(raw)


def test_level_basic_writes_only_the_standard_opset():
    model = conv_bn_relu()
    result = Optimize(level="basic")(copy(model), Context())
    assert _stage(result)["applied"] == 1
    assert _declared(result.model) == {""}
    np.testing.assert_allclose(run(result.model, FEEDS)[0], run(model, FEEDS)[0], atol=1e-5)
    onnx.checker.check_model(ir.serde.serialize_model(result.model))


def test_level_all_keeps_only_the_domains_its_fused_nodes_use():
    result = Optimize(level="all")(copy(conv_bn_relu()), Context())
    used = {n.domain for n in ir.serde.serialize_model(result.model).graph.node}
    assert _declared(result.model) == used | {""}
    assert "org.pytorch.aten" not in _declared(result.model)


def test_level_basic_rejects_a_result_with_non_standard_ops(monkeypatch):
    monkeypatch.setattr(offline, "offline_optimized", lambda m, level, providers, **_: _with_contrib_node(m))
    result = Optimize(level="basic")(copy(conv_bn_relu()), Context())
    stage = _stage(result)
    assert stage["applied"] == 0 and stage["rejected"] == 1
    assert "com.microsoft::Relu ×1" in stage["reason"] and "portable" in stage["reason"]
    assert any("stage onnxruntime not kept" in n for n in result.notes)
    assert _declared(result.model) == {""}  # the portable stages' result is what is written
    assert {n.domain for n in result.model.graph} == {""}


def test_input_that_already_holds_contrib_ops_is_not_blamed_on_the_optimizer():
    before = _with_contrib_node(conv_bn_relu())
    after = portable.after_onnxruntime(copy(before), "basic", before)
    assert _declared(after) == {"", "com.microsoft"}
    assert portable.foreign_ops(after) == {"com.microsoft::Relu": 1}


@pytest.mark.parametrize("level", ["extended", "all"])
def test_other_levels_may_keep_contrib_ops_but_not_unused_domains(level):
    before = conv_bn_relu()
    after = portable.after_onnxruntime(_with_contrib_node(before), level, before)
    assert _declared(after) == {"", "com.microsoft"}
    with pytest.raises(portable.StageRejected, match="non-standard"):
        portable.after_onnxruntime(_with_contrib_node(before), "basic", before)


def _ctc_tail_opset_12() -> onnx.ModelProto:
    """ddddocr's recognizer tail at opset 12: logits reshaped to ``[T, N, C]`` by a target computed from
    the input's shape, and declared ``[1, seqlen]`` as its export declares them."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "rows"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["scores"], transB=1),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["t"], axis=0),
             helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["t"], ["t1"], axes=[0]),
             helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
             helper.make_node("Concat", ["t1", "n1", "classes"], ["back"], axis=0),
             helper.make_node("Reshape", ["scores", "back"], ["logits"])]
    graph = helper.make_graph(
        nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seqlen"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1, 4], np.int64), "rows"),
         numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
         numpy_helper.from_array(np.array([5], np.int64), "classes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    return model


def test_folding_an_opset_12_model_trusts_neither_a_wrong_output_declaration_nor_allowzero():
    """Both folding stages were dropped on ddddocr's opset-12 recognizer: onnxscript wrote Reshape's
    ``allowzero`` (opset 14 on; onnxruntime refused the model), and, that mended, folding trusted the
    declared ``[1, seqlen]`` and made the logits ``[1, 30]``."""
    model = ir.serde.deserialize_model(_ctc_tail_opset_12())
    feeds = {"x": np.random.default_rng(2).standard_normal((6, 1, 4)).astype(np.float32)}
    expected = run(model, feeds)[0]
    assert expected.shape == (6, 1, 5)
    ctx = Context(data={"calibration": data.Dataset(feeds=[feeds])}, providers=["CPUExecutionProvider"])
    result = Optimize(Optimize.Config(level="basic"))(copy(model), ctx)
    stages = {s["name"]: s for s in result.details["stages"]}
    assert stages["fold-shapes"]["applied"], result.details["stages"]
    assert not any(s["rejected"] for s in stages.values()), result.details["stages"]
    assert not [n for n in result.model.graph if n.op_type in ("Shape", "Gather", "Concat")]
    assert all("allowzero" not in n.attributes for n in result.model.graph if n.op_type == "Reshape")
    np.testing.assert_allclose(run(result.model, feeds)[0], expected, rtol=1e-6)
