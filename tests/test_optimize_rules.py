"""mcomp's own rewrite rules (``passes/optimize/rules.py``, ``shape_rules.py``) and identity elimination.

Each rule is shown firing on a tiny model written in ONNX text (op types after, numeric
equality under onnxruntime, onnx.checker) and not firing where it must not (graph unchanged).
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
import onnxruntime as ort
import pytest
from onnxscript.rewriter import RewritePass, pattern

from mcomp.passes.optimize import rules, stages
from mcomp.passes.optimize.identity import IdentityElimination

RNG = np.random.default_rng(0)


def parse(text: str, **tensors: np.ndarray) -> ir.Model:
    """A model from ONNX text; ``tensors`` become the initializers of those names."""
    return ir.from_onnx_text(text, initializers=[ir.tensor(v, name=k) for k, v in tensors.items()])


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def rewrite(model: ir.Model, rule_list) -> bool:
    """Applies the rules once, then removes what they left unused; returns whether a rule fired."""
    fired = RewritePass(pattern.RewriteRuleSet(list(rule_list)))(model).modified
    ir_passes.RemoveUnusedNodesPass()(model)
    return fired


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def serialize(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()


def run(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_fires(model: ir.Model, rule_list, expected_ops: list[str], feeds: dict[str, np.ndarray]) -> ir.Model:
    """The rules change the model to ``expected_ops``; the outputs stay the same; the model checks."""
    original = serialize(model)
    assert rewrite(model, rule_list)
    assert op_types(model) == expected_ops
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    for want, got in zip(run(original, feeds), run(serialize(model), feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return model


def assert_unchanged(model: ir.Model, rule_list) -> None:
    before = op_types(model)
    assert not rewrite(model, rule_list)
    assert op_types(model) == before


# --- FuseConvBiasAdd ----------------------------------------------------------------------

CONV_ADD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,4,4,4] y) <float[4,3,3,3] w, float{bshape} b> {{
  c = Conv <pads=[1,1,1,1]> (x, w)
  y = Add({operands})
}}
"""


@pytest.mark.parametrize("bshape,operands", [("[1,4,1,1]", "c, b"), ("[4,1,1]", "b, c"), ("[1]", "c, b")])
def test_conv_bias_add_fuses(bshape, operands):
    b = randn(*json.loads(bshape))
    model = parse(CONV_ADD.format(bshape=bshape, operands=operands), w=randn(4, 3, 3, 3), b=b)
    assert_fires(model, rules.CONV_BIAS_RULES, ["Constant", "Conv"], {"x": randn(2, 3, 4, 4)})


def test_conv_bias_add_adds_to_an_existing_bias():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4,4] x) => (float[N,4,4,4] y) <float[4,3,3,3] w, float[4] b0, float[1,4,1,1] b> {
      c = Conv <pads=[1,1,1,1]> (x, w, b0)
      y = Add(c, b)
    }
    """
    model = parse(text, w=randn(4, 3, 3, 3), b0=randn(4), b=randn(1, 4, 1, 1))
    assert_fires(model, rules.CONV_BIAS_RULES, ["Constant", "Conv"], {"x": randn(2, 3, 4, 4)})


def test_conv_bias_add_keeps_a_tensor_that_broadcasts_along_width():
    # b of shape [4] broadcasts against [N, 4, 4, 4] along the last axis, not the channels
    model = parse(CONV_ADD.format(bshape="[4]", operands="c, b"), w=randn(4, 3, 3, 3), b=randn(4))
    assert_unchanged(model, rules.CONV_BIAS_RULES)


def test_conv_bias_add_keeps_a_conv_output_used_twice():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4,4] x) => (float[N,4,4,4] y, float[N,4,4,4] c) <float[4,3,3,3] w, float[1,4,1,1] b> {
      c = Conv <pads=[1,1,1,1]> (x, w)
      y = Add(c, b)
    }
    """
    assert_unchanged(parse(text, w=randn(4, 3, 3, 3), b=randn(1, 4, 1, 1)), rules.CONV_BIAS_RULES)


def test_conv_bias_add_keeps_a_non_constant_operand():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4,4] x, float[1,4,1,1] b) => (float[N,4,4,4] y) <float[4,3,3,3] w> {
      c = Conv <pads=[1,1,1,1]> (x, w)
      y = Add(c, b)
    }
    """
    assert_unchanged(parse(text, w=randn(4, 3, 3, 3)), rules.CONV_BIAS_RULES)


# --- FuseConvTransposeBiasAdd -------------------------------------------------------------

CONV_TRANSPOSE_ADD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,5,5] x) => (float[N,4,10,10] y) <float[4,2,2,2] w, float{bshape} b> {{
  c = ConvTranspose <strides=[2,2], group=2> (x, w)
  y = Add(c, b)
}}
"""


