"""Quantization math on arrays: affine parameters, quantize/dequantize, ranges, error measures. Pure numpy.

The min-max scheme of the source documents maps ``[min, max]`` onto ``2^bits`` levels,
``q = round((x − min) / (max − min) · (2^bits − 1))``, and back ``x̂ = min + q · scale``.
``affine_params`` gives the same mapping as a (scale, zero point) pair, the form ONNX's
QuantizeLinear uses (``q = clamp(round(x / scale) + zero_point)``), signed or unsigned,
symmetric or not, with the range widened to hold 0 exactly (so that zero padding stays exact).
"""

from __future__ import annotations

import numpy as np


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer range of a ``bits``-bit type; ``narrow`` drops the most negative value (symmetric int8: ±127)."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def minmax_quantize(x: np.ndarray, bits: int = 8, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """The source documents' formula: ``q = round((x − min) / (max − min) · (2^bits − 1))``, unsigned."""
    x = np.asarray(x, dtype=np.float64)
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    levels = (1 << bits) - 1
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.int64)
    return np.clip(np.round((np.clip(x, lo, hi) - lo) / (hi - lo) * levels), 0, levels).astype(np.int64)


def minmax_dequantize(q: np.ndarray, lo: float, hi: float, bits: int = 8) -> np.ndarray:
    levels = (1 << bits) - 1
    return (lo + np.asarray(q, dtype=np.float64) * (hi - lo) / levels).astype(np.float32)


def affine_params(lo, hi, bits: int = 8, signed: bool = False, symmetric: bool = False):
    """Scale and zero point mapping ``[lo, hi]`` (widened to include 0) onto the integer range.

    Works element-wise on arrays of ranges (per channel). Symmetric ranges use ±max|x| with the
    zero point at the middle of the type (0 for signed, 2^(bits−1) for unsigned).
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    qmin, qmax = qrange(bits, signed, narrow=symmetric and signed)
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = amax / ((qmax - qmin) / 2.0)
        zero = np.full(np.shape(scale), 0 if signed else (qmax + 1) // 2, dtype=np.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero = np.clip(np.round(qmin - lo / safe), qmin, qmax).astype(np.int64)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero tensor: any scale represents it exactly
    return scale.astype(np.float32), zero


def quantize(x: np.ndarray, scale, zero_point, bits: int = 8, signed: bool = False, axis: int | None = None) -> np.ndarray:
    """``clamp(round(x / scale) + zero_point)`` (round half to even, as ONNX QuantizeLinear)."""
    scale, zero_point = _along(scale, x, axis), _along(zero_point, x, axis)
    qmin, qmax = qrange(bits, signed)
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point, qmin, qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    scale, zero_point = _along(scale, q, axis), _along(zero_point, q, axis)
    return ((np.asarray(q, dtype=np.float64) - zero_point) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, bits: int = 8, signed: bool = True, symmetric: bool = True,
                  axis: int | None = None) -> np.ndarray:
    """Quantize then dequantize with min-max parameters, per tensor or per slice along ``axis``."""
    x = np.asarray(x, dtype=np.float32)
    if axis is None:
        lo, hi = x.min(initial=0.0), x.max(initial=0.0)
    else:
        moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        lo, hi = moved.min(axis=1, initial=0.0), moved.max(axis=1, initial=0.0)
    scale, zero = affine_params(lo, hi, bits, signed, symmetric)
    return dequantize(quantize(x, scale, zero, bits, signed, axis), scale, zero, axis)


def block_fake_quantize(w: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = True) -> np.ndarray:
    """Block-wise weight quantization along the first axis (K of a MatMul's [K, N] weight), as MatMulNBits."""
    w = np.asarray(w, dtype=np.float32)
    k = w.shape[0]
    out = np.empty_like(w)
    for start in range(0, k, block_size):
        block = w[start:start + block_size]
        lo, hi = block.min(axis=0), block.max(axis=0)
        scale, zero = affine_params(lo, hi, bits, signed=symmetric, symmetric=symmetric)
        out[start:start + block_size] = dequantize(quantize(block, scale, zero, bits, symmetric), scale, zero)
    return out


def percentile_range(x: np.ndarray, percentile: float = 99.999, symmetric: bool = False) -> tuple[float, float]:
    """The range that clips the ``100 − percentile`` % most extreme values (of |x| when symmetric)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if symmetric:
        amax = float(np.percentile(np.abs(x), percentile))
        return -amax, amax
    tail = (100.0 - percentile) / 2.0
    return float(np.percentile(x, tail)), float(np.percentile(x, 100.0 - tail))


def noise_ratio(ref: np.ndarray, approx: np.ndarray) -> float:
    """Noise power over signal power, ‖approx − ref‖² / ‖ref‖² (0 for an exact copy)."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    err = np.asarray(approx, dtype=np.float64).ravel() - ref
    signal = float(ref @ ref)
    noise = float(err @ err)
    if signal == 0.0:
        return 0.0 if noise == 0.0 else float("inf")
    return noise / signal


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf for an exact copy)."""
    return ratio_to_db(noise_ratio(ref, approx))


def ratio_to_db(ratio: float) -> float:
    if ratio <= 0.0:
        return float("inf")
    if ratio == float("inf"):
        return float("-inf")
    return -10.0 * float(np.log10(ratio))


def _along(param, x, axis):
    param = np.asarray(param, dtype=np.float64)
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * np.ndim(x)
    shape[axis] = -1
    return param.reshape(shape)
