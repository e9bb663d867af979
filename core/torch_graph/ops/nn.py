"""Convolution, normalization, dense layers (Gemm, Einsum) and pooling.

BatchNormalization always runs in inference mode with the stored mean/variance, also
under ``module.train()``: the running statistics are never updated by training (the ONNX
model keeps them as they were).  Pads that torch's convolution and pooling cannot take
directly (asymmetric ones, including those ``auto_pad`` SAME_* computes) are applied with
``F.pad`` before the op; ConvTranspose pads or crops its output instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.errors import _Unsupported, UnsupportedOp
from mcomp.torch_graph.ops.common import _torch_pad


# ---------------------------------------------------------------------------
# convolution, normalization, dense
# ---------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _same_pads(in_sp, k, s, d, upper: bool) -> tuple[list[int], list[int]]:
    begins, ends = [], []
    for i, sz in enumerate(in_sp):
        out = -(-sz // s[i])
        total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - sz)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return begins, ends


def _conv_pads(auto_pad: str, pads, in_sp, k, s, d):
    nsp = len(in_sp)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sp, k, s, d, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID" or not pads:
        return [0] * nsp, [0] * nsp
    return list(pads[:nsp]), list(pads[nsp:])


@_op("Conv")
def _conv(n):
    auto_pad = n.attr("auto_pad", "NOTSET")
    dil, group, pads, strides = n.attr("dilations"), n.attr("group", 1), n.attr("pads"), n.attr("strides")

    def f(ctx, x, w, b=None):
        nsp = w.dim() - 2
        if nsp not in _CONV:
            raise UnsupportedOp(f"Conv with {nsp} spatial dims")
        k = w.shape[2:]
        s = strides or [1] * nsp
        d = dil or [1] * nsp
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        if begins != ends:
            x = F.pad(x, _torch_pad(begins, ends))
            begins = [0] * nsp
        return (_CONV[nsp](x, w, b, s, begins, d, group),)

    return f


@_op("ConvTranspose")
def _conv_transpose(n):
    auto_pad = n.attr("auto_pad", "NOTSET")
    dil, group, pads, strides = n.attr("dilations"), n.attr("group", 1), n.attr("pads"), n.attr("strides")
    out_pad, out_shape = n.attr("output_padding"), n.attr("output_shape")

    def f(ctx, x, w, b=None):
        nsp = w.dim() - 2
        if nsp not in _CONVT:
            raise UnsupportedOp(f"ConvTranspose with {nsp} spatial dims")
        k = w.shape[2:]
        in_sp = x.shape[2:]
        s = strides or [1] * nsp
        d = dil or [1] * nsp
        op = list(out_pad or [0] * nsp)
        if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(out_shape[-nsp:]) if out_shape else [in_sp[i] * s[i] for i in range(nsp)]
            begins, ends = [], []
            for i in range(nsp):
                total = s[i] * (in_sp[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - target[i]
                if auto_pad == "SAME_UPPER":
                    begins.append(total // 2)
                    ends.append(total - total // 2)
                else:
                    begins.append(total - total // 2)
                    ends.append(total // 2)
        elif auto_pad == "VALID" or not pads:
            begins, ends = [0] * nsp, [0] * nsp
        else:
            begins, ends = list(pads[:nsp]), list(pads[nsp:])
        if begins == ends and all(p >= 0 for p in begins) and all(o < max(si, di) for o, si, di in zip(op, s, d)):
            return (_CONVT[nsp](x, w, b, s, begins, op, group, d),)
        y = _CONVT[nsp](x, w, None, s, 0, 0, group, d)
        y = F.pad(y, _torch_pad([-p for p in begins], [o - p for o, p in zip(op, ends)]))
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nsp)
        return (y,)

    return f


@_op("BatchNormalization")
def _batch_norm(n):
    if n.opset < 9 and n.attr("spatial", 1) == 0:
        raise _Unsupported("spatial=0 (per-activation statistics)")
    eps = n.attr("epsilon", 1e-5)

    def f(ctx, x, scale, bias, mean, var, *_):
        if not (mean.requires_grad or var.requires_grad) and x.dim() >= 2:
            y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
        else:
            shape = [1, -1] + [1] * (x.dim() - 2)
            inv = torch.rsqrt(var + eps) * scale
            y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
        return (y, mean, var, mean, var)

    return f


@_op("InstanceNormalization")
def _instance_norm(n):
    eps = n.attr("epsilon", 1e-5)
    return lambda ctx, x, scale, bias: (F.instance_norm(x, weight=scale, bias=bias, eps=eps),)


@_op("LayerNormalization")
def _layer_norm(n):
    axis, eps = n.attr("axis", -1), n.attr("epsilon", 1e-5)
    extra = n.has_output(1) or n.has_output(2)

    def f(ctx, x, scale, bias=None):
        a = axis % x.dim()
        ns = tuple(x.shape[a:])
        if not extra and tuple(scale.shape) == ns and (bias is None or tuple(bias.shape) == ns):
            return (F.layer_norm(x, ns, scale, bias, eps),)
        dims = tuple(range(a, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv * scale
        if bias is not None:
            y = y + bias
        return (y, mean, inv)

    return f


@_op("GroupNormalization")
def _group_norm(n):
    groups, eps, old = n.attr("num_groups"), n.attr("epsilon", 1e-5), n.opset < 21

    def f(ctx, x, scale, bias):
        c = x.shape[1]
        if old and scale.numel() == groups and groups != c:  # opset 18: one scale per group
            scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
        return (F.group_norm(x, groups, scale, bias, eps),)

    return f


@_op("LRN")
def _lrn(n):
    size, alpha, beta, k = n.attr("size"), n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    front = (size - 1) // 2

    def f(ctx, x):
        sq = (x * x).unsqueeze(1)
        pad = [0, 0] * (x.dim() - 2) + [front, size - 1 - front]
        sq = F.pad(sq, pad).squeeze(1)
        window = sq.unfold(1, size, 1).sum(-1)
        return (x / (k + alpha / size * window) ** beta,)

    return f


@_op("LpNormalization")
def _lp_norm(n):
    axis, p = n.attr("axis", -1), n.attr("p", 2)
    return lambda ctx, x: (x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True),)


@_op("Gemm")
def _gemm(n):
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)

    def f(ctx, a, b, c=None):
        if ta:
            a = a.t()
        if tb and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1 and c.shape[0] == b.shape[0]):
            return (F.linear(a, b, c),)
        y = a @ (b.t() if tb else b)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return (y,)

    return f


@_op("Einsum")
def _einsum(n):
    eq = n.attr("equation").replace(" ", "")
    return lambda ctx, *xs: (torch.einsum(eq, *xs),)


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@_op("MaxPool")
def _max_pool(n):
    k = n.attr("kernel_shape")
    nsp = len(k)
    if nsp not in _MAXPOOL:
        raise _Unsupported(f"{nsp} spatial dims")
    if n.attr("storage_order", 0) and n.has_output(1):
        raise _Unsupported("storage_order=1 with Indices")
    s, d, ceil = n.attr("strides") or [1] * nsp, n.attr("dilations") or [1] * nsp, bool(n.attr("ceil_mode", 0))
    want_idx = n.has_output(1)
    auto_pad, pads = n.attr("auto_pad", "NOTSET"), n.attr("pads")

    def f(ctx, x):
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        ok = begins == ends and all(p <= ((ki - 1) * di + 1) // 2 for p, ki, di in zip(begins, k, d))
        if not ok:
            if want_idx:
                raise UnsupportedOp("MaxPool Indices with asymmetric or large pads")
            x = F.pad(x, _torch_pad(begins, ends), value=float("-inf"))
            begins = [0] * nsp
        if not want_idx:
            return (_MAXPOOL[nsp](x, k, s, begins, d, ceil),)
        y, idx = _MAXPOOL[nsp](x, k, s, begins, d, ceil, return_indices=True)
        plane = math.prod(x.shape[2:])
        offs = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * nsp)
        return (y, idx + offs * plane)

    return f


@_op("AveragePool")
def _avg_pool(n):
    k = n.attr("kernel_shape")
    nsp = len(k)
    if nsp not in _AVGPOOL:
        raise _Unsupported(f"{nsp} spatial dims")
    d = n.attr("dilations") or [1] * nsp
    if any(v != 1 for v in d):
        raise _Unsupported("dilations")
    s, ceil = n.attr("strides") or [1] * nsp, bool(n.attr("ceil_mode", 0))
    include = bool(n.attr("count_include_pad", 0))
    auto_pad, pads = n.attr("auto_pad", "NOTSET"), n.attr("pads")

    def f(ctx, x):
        begins, ends = _conv_pads(auto_pad, pads, x.shape[2:], k, s, d)
        if begins == ends and all(p <= ki // 2 for p, ki in zip(begins, k)):
            return (_AVGPOOL[nsp](x, k, s, begins, ceil, include),)
        tp = _torch_pad(begins, ends)
        y = _AVGPOOL[nsp](F.pad(x, tp), k, s, 0, ceil, True)
        if include:
            return (y,)
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), tp)
        return (y / _AVGPOOL[nsp](ones, k, s, 0, ceil, True),)

    return f


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(n):
    mx = n.op == "GlobalMaxPool"

    def f(ctx, x):
        dims = tuple(range(2, x.dim()))
        return (x.amax(dims, keepdim=True) if mx else x.mean(dims, keepdim=True),)

    return f


@_op("GlobalLpPool")
def _global_lp(n):
    p = n.attr("p", 2)
    return lambda ctx, x: (torch.linalg.vector_norm(x, p, dim=tuple(range(2, x.dim())), keepdim=True),)