def test_conv_transpose_bias_add_fuses_with_groups():
    # output channels = W.shape[1] * group = 2 * 2
    model = parse(CONV_TRANSPOSE_ADD.format(bshape="[1,4,1,1]"), w=randn(4, 2, 2, 2), b=randn(1, 4, 1, 1))
    assert_fires(model, rules.CONV_BIAS_RULES, ["Constant", "ConvTranspose"], {"x": randn(2, 4, 5, 5)})


def test_conv_transpose_bias_add_keeps_a_tensor_that_is_not_per_channel():
    model = parse(CONV_TRANSPOSE_ADD.format(bshape="[10]"), w=randn(4, 2, 2, 2), b=randn(10))
    assert_unchanged(model, rules.CONV_BIAS_RULES)


def test_conv_bias_then_batchnorm_fold_in_one_stage():
    """The fuse-batchnorm stage folds the bias Add, then the BatchNormalization behind it."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4,5,5] x) => (float[N,4,10,10] y)
      <float[4,2,2,2] w, float[1,4,1,1] b, float[4] s, float[4] t, float[4] m, float[4] v> {
      c = ConvTranspose <strides=[2,2], group=2> (x, w)
      a = Add(c, b)
      y = BatchNormalization(a, s, t, m, v)
    }
    """
    model = parse(text, w=randn(4, 2, 2, 2), b=randn(1, 4, 1, 1), s=randn(4), t=randn(4), m=randn(4),
                  v=np.abs(randn(4)) + 0.5)
    original, feeds = serialize(model), {"x": randn(2, 4, 5, 5)}
    fuse_batchnorm = next(s for s in stages.PORTABLE_STAGES if s.name == "fuse-batchnorm")
    assert fuse_batchnorm.apply(model)
    assert op_types(model) == ["ConvTranspose"]
    np.testing.assert_allclose(run(serialize(model), feeds)[0], run(original, feeds)[0], rtol=1e-4, atol=1e-4)


# --- RemoveNeutralOperand -----------------------------------------------------------------

NEUTRAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float{xshape} x) => (float{xshape} y) <float{cshape} c, float{xshape} r> {{
  r = Relu(x)
  y = {op}({operands})
}}
"""


@pytest.mark.parametrize("op,neutral,operands", [("Mul", 1, "r, c"), ("Mul", 1, "c, r"), ("Add", 0, "c, r"),
                                                 ("Sub", 0, "r, c"), ("Div", 1, "r, c")])
def test_neutral_operand_removed(op, neutral, operands):
    text = NEUTRAL.format(xshape="[N,3,4]", cshape="[1,4]", op=op, operands=operands)
    model = parse(text, c=np.full((1, 4), neutral, np.float32))
    assert_fires(model, rules.ELIMINATION_RULES, ["Relu", "Identity"], {"x": randn(2, 3, 4)})


def test_neutral_operand_kept_when_broadcasting_grows_x():
    # [N,4] * ones[2,1,1] is [2,N,4]: the Mul is not a no-op
    text = NEUTRAL.format(xshape="[N,4]", cshape="[2,1,1]", op="Mul", operands="r, c")
    assert_unchanged(parse(text, c=np.ones((2, 1, 1), np.float32)), rules.ELIMINATION_RULES)


def test_neutral_operand_kept_when_x_dim_is_symbolic_and_c_is_not_one():
    text = NEUTRAL.format(xshape="[N,M]", cshape="[4]", op="Mul", operands="r, c")
    assert_unchanged(parse(text, c=np.ones(4, np.float32)), rules.ELIMINATION_RULES)


def test_neutral_operand_kept_when_not_neutral():
    text = NEUTRAL.format(xshape="[N,3,4]", cshape="[1]", op="Mul", operands="r, c")
    assert_unchanged(parse(text, c=np.full(1, 2.0, np.float32)), rules.ELIMINATION_RULES)


def test_neutral_operand_kept_when_shape_of_x_unknown():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4] x) => (float y) <float[1] c> {
      r = Relu(x)
      y = Mul(r, c)
    }
    """
    model = parse(text, c=np.ones(1, np.float32))
    model.graph.node(0).outputs[0].shape = None
    assert_unchanged(model, rules.ELIMINATION_RULES)


