"""Per-tensor asymmetric uint8 tables, as onnxruntime's dynamic quantizer makes a Gather's table. Pure numpy.

Why our own: onnxruntime's ``quantize_data`` flattens the table and computes in whole-table
temporaries (float32 quotients, then the rounded copy): several copies of a 0.5 GiB embedding
table, one core. Here the range is one pass and the quantization a second, over row slices of the
table as it lies (in memory or mapped from its file), on every core.

The bytes are onnxruntime's, which the tests check against its quantizer: the range
``[min(x, 0), max(x, 0)]`` (never symmetric, never reduced: ``quantize_activation`` asks for
neither), ``scale = (rmax − rmin) / 255`` in float64 stored as float32 (1.0, zero point 0, where it
is below float32's smallest normal), ``zero_point = round_half_even(0 − rmin / scale)`` with the
float64 scale, then ``q = clip(round_half_even(x / scale) + zero_point, 0, 255)`` in float32.
"""

from __future__ import annotations

import numpy as np

from mcomp.kernels.blockwise import in_column_slices


def quantize(table: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.float32, np.uint8]:
    """``table`` float32 of any shape → (uint8 of its shape, scale, zero point)."""
    if table.dtype != np.float32 or table.ndim == 0 or table.size == 0:
        raise ValueError(f"a uint8 table here is a non-empty float32 array; got {table.dtype} {table.shape}")
    rows = table.reshape(table.shape[0], -1)  # a view: row slices are contiguous ranges of the table
    lows = np.zeros(rows.shape[0], np.float32)
    highs = np.zeros(rows.shape[0], np.float32)

    def extremes(start: int, stop: int) -> None:
        lows[start:stop] = rows[start:stop].min(axis=1)
        highs[start:stop] = rows[start:stop].max(axis=1)

    in_column_slices(rows.shape[0], extremes, threads)  # slices of rows here: the helper only splits a range
    scale, zero_point = parameters(lows.min(), highs.max())
    out = np.empty(rows.shape, np.uint8)

    def to_uint8(start: int, stop: int) -> None:
        x = np.divide(rows[start:stop], scale, dtype=np.float32)
        np.round(x, out=x)
        x += np.float32(zero_point)
        np.clip(x, 0, 255, out=x)
        out[start:stop] = x.astype(np.uint8)

    in_column_slices(rows.shape[0], to_uint8, threads)
    return out.reshape(table.shape), scale, zero_point


def parameters(low: np.float32, high: np.float32) -> tuple[np.float32, np.uint8]:
    """onnxruntime's ``compute_scale_zp`` for uint8 ``[0, 255]``, asymmetric, from a table's min and max."""
    rmin, rmax = min(np.float32(low), np.float32(0)), max(np.float32(high), np.float32(0))
    wide = (np.float64(rmax) - np.float64(rmin)) / 255.0
    if wide < np.finfo(np.float32).tiny:
        return np.float32(1.0), np.uint8(0)
    return np.float32(wide), np.uint8(np.round(0.0 - np.float64(rmin) / wide))
