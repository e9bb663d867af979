"""mcomp's own rewrite rules, for fusions the onnxscript rule set does not have.

Each rule is a ``RewriteRuleClassBase``: ``pattern`` (what to match), ``check`` (when it is
safe, with a reason when not), ``rewrite`` (the replacement). The lists at the end feed the
stages (``stages.py``): ``SHAPE_RULES`` (Reshape targets computed from shapes, in
``shape_rules.py``), ``ELIMINATION_RULES`` (no-op nodes), ``CONV_BIAS_RULES``, ``FUSION_RULES``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from mcomp.passes.optimize.shape_rules import MaterializeReshapeTarget


class FuseConvBiasAdd(RewriteRuleClassBase):
    """Replaces ``Add(Conv(X, W[, B]), C)`` (C constant, one value per output channel) with ``Conv(X, W, B + C)``."""

    op_type = "Conv"

    def pattern(self, op, x, w, bias):
        conv = getattr(op, self.op_type)(x, w, _allow_other_inputs=True, _outputs=["conv_out"])
        return op.Add(conv, bias)

    def check(self, context, x, w, bias, conv_out, **_):
        result = MatchResult()
        conv = conv_out.producer()
        old_bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if not _is_constant(w) or not _is_constant(bias):
            return result.fail("weight or added tensor is not a constant")
        if old_bias is not None and not _is_constant(old_bias):
            return result.fail("the existing bias is not a constant")
        if len(conv_out.uses()) != 1 or conv_out.is_graph_output():
            return result.fail("the convolution output has other consumers")
        if self._added(conv, w, bias) is None:
            return result.fail("added tensor is not one value per output channel")
        return result

    def rewrite(self, op, x, w, bias, conv_out, **_):
        conv = conv_out.producer()
        new_bias = op.Constant(value=ir.tensor(self._added(conv, w, bias)))
        return getattr(op, self.op_type)(x, w, new_bias, **dict(conv.attributes))

    def _channels(self, conv: ir.Node, w: ir.Value) -> int:
        return w.const_value.shape[0]

    def _added(self, conv: ir.Node, w: ir.Value, bias: ir.Value) -> np.ndarray | None:
        """The new bias (old bias plus the added tensor), or None when the tensor is not per channel."""
        weight = w.const_value
        channels = self._channels(conv, w)
        values = _channel_vector(bias.const_value.numpy(), channels, len(weight.shape))
        if values is None:
            return None
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            values = conv.inputs[2].const_value.numpy().astype(np.float64) + values
        return values.astype(weight.dtype.numpy())


class FuseConvTransposeBiasAdd(FuseConvBiasAdd):
    """Replaces ``Add(ConvTranspose(X, W[, B]), C)`` (C one value per output channel) with ``ConvTranspose(X, W, B + C)``."""

    op_type = "ConvTranspose"

    def _channels(self, conv: ir.Node, w: ir.Value) -> int:
        return w.const_value.shape[1] * conv.attributes.get_int("group", 1)


def _is_constant(value: ir.Value) -> bool:
    """Whether the value is fixed: a constant, and not a graph input (whose initializer is only a default)."""
    return value.const_value is not None and not value.is_graph_input()


def _channel_vector(b: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``b`` as one value per channel when it broadcasts against [N, C, spatial...] along C only."""
    if b.size == 1 and b.ndim <= rank:
        return np.full(channels, b.reshape(-1)[0], dtype=b.dtype)
    if b.ndim > rank or (0 < b.ndim < rank - 1):
        return None
    full = b.reshape((1,) * (rank - b.ndim) + b.shape)
    if full.shape[0] != 1 or full.shape[1] not in (1, channels) or any(d != 1 for d in full.shape[2:]):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).copy()