# --- MergeSlices --------------------------------------------------------------------------

SLICES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,6,8] x) => (float[N,2,4] y{extra_out}) <int64[1] s1, int64[1] e1, int64[1] a1, int64[1] s2, int64[1] e2, int64[1] a2> {{
  t = Slice(x, s1, e1, a1)
  y = Slice(t, s2, e2, a2)
}}
"""


def slices(s1, e1, a1, s2, e2, a2, extra_out=""):
    arrays = {k: np.array([v], np.int64) for k, v in dict(s1=s1, e1=e1, a1=a1, s2=s2, e2=e2, a2=a2).items()}
    return parse(SLICES.format(extra_out=extra_out), **arrays)


def test_slices_on_different_axes_merge():
    model = slices(1, 3, 1, 2, 6, -1)
    merged = assert_fires(model, rules.FUSION_RULES, ["Constant"] * 4 + ["Slice"], {"x": randn(2, 6, 8)})
    axes = merged.graph.node(4).inputs[3].const_value.numpy().tolist()
    assert axes == [1, 2]


def test_slices_on_the_same_axis_kept():
    assert_unchanged(slices(1, 5, 1, 1, 3, 1), rules.FUSION_RULES)


def test_slices_kept_when_the_first_has_other_consumers():
    text = SLICES.format(extra_out=", float[N,2,8] t")
    arrays = {k: np.array([v], np.int64) for k, v in dict(s1=1, e1=3, a1=1, s2=2, e2=6, a2=2).items()}
    assert_unchanged(parse(text, **arrays), rules.FUSION_RULES)


# --- MaterializeReshapeTarget -------------------------------------------------------------

RESHAPE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,6] x, float[M,K] z) => (float{out} y)
  <int64[1] zero, int64[1] one, int64[1] two, int64[1] m1, int64[1] six, int64 i1> {{
  {body}
  y = Reshape(x, t)
}}
"""
CONSTS = {**{k: np.array([v], np.int64) for k, v in dict(zero=0, one=1, two=2, m1=-1, six=6).items()},
          "i1": np.array(1, np.int64)}
SHAPE_RULES = rules.SHAPE_RULES


def reshape_model(body: str, out: str = "") -> ir.Model:
    used = {k: v for k, v in CONSTS.items() if re.search(rf"\b{k}\b", body)}
    return parse(RESHAPE.format(body=body, out=out), **used)


def target_of(model: ir.Model) -> list[int]:
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    return reshape.inputs[1].const_value.numpy().tolist()


def test_reshape_target_copies_own_dims():
    # Reshape(x, Concat(Slice(Shape(x), 0, 1), [-1])): N is x's own dim 0, so 0 ("copy") is exact
    model = reshape_model("sx = Shape(x)\n  d = Slice(sx, zero, one)\n  t = Concat <axis=0> (d, m1)", out="[N,24]")
    feeds = {"x": randn(2, 4, 6), "z": randn(2, 3)}
    assert_fires(model, SHAPE_RULES, ["Constant", "Reshape"], feeds)
    assert target_of(model) == [0, -1]


def test_reshape_target_static_dims_and_one_unknown():
    # [M (a dim of another tensor: unknown), 4 (static dim 1 of x, via Cast to int32 and back), 6]
    body = """sx = Shape(x)
  sz = Shape(z)
  a = Slice(sz, zero, one)
  b32 = Cast <to=6> (sx)
  b = Gather <axis=0> (b32, i1)
  bu = Unsqueeze(b, zero)
  b64 = Cast <to=7> (bu)
  t = Concat <axis=0> (a, b64, six)"""
    model = reshape_model(body, out="[M,4,6]")
    assert_fires(model, SHAPE_RULES, ["Constant", "Reshape"], {"x": randn(3, 4, 6), "z": randn(3, 5)})
    assert target_of(model) == [-1, 4, 6]


def test_reshape_target_two_unknowns_kept():
    model = reshape_model("sz = Shape(z)\n  a = Slice(sz, zero, two)\n  t = Concat <axis=0> (a, m1)")
    assert_unchanged(model, SHAPE_RULES)


def test_reshape_target_unknown_next_to_minus_one_kept():
    model = reshape_model("sz = Shape(z)\n  a = Slice(sz, zero, one)\n  t = Concat <axis=0> (a, m1, six)")
    assert_unchanged(model, SHAPE_RULES)


