"""optimize's attention stage (onnxscript's attention fusions, after onnxruntime's transformer fusions) on
the dynamo exports of ``transformer_models``, whose mask subgraph none of onnxruntime's patterns match."""

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import transformer_models as tm
from mcomp.graph import copy, op_histogram
from mcomp.pass_base import Context
from mcomp.passes.optimize import Optimize
from mcomp.passes.optimize.attention import _merge_heads_in_two_steps

# the transformer and attention stages alone (the portable and onnxruntime stages are tested elsewhere)
ONLY_FUSIONS = ["fold-constants", "fold-shapes", "eliminate", "fuse-batchnorm", "fuse", "onnxruntime"]
CPU = ["CPUExecutionProvider"]


def _ops(model: ir.Model) -> dict[str, int]:
    return {op.split("::")[-1]: n for op, n in op_histogram(model).items()}


def _stage(result, name: str) -> dict:
    return next(s for s in result.details["stages"] if s["name"] == name)


def _assert_same_outputs(got_model: ir.Model, want_model: ir.Model, feeds: dict) -> None:
    def run(model):
        sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=CPU)
        return sess.run(None, feeds)

    for got, want in zip(run(got_model), run(want_model)):
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _padded_feeds(m: tm.TransformerModel) -> dict:
    """Other shapes than the stage check's, with a padded row: the mask must reach the fused op."""
    feeds = m.feeds(batch=2, seq=24, seed=7)
    if "attention_mask" in feeds:
        feeds["attention_mask"][1, 10:] = 0
    return feeds


def test_dynamo_bert_attention_fuses_at_level_extended():
    m = tm.build("bert")
    model = ir.load(str(m.path))
    result = Optimize(level="extended")(copy(model), Context())
    ops = _ops(result.model)
    assert ops.get("Attention") == m.config["layers"] and "Softmax" not in ops, ops
    stage = _stage(result, "attention")
    assert stage["applied"] == 1 and not stage["rejected"] and stage["fused_ops"] == {"Attention": 4}, stage
    assert stage["max_abs_error"] <= 1e-4 * 4  # within the stage's tolerance (outputs reach ~4)
    assert "attention fusions (onnxscript): Attention ×4" in result.notes, result.notes
    assert _stage(result, "transformer")["fused_ops"]["SkipLayerNormalization"] == 8  # onnxruntime's, still kept
    assert result.details["nodes_after"] <= 70, result.details
    _assert_same_outputs(result.model, model, _padded_feeds(m))


def test_skip_attention_leaves_onnxruntimes_fusions_alone():
    model = ir.load(str(tm.build("bert").path))
    result = Optimize(level="extended", skip=["attention"])(copy(model), Context())
    assert _ops(result.model).get("Softmax") == 4 and "Attention" not in _ops(result.model)
    assert not any(s["name"] == "attention" for s in result.details["stages"])
    assert _stage(result, "transformer")["fused_ops"]["SkipLayerNormalization"] == 8


@pytest.mark.parametrize("name, fused", [("vit", "Attention"), pytest.param("gpt2", "MultiHeadAttention",
                                                                              marks=pytest.mark.slow)])
def test_mask_free_and_causal_attention_fuse(name, fused):
    """ViT (no mask: Add-free scores) becomes packed Attention; GPT-2 (causal mask as the bias, Gemm+Split
    projections, a context Reshape straight to [B·S, D]) becomes MultiHeadAttention."""
    m = tm.build(name)
    model = ir.load(str(m.path))
    result = Optimize(level="extended", skip=ONLY_FUSIONS)(copy(model), Context())
    ops = _ops(result.model)
    assert ops.get(fused) == m.config["layers"] and "Softmax" not in ops, ops
    assert _stage(result, "attention")["fused_ops"] == {fused: m.config["layers"]}
    _assert_same_outputs(result.model, model, _padded_feeds(m))


def _mask_subtracted(model: ir.Model) -> int:
    """Rewrites every ``Add(scores, mask) → Softmax`` as ``Sub(scores, Neg(mask))``: the same numbers
    in a form no SDPA pattern knows."""
    changed = 0
    for add in list(model.graph):
        if add.op_type != "Add" or not any(u.op_type == "Softmax" for u, _ in add.outputs[0].uses()):
            continue
        neg = ir.node("Neg", [add.inputs[1]])
        sub = ir.node("Sub", [add.inputs[0], neg.outputs[0]])
        model.graph.insert_before(add, [neg, sub])
        add.outputs[0].replace_all_uses_with(sub.outputs[0])
        model.graph.remove(add, safe=True)
        changed += 1
    return changed


def test_an_unknown_mask_form_keeps_onnxruntimes_fusions_and_its_softmax():
    m = tm.build("bert")
    model = ir.load(str(m.path))
    assert _mask_subtracted(model) == m.config["layers"]
    result = Optimize(level="extended", skip=ONLY_FUSIONS)(copy(model), Context())
    ops = _ops(result.model)
    assert ops.get("Softmax") == 4 and "Attention" not in ops and "MultiHeadAttention" not in ops, ops
    assert ops.get("SkipLayerNormalization") == 8, ops
    stage = _stage(result, "attention")
    assert stage["applied"] == 0 and stage["rejected"] == 0, stage
    assert not any("attention fusions" in n or "not kept" in n for n in result.notes), result.notes
    _assert_same_outputs(result.model, model, _padded_feeds(m))


def test_the_head_merge_is_split_only_where_it_also_flattens_the_batch():
    """GPT-2's context Reshape ([B, S, H, Dh] → [B·S, D]) gets a [B, S, D] step before it; BERT's,
    already [B, S, D], is left alone."""
    gpt2 = ir.load(str(tm.build("gpt2").path))
    bert = ir.load(str(tm.build("bert").path))
    assert _merge_heads_in_two_steps(bert) == 0
    before = _ops(gpt2)["Reshape"]
    assert _merge_heads_in_two_steps(gpt2) == 4
    assert _ops(gpt2)["Reshape"] == before + 4
