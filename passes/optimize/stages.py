"""The stages of graph optimization, each an in-place function ``ir.Model -> bool`` (modified).

Built on onnx-ir's passes and the onnxscript optimizer/rewriter rather than protobuf edits.
Stages are small and separately checked, so that one whose result changes the outputs can
be dropped while the others are kept (see ``verify.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnxscript import optimizer
from onnxscript.rewriter import RewritePass, pattern
from onnxscript.rewriter.rules import common as common_rules

from mcomp.graph import all_nodes
from mcomp.passes.optimize import rules as mcomp_rules
from mcomp.passes.optimize.identity import IdentityElimination


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    apply: Callable[[ir.Model], bool]


def _run_passes(model: ir.Model, *passes: ir.passes.PassBase) -> bool:
    result = ir.passes.PassManager(list(passes))(model)
    return bool(result.modified)


def _rewrite(rules, rounds: int = 2, infer_shapes: bool = False) -> Callable[[ir.Model], bool]:
    """Applies ``rules`` until nothing changes (at most ``rounds`` times), optionally inferring shapes after each.

    A rewrite can enable another on a node the same sweep has passed (a bias Add folded into a
    ConvTranspose, then the BatchNormalization after it), and rules that read shapes expose
    shapes downstream that the next round needs: the stage converges by itself rather than
    over the pass's outer iterations, each of which costs a numerical check.
    """
    rule_set = pattern.RewriteRuleSet(list(rules))

    def apply(model: ir.Model) -> bool:
        modified = False
        for _ in range(rounds):
            if not _run_passes(model, RewritePass(rule_set)):
                break
            modified = True
            # rules write new tensors as Constant nodes; other rules want initializers
            _run_passes(model, ir_passes.RemoveUnusedNodesPass(),
                        ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1))
            if infer_shapes:
                _run_passes(model, ir_passes.ShapeInferencePass(strict_mode=False))
        if modified:
            _reshape_attributes_for_opset(model)
        return modified

    return apply


RESHAPE_ALLOWZERO_OPSET = 14  # Reshape's allowzero attribute exists from this opset on


def _reshape_attributes_for_opset(model: ir.Model) -> None:
    """Removes ``allowzero`` from the Reshapes that onnxscript's rules write into a model of opset < 14
    (they write ``allowzero=1`` whatever the opset), where removing it keeps the meaning: allowzero 0,
    or a constant target with no 0 in it. onnxruntime refused such a model ("Unrecognized attribute:
    allowzero"), and both folding stages were dropped on ddddocr's opset-12 recognizer. A 0 that
    allowzero makes a real zero-size dim cannot be written below opset 14: that stage is still refused."""
    if model.opset_imports.get("", RESHAPE_ALLOWZERO_OPSET) >= RESHAPE_ALLOWZERO_OPSET:
        return
    for node in all_nodes(model):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or "allowzero" not in node.attributes:
            continue
        target = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if node.attributes.get_int("allowzero", 0) == 0 or (target is not None and 0 not in target.numpy()):
            node.attributes.pop("allowzero")


@contextmanager
def _outputs_as_computed(model: ir.Model):
    """The graph outputs' declared shapes hidden while shapes are inferred and folded, then put back.
    A declaration is the exporter's word, not the graph's: ddddocr's recognizer declares ``[1, seqlen]``
    for logits it computes as ``[T, 1, 8210]``, and folding trusted it, turning its last Reshape's target
    into ``[1, -1]`` (outputs ``[1, 164200]``: the stage was dropped by the check)."""
    declared = [(value, value.shape) for value in model.graph.outputs]
    for value, _ in declared:
        value.shape = None
    try:
        yield
    finally:
        for value, shape in declared:
            value.shape = shape


def fold_constants(model: ir.Model) -> bool:
    """Constant folding, shape inference and dead-node removal (onnxscript's optimizer, its no-op rules exact)."""
    before = _fingerprint(model)
    with _outputs_as_computed(model):
        _optimize(model)
    _run_passes(model, ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1))
    _reshape_attributes_for_opset(model)
    return _fingerprint(model) != before


def _optimize(model: ir.Model, iterations: int = 2) -> None:
    """onnxscript's ``optimizer.optimize`` (its passes in its order), with its rules that drop ``Add(x, 0)``,
    ``Sub(x, 0)``, ``Mul(x, 1)`` and ``Div(x, 1)`` replaced by mcomp's exact ones: onnxscript matches a
    pattern's constant within abs 1e-8 and rel 1e-5, so the ``+ 1e-10`` before basic-pitch's Log was
    removed as a ``+ 0`` (outputs off by 0.09; on silence, log 0). Where this onnxscript has no such
    private names, its own optimizer runs (the stage is still checked against the input's outputs)."""
    try:
        from onnxscript import rewriter
        from onnxscript.optimizer import _constant_folding as folding
        from onnxscript.rewriter.rules.common import _no_op
    except ImportError:
        optimizer.optimize(model, num_iterations=iterations, onnx_shape_inference=True)
        return
    inexact = [r for r in _no_op.rules if r not in (_no_op.dropout_zero_rule, _no_op.dropout_inference_rule)]
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r not in inexact] + mcomp_rules.ELIMINATION_RULES
    ir.passes.Sequential(
        ir_passes.InlinePass(),
        ir.passes.PassManager([folding.FoldConstantsPass(
                                   shape_inference=True,
                                   input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                   output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
                               RewritePass(rules), ir_passes.RemoveUnusedNodesPass(),
                               ir_passes.RemoveUnusedFunctionsPass(), ir_passes.RemoveUnusedOpsetsPass()],
                              steps=iterations, early_stop=True),
        ir_passes.RemoveUnusedNodesPass(),
        ir_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        ir_passes.LiftSubgraphInitializersToMainGraphPass(), ir_passes.DeduplicateInitializersPass(),
        ir_passes.CommonSubexpressionEliminationPass(), ir_passes.OutputFixPass(), ir_passes.NameFixPass(),
    )(model)


def _fold_shapes(model: ir.Model) -> bool:
    with _outputs_as_computed(model):
        return _rewrite([common_rules.materialize_reshape_shape_rule, *mcomp_rules.SHAPE_RULES], rounds=8,
                        infer_shapes=True)(model)


def eliminate(model: ir.Model) -> bool:
    """Identity/Dropout/no-op elimination, common subexpressions, duplicate initializers, dead nodes."""
    before = _fingerprint(model)
    # not onnxscript's add_0/sub_0/mul_by_1/div_by_1 rules: they match within a tolerance (see ``_optimize``)
    _rewrite([common_rules.dropout_inference_rule, common_rules.dropout_zero_rule, common_rules.no_op_cast_rule,
              common_rules.no_op_expand_rule, common_rules.no_op_transpose_rule,
              *mcomp_rules.ELIMINATION_RULES])(model)
    # not onnx-ir's IdentityEliminationPass: it makes If/Loop bodies return outer-scope values (see identity.py)
    _run_passes(model, IdentityElimination(), ir_passes.CommonSubexpressionEliminationPass(),
                ir_passes.DeduplicateInitializersPass(), ir_passes.RemoveUnusedNodesPass(),
                ir_passes.RemoveUnusedFunctionsPass(), ir_passes.RemoveUnusedOpsetsPass())
    return _fingerprint(model) != before


def _fingerprint(model: ir.Model) -> tuple:
    """A cheap change detector: node count and op sequence over all graphs."""
    ops = tuple(n.op_type for n in all_nodes(model))
    return len(ops), ops, len(model.graph.initializers)


PORTABLE_STAGES: tuple[Stage, ...] = (
    Stage("fold-constants", "constant folding, shape inference, dead nodes", fold_constants),
    # each round of shape folding exposes shapes to the next, and to the no-op rules of 'eliminate'
    Stage("fold-shapes", "Reshape targets computed from shapes (Shape→Slice/Gather→Concat) made constant",
          _fold_shapes),
    Stage("eliminate", "identity/dropout/no-op elimination, CSE, duplicate initializers", eliminate),
    Stage("fuse-batchnorm", "per-channel bias Adds and BatchNormalization folded into Conv/ConvTranspose/Gemm",
          _rewrite([*mcomp_rules.CONV_BIAS_RULES, common_rules.fuse_batchnorm_into_conv_rule,
                    common_rules.fuse_batchnorm_into_conv_transpose_rule, common_rules.fuse_batchnorm_into_gemm_rule])),
    Stage("fuse", "common fusions: Pad into Conv, Relu/Clip chains, Min/Max to Clip, reshape/slice simplifications",
          _rewrite([common_rules.fuse_pad_into_conv_rule, common_rules.normalize_pad_format_conv_rule,
                    common_rules.successive_relu_rule, common_rules.successive_clip_rule,
                    common_rules.successive_clip_relu_rule, common_rules.successive_relu_clip_rule,
                    common_rules.min_max_rule, common_rules.max_min_rule, common_rules.min_min_rule,
                    common_rules.max_max_rule, common_rules.cast_cast_rule, common_rules.reshape_reshape_rule,
                    common_rules.unsqueeze_unsqueeze_rule, common_rules.transpose_transpose_rule,
                    common_rules.collapse_slice_rule, common_rules.collapse_slice2_rule,
                    common_rules.squeeze_reshape_1d_rule,
                    common_rules.remove_optional_bias_from_conv_rule,
                    common_rules.remove_optional_bias_from_conv_transpose_rule,
                    common_rules.remove_optional_bias_from_gemm_rule,
                    *mcomp_rules.FUSION_RULES])),
)
