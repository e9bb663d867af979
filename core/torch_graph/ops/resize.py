"""Pad, Resize, Upsample and GridSample: ops that resample or extend spatial axes.

Resize (and Upsample, which is Resize with fixed settings) works one axis at a time, with
the source coordinates computed in float32 as onnxruntime does, for every coordinate
transformation mode and the nearest, linear and cubic modes; the index maps and weights
are built with numpy, the gathers and sums run in torch (so gradients flow to the input).
Pad's reflect, edge and wrap modes gather with a precomputed index map.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.errors import _Unsupported
from mcomp.torch_graph.ops.common import _ints, _torch_pad


def _pad_index(n: int, b: int, e: int, mode: str) -> np.ndarray:
    i = np.arange(-b, n + e)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


@_op("Pad")
def _pad(n):
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise _Unsupported(f"mode={mode}")
    old = n.opset < 11
    attr_pads, attr_value = n.attr("pads") if old else None, n.attr("value", 0.0)

    def f(ctx, x, pads=None, value=None, axes=None):
        r = x.dim()
        p = attr_pads if old else _ints(pads)
        if old:
            v = attr_value
        else:
            v = value.reshape(-1)[0].item() if value is not None and value.numel() else 0
        ax = list(range(r)) if axes is None else [a % r for a in _ints(axes)]
        begins, ends = [0] * r, [0] * r
        for j, a in enumerate(ax):
            begins[a], ends[a] = p[j], p[j + len(ax)]
        if mode == "constant":
            return (F.pad(x, _torch_pad(begins, ends), value=v),)
        for a in range(r):
            if begins[a] or ends[a]:
                idx = torch.from_numpy(_pad_index(x.shape[a], begins[a], ends[a], mode)).to(x.device)
                x = x.index_select(a, idx)
        return (x,)

    return f


def _orig_coords(ctm: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """Input coordinates of the output positions along one axis, in float32 like onnxruntime."""
    f32 = np.float32
    x = np.arange(out_len, dtype=f32)
    s = f32(scale)
    if ctm == "half_pixel":
        return (x + f32(0.5)) / s - f32(0.5)
    if ctm == "half_pixel_symmetric":
        adj = f32(out_len) / (s * f32(in_len))
        offset = f32(in_len) / f32(2) * (f32(1) - adj)
        return offset + (x + f32(0.5)) / s - f32(0.5)
    if ctm == "pytorch_half_pixel":
        return (x + f32(0.5)) / s - f32(0.5) if out_len > 1 else np.zeros(out_len, f32)
    if ctm == "align_corners":
        return np.zeros(out_len, f32) if out_len == 1 else x * f32(in_len - 1) / f32(out_len - 1)
    if ctm == "asymmetric":
        return x / s
    if ctm == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / s
    if ctm == "tf_crop_and_resize":
        a, b = f32(roi[0]), f32(roi[1])
        if out_len > 1:
            return a * f32(in_len - 1) + x * (b - a) * f32(in_len - 1) / f32(out_len - 1)
        return np.full(out_len, f32(0.5) * (a + b) * f32(in_len - 1), f32)
    raise ValueError(f"coordinate_transformation_mode={ctm}")


def _nearest_index(xo: np.ndarray, mode: str, down: bool) -> np.ndarray:
    if mode == "round_prefer_floor":
        t = np.trunc(xo)
        return np.where(xo == t + 0.5, t, np.sign(xo) * np.floor(np.abs(xo) + 0.5))
    if mode == "round_prefer_ceil":
        return np.sign(xo) * np.floor(np.abs(xo) + 0.5)
    if mode == "floor":
        return np.floor(xo)
    if mode == "ceil":
        return np.ceil(xo)
    if mode == "simple":  # Upsample and Resize-10 in onnxruntime
        return np.ceil(xo) if down else np.trunc(xo)
    raise ValueError(f"nearest_mode={mode}")


def _cubic_coeffs(s: np.ndarray, a: float) -> np.ndarray:
    """Weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``s``."""
    s = s.astype(np.float64)
    t = [s + 1, s, 1 - s, 2 - s]
    w0 = ((a * t[0] - 5 * a) * t[0] + 8 * a) * t[0] - 4 * a
    w1 = ((a + 2) * t[1] - (a + 3)) * t[1] * t[1] + 1
    w2 = ((a + 2) * t[2] - (a + 3)) * t[2] * t[2] + 1
    w3 = ((a * t[3] - 5 * a) * t[3] + 8 * a) * t[3] - 4 * a
    return np.stack([w0, w1, w2, w3], -1)


def _along(w: np.ndarray, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return torch.from_numpy(np.ascontiguousarray(w)).to(device=x.device, dtype=x.dtype).reshape(shape)


def _resize_axis(x, axis, out_len, scale, roi, mode, ctm, nearest_mode, cubic_a, exclude, extrap):
    in_len = x.shape[axis]
    xo = _orig_coords(ctm, out_len, in_len, scale, roi)
    outside = None
    if ctm == "tf_crop_and_resize":
        bad = (xo < 0) | (xo > in_len - 1)
        outside = bad if bad.any() else None
    dev = x.device
    if mode == "nearest":
        idx = np.clip(_nearest_index(xo, nearest_mode, scale < 1), 0, in_len - 1).astype(np.int64)
        y = x.index_select(axis, torch.from_numpy(idx).to(dev))
    elif mode == "linear":
        if ctm != "tf_crop_and_resize":
            xo = np.clip(xo, 0, in_len - 1)
        i0 = np.clip(np.floor(xo), 0, in_len - 1).astype(np.int64)
        i1 = np.minimum(i0 + 1, in_len - 1)
        w = (xo - i0).astype(np.float32)
        a = x.index_select(axis, torch.from_numpy(i0).to(dev))
        b = x.index_select(axis, torch.from_numpy(i1).to(dev))
        y = a * _along(1 - w, x, axis) + b * _along(w, x, axis)
    else:  # cubic
        base = np.floor(xo).astype(np.int64)
        coeffs = _cubic_coeffs(xo - base, cubic_a)
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if exclude:
            coeffs = np.where((taps < 0) | (taps > in_len - 1), 0.0, coeffs)
            coeffs = coeffs / coeffs.sum(-1, keepdims=True)
        taps = np.clip(taps, 0, in_len - 1)
        y = None
        for j in range(4):
            term = x.index_select(axis, torch.from_numpy(taps[:, j].copy()).to(dev)) * _along(
                coeffs[:, j].astype(np.float32), x, axis)
            y = term if y is None else y + term
    if outside is not None:
        y = torch.where(_along(outside, x, axis).bool(), torch.full_like(y, extrap), y)
    return y


def _resize(x, scales, sizes, roi, axes, mode, ctm, nearest_mode, cubic_a, exclude, extrap, policy):
    r = x.dim()
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    in_sz = [x.shape[a] for a in axes]
    if sizes is not None:
        if policy != "stretch":
            ratios = [np.float32(s) / np.float32(i) for s, i in zip(sizes, in_sz)]
            sc = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(math.floor(float(sc) * i + 0.5)) for i in in_sz]
            scales = [sc] * len(axes)
        else:
            scales = [np.float32(s) / np.float32(i) for s, i in zip(sizes, in_sz)]
        out_sz = list(sizes)
    else:
        out_sz = [int(np.float32(i) * np.float32(s)) for i, s in zip(in_sz, scales)]
    for j, a in enumerate(axes):
        rj = (roi[j], roi[j + len(axes)]) if roi is not None else (0.0, 1.0)
        if out_sz[j] == in_sz[j] and float(scales[j]) == 1.0 and ctm != "tf_crop_and_resize":
            continue
        x = _resize_axis(x, a, out_sz[j], float(scales[j]), rj, mode, ctm, nearest_mode, cubic_a, exclude, extrap)
    return x


@_op("Resize")
def _resize_op(n):
    mode = n.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise _Unsupported(f"mode={mode}")
    if n.attr("antialias", 0):
        raise _Unsupported("antialias=1")
    if n.opset < 11:
        ctm, nearest_mode = "asymmetric", "simple"
    else:
        ctm = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = n.attr("nearest_mode", "round_prefer_floor")
    cubic_a, exclude = n.attr("cubic_coeff_a", -0.75), n.attr("exclude_outside", 0)
    extrap, policy, axes = n.attr("extrapolation_value", 0.0), n.attr("keep_aspect_ratio_policy", "stretch"), n.attr("axes")
    args = (mode, ctm, nearest_mode, cubic_a, exclude, extrap, policy)

    if n.opset < 11:
        return lambda ctx, x, scales: (_resize(x, scales.tolist(), None, None, None, *args),)

    def f(ctx, x, roi=None, scales=None, sizes=None):
        sc = scales.tolist() if scales is not None and scales.numel() else None
        sz = _ints(sizes) if sizes is not None and sizes.numel() else None
        rr = roi.tolist() if roi is not None and roi.numel() else None
        return (_resize(x, sc, sz, rr, axes, *args),)

    return f


@_op("Upsample")
def _upsample(n):
    mode = n.attr("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise _Unsupported(f"mode={mode}")
    args = (mode, "asymmetric", "simple", -0.75, 0, 0.0, "stretch")
    attr_scales = n.attr("scales")
    if attr_scales is not None:
        return lambda ctx, x: (_resize(x, attr_scales, None, None, None, *args),)
    return lambda ctx, x, scales: (_resize(x, scales.tolist(), None, None, None, *args),)


@_op("GridSample")
def _grid_sample(n):
    mode = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
            "cubic": "bicubic"}.get(n.attr("mode", "bilinear" if n.opset < 20 else "linear"))
    pm, ac = n.attr("padding_mode", "zeros"), bool(n.attr("align_corners", 0))
    if mode is None:
        raise _Unsupported(f"mode={n.attr('mode')}")
    return lambda ctx, x, grid: (F.grid_sample(x, grid, mode, pm, ac),)