class RemoveNeutralOperand(RewriteRuleClassBase):
    """Replaces ``Mul(X, 1)``, ``Div(X, 1)``, ``Add(X, 0)``, ``Sub(X, 0)`` (a constant of any shape) with ``X``.

    onnxscript's own rules match a scalar constant only (exporters often write ``[1]``), and within a
    tolerance (abs 1e-8): an epsilon ``+ 1e-10`` before a Log matched ``+ 0``. This one is exact.
    """

    def __init__(self, op_type: str, neutral: int) -> None:
        super().__init__(f"Remove{op_type}By{neutral}")
        self.op_type, self.neutral = op_type, neutral

    def pattern(self, op, x, c):
        return getattr(op, self.op_type)(x, c)

    def check(self, context, x, c, **_):
        result = MatchResult()
        if not _is_constant(c):
            return result.fail("the other operand is not a constant")
        if c.const_value.size > 1024 or not np.all(c.const_value.numpy() == self.neutral):
            return result.fail(f"the constant is not all {self.neutral}")
        if c.const_value.shape.rank() == 0:  # a scalar broadcasts into any shape
            pass
        elif x.shape is None:
            return result.fail("the shape of X is unknown, so broadcasting may change it")
        elif not _broadcasts_into(c.const_value.shape, x.shape):
            return result.fail("broadcasting against the constant changes the shape of X")
        if x.dtype is not None and x.dtype != c.const_value.dtype:
            return result.fail("the operand types differ")
        return result

    def rewrite(self, op, x, c, **_):
        return op.Identity(x)


def _broadcasts_into(small: ir.Shape, big: ir.Shape) -> bool:
    """Whether broadcasting a tensor of shape ``small`` against ``big`` leaves ``big`` as it is."""
    if len(small) > len(big):
        return False
    return all(s == 1 or (isinstance(s, int) and s == b) for s, b in zip(reversed(list(small)), reversed(list(big))))


class MergeSlices(RewriteRuleClassBase):
    """Replaces ``Slice(Slice(X, s1, e1, a1, p1), s2, e2, a2, p2)`` on disjoint axes with one ``Slice(X, ...)``."""

    def pattern(self, op, x, starts1, ends1, starts2, ends2):
        inner = op.Slice(x, starts1, ends1, _allow_other_inputs=True, _outputs=["inner"])
        return op.Slice(inner, starts2, ends2, _allow_other_inputs=True, _outputs=["outer"])

    def check(self, context, x, inner, outer, **_):
        result = MatchResult()
        if len(inner.uses()) != 1 or inner.is_graph_output():
            return result.fail("the first Slice has other consumers")
        first, second = _slice_params(inner.producer(), x), _slice_params(outer.producer(), x)
        if first is None or second is None:
            return result.fail("starts, ends, axes or steps are not constants (or an axis is negative and the rank unknown)")
        if set(first[2]) & set(second[2]):
            return result.fail("the two slices share an axis")
        return result

    def rewrite(self, op, x, inner, outer, **_):
        first, second = _slice_params(inner.producer(), x), _slice_params(outer.producer(), x)
        merged = [op.Constant(value=ir.tensor(np.array(a + b, dtype=np.int64))) for a, b in zip(first, second)]
        return op.Slice(x, *merged)


def _slice_params(node: ir.Node, x: ir.Value) -> tuple[list[int], ...] | None:
    """(starts, ends, axes, steps) of a Slice as lists, axes non-negative; None when not all constant."""
    values = []
    for i in range(1, 5):
        value = node.inputs[i] if len(node.inputs) > i else None
        if value is None:
            values.append(None)
            continue
        if not _is_constant(value):
            return None
        values.append([int(v) for v in value.const_value.numpy().reshape(-1)])
    starts, ends, axes, steps = values
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if any(a < 0 for a in axes):
        if x.shape is None:
            return None
        axes = [a + len(x.shape) if a < 0 else a for a in axes]
    return starts, ends, axes, steps


SHAPE_RULES = [MaterializeReshapeTarget.rule()]

ELIMINATION_RULES = [
    *RemoveNeutralOperand.rule("Mul", 1).commute(),
    *RemoveNeutralOperand.rule("Add", 0).commute(),
    RemoveNeutralOperand.rule("Sub", 0),
    RemoveNeutralOperand.rule("Div", 1),
]

CONV_BIAS_RULES = [*FuseConvBiasAdd.rule().commute(), *FuseConvTransposeBiasAdd.rule().commute()]

FUSION_RULES = [MergeSlices.rule()]
