"""Reductions (ReduceSum ... ReduceLogSumExp) and ArgMax/ArgMin.

The axes come from the ``axes`` attribute, or from an input from opset 13 (ReduceSum) or
18 (the others); integer sums keep the input's integer type (torch would widen them to
int64).
"""

from __future__ import annotations

import torch

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.ops.common import _ints


def _reduce_impl(op: str, x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    int_sum = not x.dtype.is_floating_point and x.dtype != torch.bool
    if op == "ReduceSum":
        return torch.sum(x, dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceMean":
        return torch.mean(x, dims, keep)
    if op == "ReduceMax":
        return torch.amax(x, dims, keep)
    if op == "ReduceMin":
        return torch.amin(x, dims, keep)
    if op == "ReduceProd":
        for d in sorted(dims, reverse=True):
            x = torch.prod(x, d, keep, dtype=x.dtype if int_sum else None)
        return x
    if op == "ReduceL1":
        return torch.sum(x.abs(), dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceL2":
        return torch.linalg.vector_norm(x, 2, dims, keep)
    if op == "ReduceSumSquare":
        return torch.sum(x * x, dims, keep, dtype=x.dtype if int_sum else None)
    if op == "ReduceLogSum":
        return torch.log(torch.sum(x, dims, keep))
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dims, keep)
    raise AssertionError(op)


@_op("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
     "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def _reduce(n):
    keep, noop = bool(n.attr("keepdims", 1)), n.attr("noop_with_empty_axes", 0)
    from_input = n.opset >= (13 if n.op == "ReduceSum" else 18)
    attr_axes = None if from_input else n.attr("axes")
    op = n.op

    def f(ctx, x, axes=None):
        ax = _ints(axes) if from_input else attr_axes
        if not ax:
            if noop:
                return (x,)
            ax = list(range(x.dim()))
        if x.dim() == 0:
            return (x,) if op not in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum") else (
                _reduce_impl(op, x.reshape(1), [0], False),)
        return (_reduce_impl(op, x, sorted(a % x.dim() for a in ax), keep),)

    return f


@_op("ArgMax", "ArgMin")
def _argmax(n):
    axis, keep, last = n.attr("axis", 0), bool(n.attr("keepdims", 1)), n.attr("select_last_index", 0)
    fn = torch.argmax if n.op == "ArgMax" else torch.argmin

    def f(ctx, x):
        a = axis % x.dim()
        if last:
            i = fn(x.flip(a), a, keep)
            return (x.shape[a] - 1 - i,)
        return (fn(x, a, keep),)

    return f