def test_reshape_target_computed_otherwise_kept():
    # an element computed by arithmetic has no known length: nothing to materialize
    model = reshape_model("sz = Shape(z)\n  a = Slice(sz, zero, one)\n  b = Slice(sz, one, two)\n"
                          "  c = Mul(a, b)\n  t = Concat <axis=0> (c, a, six)")
    assert_unchanged(model, SHAPE_RULES)


# --- IdentityElimination ------------------------------------------------------------------

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2] x) => (float[2] y) {
  a = Relu(x)
  i = Identity(a)
  y = If(c) <then_branch = then_g () => (float[2] o) { o = Identity(i) },
              else_branch = else_g () => (float[2] o2) { n = Neg(i)
                                                        o2 = Identity(n) }>
}
"""


def branch_ops(model: ir.Model, name: str) -> list[str]:
    if_node = next(n for n in model.graph if n.op_type == "If")
    return [n.op_type for n in if_node.attributes[name].as_graph()]


def test_identity_elimination_keeps_a_subgraph_output_from_the_outer_scope():
    model = parse(IF_MODEL)
    original = serialize(model)
    assert IdentityElimination()(model).modified
    assert op_types(model) == ["Relu", "If"]  # the Identity in the main graph is gone
    assert branch_ops(model, "then_branch") == ["Identity"]  # returns an outer value: must stay
    assert branch_ops(model, "else_branch") == ["Neg"]  # computed inside: renamed to the output
    x = randn(2)
    for c in (True, False):
        feeds = {"c": np.array(c), "x": x}
        np.testing.assert_array_equal(run(serialize(model), feeds)[0], run(original, feeds)[0])
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_identity_elimination_keeps_input_to_output_identity():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Identity(x) }
    """
    model = parse(text)
    assert not IdentityElimination()(model).modified
    assert op_types(model) == ["Identity"]


def test_identity_elimination_keeps_two_outputs_apart():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] a, float[2] b) {
      a = Relu(x)
      b = Identity(a)
    }
    """
    model = parse(text)
    assert not IdentityElimination()(model).modified
    assert [v.name for v in model.graph.outputs] == ["a", "b"]


def test_eliminate_stage_result_loads_with_if_subgraphs():
    model = parse(IF_MODEL)
    stages.eliminate(model)
    run(serialize(model), {"c": np.array(True), "x": randn(2)})  # onnxruntime loads and runs it


def test_a_scalar_neutral_operand_is_removed_whatever_the_shape_of_x():
    """A scalar broadcasts into any shape: onnxscript's rules removed such no-ops without a shape, and this
    rule, which replaced them (they were not exact), must too."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,4] x) => (float y) <float c> {
      r = Relu(x)
      y = Add(r, c)
    }
    """, c=np.array(0.0, np.float32))
    model.graph.node(0).outputs[0].shape = None
    assert rewrite(model, rules.ELIMINATION_RULES) and op_types(model) == ["Relu", "Identity"]


NEAR_NEUTRAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] log, float[N,4] prod, float[N,4] diff, float[N,4] ratio) <float eps, float one_ish,
                                                                                           float tiny, float div> {
  sq = Mul(x, x)
  padded = Add(sq, eps)
  log = Log(padded)
  prod = Mul(x, one_ish)
  diff = Sub(x, tiny)
  ratio = Div(x, div)
}
"""


@pytest.mark.parametrize("stage", ["fold_constants", "eliminate"])
def test_an_epsilon_is_not_removed_as_a_neutral_operand(stage):
    """onnxscript's no-op rules match a constant within abs 1e-8 / rel 1e-5, so ``Log(x² + 1e-10)`` (basic-pitch's
    log-magnitude) lost its epsilon: outputs off by 0.09 there, and ``-inf`` wherever x is 0. Neither folding
    stage removes an operand that is not exactly neutral, nor changes an output."""
    model = parse(NEAR_NEUTRAL, eps=np.array(1e-10, np.float32), one_ish=np.array(1.000001, np.float32),
                  tiny=np.array(1e-9, np.float32), div=np.array(1.000001, np.float32))
    original = serialize(model)
    getattr(stages, stage)(model)
    assert sorted(op_types(model)) == sorted(["Mul", "Add", "Log", "Mul", "Sub", "Div"])
    feeds = {"x": np.concatenate([np.zeros((1, 4), np.float32), randn(2, 4)])}
    for want, got in zip(run(original, feeds), run(serialize(model), feeds), strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)
