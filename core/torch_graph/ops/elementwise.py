"""Element-wise ops and activations, casts, Softmax/LogSoftmax/Hardmax, Identity, Dropout.

Most are one torch call with one output (registered through ``_one``); the rest read their
attributes at construction.  Dropout is the identity (its mask output all true), also
under ``module.train()``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mcomp.torch_graph.compiler import _OPS, _op
from mcomp.torch_graph.ops.common import _one
from mcomp.torch_graph.tensors import _torch_dtype


def _div(a, b):
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a, b):
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": _pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor, "MatMul": torch.matmul,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan,
    "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh,
    "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not, "IsNaN": torch.isnan, "Softsign": F.softsign,
    "Softplus": F.softplus, "HardSwish": F.hardswish, "Mish": F.mish, "Det": torch.linalg.det,
    "Where": torch.where, "NonZero": lambda x: torch.nonzero(x).t().contiguous(),
}.items():
    _OPS[_name] = _one(_fn)


@_op("Identity")
def _identity(n):
    return lambda ctx, x: (x,)


@_op("Dropout")
def _dropout(n):
    return lambda ctx, x, *rest: (x, torch.ones_like(x, dtype=torch.bool))


@_op("Mod")
def _mod(n):
    fmod = n.attr("fmod", 0)
    return lambda ctx, a, b: (torch.fmod(a, b) if fmod else torch.remainder(a, b),)


@_op("IsInf")
def _isinf(n):
    neg, pos = n.attr("detect_negative", 1), n.attr("detect_positive", 1)

    def f(ctx, x):
        if neg and pos:
            return (torch.isinf(x),)
        if pos:
            return (torch.isposinf(x),)
        if neg:
            return (torch.isneginf(x),)
        return (torch.zeros_like(x, dtype=torch.bool),)

    return f


@_op("Min", "Max", "Sum", "Mean")
def _variadic(n):
    op = {"Min": torch.minimum, "Max": torch.maximum, "Sum": torch.add, "Mean": torch.add}[n.op]
    mean = n.op == "Mean"

    def f(ctx, *xs):
        y = functools.reduce(op, xs)
        return (y / len(xs) if mean else y,)

    return f


@_op("LeakyRelu")
def _leaky(n):
    a = n.attr("alpha", 0.01)
    return lambda ctx, x: (F.leaky_relu(x, a),)


@_op("Elu")
def _elu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (F.elu(x, a),)


@_op("Celu")
def _celu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (F.celu(x, a),)


@_op("Selu")
def _selu(n):
    a = n.attr("alpha", 1.67326319217681884765625)
    g = n.attr("gamma", 1.05070102214813232421875)
    return lambda ctx, x: (g * torch.where(x > 0, x, a * (torch.exp(x) - 1)),)


@_op("ThresholdedRelu")
def _thresholded_relu(n):
    a = n.attr("alpha", 1.0)
    return lambda ctx, x: (torch.where(x > a, x, torch.zeros_like(x)),)


@_op("HardSigmoid")
def _hard_sigmoid(n):
    a, b = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    return lambda ctx, x: (torch.clamp(x * a + b, 0.0, 1.0),)


@_op("Shrink")
def _shrink(n):
    bias, lambd = n.attr("bias", 0.0), n.attr("lambd", 0.5)

    def f(ctx, x):
        zero = torch.zeros_like(x)
        return (torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)),)

    return f


@_op("PRelu")
def _prelu(n):
    return lambda ctx, x, slope: (torch.where(x >= 0, x, x * slope),)


@_op("Gelu")
def _gelu(n):
    approx = n.attr("approximate", "none")
    return lambda ctx, x: (F.gelu(x, approximate=approx),)


@_op("Clip")
def _clip(n):
    if n.opset < 11:
        lo, hi = n.attr("min", None), n.attr("max", None)
        if lo is None and hi is None:
            return lambda ctx, x: (x,)
        return lambda ctx, x: (torch.clamp(x, lo, hi),)

    def scalar(t):  # clamp with number bounds is several times faster than with tensors
        return t.item() if t is not None and t.device.type == "cpu" and not t.requires_grad else t

    def f(ctx, x, lo=None, hi=None):
        if lo is not None and lo.numel() == 0:
            lo = None
        if hi is not None and hi.numel() == 0:
            hi = None
        if lo is None and hi is None:
            return (x,)
        if (lo is None or lo.numel() == 1) and (hi is None or hi.numel() == 1):
            slo, shi = scalar(lo), scalar(hi)
            if not isinstance(slo, torch.Tensor) and not isinstance(shi, torch.Tensor):
                return (torch.clamp(x, slo, shi),)
        return (torch.clamp(x, lo, hi),)

    return f


@_op("Cast")
def _cast(n):
    dt = _torch_dtype(n.attr("to"))
    return lambda ctx, x: (x.to(dt),)


@_op("CastLike")
def _cast_like(n):
    return lambda ctx, x, like: (x.to(like.dtype),)


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(n):
    new = n.opset >= 13
    axis = n.attr("axis", -1 if new else 1)
    op = n.op

    def apply(x, dim):
        if op == "Softmax":
            return torch.softmax(x, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(x, dim)
        idx = torch.argmax(x, dim, keepdim=True)
        return torch.zeros_like(x).scatter_(dim, idx, 1)

    def f(ctx, x):
        if x.dim() == 0:
            return (apply(x.reshape(1), 0).reshape(()),)
        a = axis % x.dim()
        if new or a == x.dim() - 1:
            return (apply(x, a),)
        return (apply(x.flatten(a), -1).reshape(x.shape),)  # coerced to 2-D before opset 13

    return f
