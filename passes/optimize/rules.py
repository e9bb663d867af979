"""mcomp's own rewrite rules, for fusions the onnxscript rule set does not have.

Each rule is a ``RewriteRuleClassBase``: ``pattern`` (what to match), ``check`` (when it is
safe, with a reason when not), ``rewrite`` (the replacement).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase


class FuseConvBiasAdd(RewriteRuleClassBase):
    """Replaces ``Add(Conv(X, W), B)`` (B constant, one value per output channel) with ``Conv(X, W, B)``."""

    def pattern(self, op, x, w, bias):
        return op.Add(op.Conv(x, w, _allow_other_inputs=False, _outputs=["conv_out"]), bias)

    def check(self, context, x, w, bias, conv_out, **_):
        result = MatchResult()
        if w.const_value is None or bias.const_value is None:
            return result.fail("weight or added tensor is not a constant")
        if len(conv_out.uses()) != 1 or conv_out.is_graph_output():
            return result.fail("the Conv output has other consumers")
        if _channel_vector(bias.const_value.numpy(), w.const_value.shape[0], len(w.const_value.shape)) is None:
            return result.fail("added tensor is not one value per output channel")
        return result

    def rewrite(self, op, x, w, bias, conv_out, **_):
        conv = conv_out.producer()
        channels, rank = w.const_value.shape[0], len(w.const_value.shape)
        values = _channel_vector(bias.const_value.numpy(), channels, rank).astype(w.const_value.dtype.numpy())
        new_bias = op.initializer(ir.tensor(values, name=f"{conv.name or 'conv'}_bias"))
        return op.Conv(x, w, new_bias, **{k: v for k, v in conv.attributes.items()})


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


RULES = [FuseConvBiasAdd.rule()]
