"""``optimize --level basic`` writes portable ONNX: only the opsets its nodes use, none outside the
standard domains (onnxruntime's optimized-model output declares every domain the runtime knows)."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import conv_bn_relu, run
from mcomp import evaluate
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
    raw = evaluate.offline_optimized(conv_bn_relu(), "basic", ["CPUExecutionProvider"])
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
    monkeypatch.setattr(evaluate, "offline_optimized", lambda m, level, providers, **_: _with_contrib_node(m))
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
