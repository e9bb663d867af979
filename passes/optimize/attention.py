"""The attention stage of ``optimize`` (levels extended/all): onnxscript's attention fusions, for the
attention that onnxruntime's own transformer fusions leave unfused.

onnxruntime's Python fusions (``transformer.py``) match the attention of TorchScript exports, whose
mask is the additive ``(1 − mask) × −10000`` built from Unsqueeze/Cast/Sub/Mul. The ``torch.onnx``
*dynamo* exporter (its default today) writes Hugging Face's newer mask instead: a boolean
``[batch, 1, query, key]`` mask gathered from the padding mask (Range/GatherND/And; GPT-2 adds its
causal LessOrEqual) and turned into ``Where(mask, 0, −FLT_MAX)``, then added to the scaled scores.
None of onnxruntime's mask patterns covers that subgraph, so Attention never fuses there (BERT kept
its 4 Softmax chains: 172 → 136 nodes after SkipLayerNormalization/BiasGelu).

The route taken is not a rewrite of the mask: whatever computes the additive mask can stay as it is,
because onnxruntime's Attention and MultiHeadAttention take an arbitrary additive ``attention_bias``
``[batch or 1, heads or 1, query, key]``. onnxscript's ort_fusions (written by the exporter's authors
for these graphs) match the score chain itself — ``MatMul(Q, Kᵀ) → Mul/Div(scale) → Add(mask) →
Softmax → MatMul(·, V)`` into a temporary SDPA op — then the head split/merge around it into
com.microsoft MultiHeadAttention, then the Q/K/V bias Adds into it, then the three projections into
one packed Attention where they share their input (BERT, ViT; GPT-2's Gemm+Split stays
MultiHeadAttention). Its SDPA only matches when query, key and value are rank-4 tensors with
consistent shapes, so a graph whose attention looks different keeps its Softmax chain (and whatever
onnxruntime did to the rest).

The stage runs after onnxruntime's (whose result keeps the value shapes these rules read), only when
a Softmax attention is left, and is checked numerically like every stage; a result that still holds
an SDPA onnxscript could not lower is refused rather than written (onnxruntime cannot run it).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from mcomp.passes.optimize.portable import StageRejected, foreign_ops

STAGE = "attention"
DESCRIPTION = "attention fused into com.microsoft Attention/MultiHeadAttention (onnxscript's ort_fusions)"
_TEMPORARY_DOMAIN = "ai.onnxruntime._fusion"  # onnxscript's SDPA, which no runtime implements


def _fusion_steps():
    """onnxscript's attention rules, in the order its ``fuse_xformers`` applies them: scores → SDPA,
    SDPA with its head split → MultiHeadAttention (with and without past key/value), its scale folded,
    its Q/K/V biases, its shared-input projections → Attention; SDPA left over → MultiHeadAttention."""
    from onnxscript.rewriter.ort_fusions.attention import fuse_attention
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha

    return (fuse_mha1, fuse_mha2, fuse_mha_scale, fuse_mha_bias, fuse_attention, replace_sdpa_by_mha), fuse_sdpa


def _merge_heads_in_two_steps(model: ir.Model) -> int:
    """Splits every Reshape that merges the heads of an attention's context *and* its batch and
    sequence axes (GPT-2's ``[B, S, H, Dh] → [B·S, H·Dh]`` before its Gemm) into ``[B, S, H·Dh]`` then
    the original target. onnxscript's MultiHeadAttention rule takes that Reshape for the head merge
    and writes its ``[B, S, D]`` output in its place whatever its target (its ``check`` does not
    verify it): the Gemm after it would get rank 3. The two-step form is the same row-major
    flattening."""
    split = 0
    for reshape in list(model.graph):
        if reshape.op_type != "Reshape" or len(reshape.inputs) < 2 or reshape.inputs[1] is None:
            continue
        target = reshape.inputs[1].shape
        transpose = reshape.inputs[0].producer()
        if (target is None or target.rank() != 1 or not isinstance(target[0], int) or target[0] == 3
                or transpose is None or transpose.op_type != "Transpose"
                or tuple(transpose.attributes.get_ints("perm", ())) != (0, 2, 1, 3)):
            continue
        context = transpose.inputs[0].producer()
        weights = context.inputs[0].producer() if context is not None and context.op_type == "MatMul" else None
        if weights is None or weights.op_type != "Softmax":
            continue
        stem = f"{reshape.name or 'reshape'}_{split}_heads_merged"  # unique, even where nodes are unnamed
        to_3d = ir.Value(name=f"{stem}_shape", const_value=ir.tensor([0, 0, -1], ir.DataType.INT64))
        to_3d.shape, to_3d.type = ir.Shape([3]), ir.TensorType(ir.DataType.INT64)
        model.graph.register_initializer(to_3d)
        merged = ir.node("Reshape", [reshape.inputs[0], to_3d], name=stem)
        model.graph.insert_before(reshape, merged)
        reshape.replace_input_with(0, merged.outputs[0])
        split += 1
    return split


def fuse(model: ir.Model) -> tuple[ir.Model | None, dict[str, int]]:
    """``model`` with its attention fused in place (None when nothing matched) and the fused ops it
    added (``op → count``). An SDPA left unlowered rejects the stage (StageRejected)."""
    steps, fuse_sdpa = _fusion_steps()
    before = foreign_ops(model)
    muted = logging.root.manager.disable
    logging.disable(logging.WARNING)  # a pass never prints: the report says what fused
    try:
        # the rules check Q/K/V shapes: infer them where onnxruntime's fusions left values without one
        _merge_heads_in_two_steps(model)
        ir_passes.ShapeInferencePass(strict_mode=False)(model)
        if not fuse_sdpa(model, apply_shape_inference=True):
            return None, {}
        for step in steps:
            step(model)
    finally:
        logging.disable(muted)
    left = sum(1 for node in model.graph if node.domain == _TEMPORARY_DOMAIN)
    if left:
        raise StageRejected(f"{left} attention(s) matched but could not be lowered to an onnxruntime op "
                            "(head count or shapes unknown)")
    ir.passes.PassManager([ir_passes.RemoveUnusedNodesPass(), ir_passes.RemoveUnusedOpsetsPass()])(model)
    model.opset_imports.setdefault("com.microsoft", 1)
    added = {op.split("::", 1)[1]: n - before.get(op, 0) for op, n in foreign_ops(model).items()
             if n > before.get(op, 0)}
    return (model if added else None), added


def run_stage(try_stage, current: ir.Model, check, records: dict) -> ir.Model:
    """Runs :func:`fuse` as a checked stage through ``try_stage`` (``Optimize._try``) and records the
    fused ops of a kept result in the stage's report record (``fused_ops``)."""
    fused: dict[str, int] = {}

    def apply(model: ir.Model) -> ir.Model | None:
        result, added = fuse(model)
        fused.update(added)
        return result

    current, kept = try_stage(STAGE, DESCRIPTION, current, apply, check, records, functional=True)
    records[STAGE]["fused_ops"] = fused if kept else {}
    return current
