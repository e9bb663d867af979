"""Quantization (QDQ): QuantizeLinear/DequantizeLinear as fake-quantization.

Q rounds (half to even) in the forward pass with a straight-through estimator (identity
gradient for the rounding, the clamp to the zero-point type's range passes no gradient
outside it), and keeps the quantized values in floating point when every consumer is a
DequantizeLinear, so a quantized student stays trainable.  Per-tensor, per-axis and
blocked scales.
"""

from __future__ import annotations

import onnx_ir as ir
import torch

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.errors import _Unsupported
from mcomp.torch_graph.ops.common import _bcast_to_axis
from mcomp.torch_graph.tensors import _D, _QRANGE, _torch_dtype


def _qparam(p: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against ``x`` (per-tensor, per-axis or blocked)."""
    if p.numel() == 1:
        return p.reshape(())
    a = axis % x.dim()
    if block and p.dim() == x.dim():
        return p.repeat_interleave(block, dim=a).narrow(a, 0, x.shape[a])
    return _bcast_to_axis(p, x.dim(), a)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _value_dtype(v: ir.Value | None) -> ir.DataType | None:
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.dtype
    return v.dtype


@_op("QuantizeLinear")
def _quantize(n):
    axis, block = n.attr("axis", 1), n.attr("block_size", 0)
    node = n.node
    qtype = _value_dtype(node.inputs[2]) if n.nin > 2 and node.inputs[2] is not None else None
    if qtype is None:
        out_dt = n.attr("output_dtype", 0)
        qtype = ir.DataType(out_dt) if out_dt else (_value_dtype(node.outputs[0]) or _D.UINT8)
    if qtype not in _QRANGE:
        raise _Unsupported(f"quantized type {qtype.name}")
    qmin, qmax = _QRANGE[qtype]
    out = node.outputs[0]
    fake = not out.is_graph_output() and all(
        u.node.op_type == "DequantizeLinear" and u.idx == 0 for u in out.uses())
    tdt = _torch_dtype(qtype)

    def f(ctx, x, scale, zp=None):
        q = _round_ste(x / _qparam(scale, x, axis, block))
        if zp is not None:
            q = q + _qparam(zp, x, axis, block).to(q.dtype)
        q = torch.clamp(q, qmin, qmax)
        return (q if fake else q.detach().to(tdt),)

    return f


@_op("DequantizeLinear")
def _dequantize(n):
    axis, block = n.attr("axis", 1), n.attr("block_size", 0)

    def f(ctx, x, scale, zp=None):
        xf = x if x.dtype == scale.dtype else x.to(scale.dtype)
        if zp is not None:
            xf = xf - _qparam(zp, x, axis, block).to(xf.dtype)
        return (xf * _qparam(scale, x, axis, block),)

    return f
