"""Symmetric per-column int8 weights, as onnxruntime's dynamic quantizer makes them for MatMulInteger. Pure numpy.

Why our own: onnxruntime's ``quantize_dynamic`` quantizes a MatMul's B one column at a time in Python
(``quantize_weight_per_channel_impl``: ~4 s per 8192×8192 layer), and first loads, deep-copies and
reloads the whole model (three copies of every weight: 4.5× a 0.75 GiB model in peak memory). Here a
weight is read in column slices, from memory or from its memory-mapped file, on every core.

The bytes are onnxruntime's, which the tests check against its quantizer: per column, the range
``[min(x, 0), max(x, 0)]`` made symmetric, ``scale = 2·absmax / (qmax − qmin)`` in float64 stored as
float32 (1.0 where it is below float32's smallest normal), then ``q = clip(round_half_even(x / scale),
−128, 127)`` in float32, with ``[qmin, qmax]`` = ±127, or ±64 with ``reduce_range`` (7-bit weights, for
x86 CPUs without VNNI, whose u8×s8 products saturate).
"""

from __future__ import annotations

import numpy as np

from mcomp.kernels.blockwise import in_column_slices


def quantize(weight: np.ndarray, reduce_range: bool, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] float32 → (int8 [K, N], float32 scales [N]); the zero points are all 0."""
    if weight.ndim != 2 or weight.dtype != np.float32:
        raise ValueError(f"per-column int8 takes a 2-D float32 weight; got {weight.dtype} {weight.shape}")
    columns = weight.shape[1]
    out = np.empty(weight.shape, dtype=np.int8)
    scales = np.empty(columns, dtype=np.float32)
    span = 128.0 if reduce_range else 254.0  # qmax − qmin
    in_column_slices(columns, lambda start, stop: _columns(weight, span, start, stop, out, scales), threads)
    return out, scales


def _columns(weight, span: float, start: int, stop: int, out: np.ndarray, scales: np.ndarray) -> None:
    x = np.array(weight[:, start:stop], dtype=np.float32, order="C")  # a copy: the weight is not changed
    absmax = np.maximum(np.abs(np.minimum(x.min(axis=0), 0)), np.abs(np.maximum(x.max(axis=0), 0)))
    wide = absmax.astype(np.float64) * 2.0 / span
    scale = wide.astype(np.float32)
    scale[wide < np.finfo(np.float32).tiny] = 1.0
    np.divide(x, scale, out=x)
    np.round(x, out=x)
    np.clip(x, -128, 127, out=x)
    out[:, start:stop] = x.astype(np.int8)
    scales[start:stop] = scale
