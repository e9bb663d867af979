"""Symmetric int4 blocks along an embedding table's rows, in GatherBlockQuantized's layout, on every core.

Why our own: onnxruntime's ``MatMulNBitsQuantizer`` quantizes a Gather's table in numpy over the whole
table at once (``quantize_ndarray``: per block of columns, a full-table quotient, its rounding and its
int8 copy, then the packing's temporaries). On an 8192×8192 float table that took ~3 s on one core and
held several table-sized temporaries. The arithmetic is per row, so it runs here on slices of rows,
each in its own thread (numpy releases the GIL), with the same numpy operations in the same order:
the same bytes, which the tests check against onnxruntime's quantizer.

In each block of ``block`` consecutive values of a row, the value of largest magnitude (the minimum on
a tie) gives ``scale = peak / -8``; ``q = clip(round(x / scale), -8, 7)`` with numpy's halves to even (0
where the scale is 0). Two values to a byte, the even column in the low nibble, rows one after another;
``scales`` is ``[rows, columns / block]``.
"""

from __future__ import annotations

import numpy as np

from mcomp.kernels.blockwise import in_column_slices


def supported(table: np.ndarray, block: int) -> bool:
    """The cases computed here; onnxruntime computes the others (a last, shorter block)."""
    return (table.ndim == 2 and table.dtype == np.float32 and block >= 16 and block & (block - 1) == 0
            and table.shape[1] % block == 0 and table.size > 0)


def quantize(table: np.ndarray, block: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``table`` [rows, columns] → (``packed`` uint8 [rows · columns / 2],
    ``scales`` float32 [rows, columns / block])."""
    if not supported(table, block):
        raise ValueError(f"int4 table blocks here take a 2-D float32 table whose rows are whole blocks of a power "
                         f"of two ≥ 16; got {table.dtype} {table.shape}, block {block}")
    rows, columns = table.shape
    packed = np.empty((rows, columns // 2), dtype=np.uint8)
    scales = np.empty((rows, columns // block), dtype=np.float32)

    # the helper splits a range into slices of 256 (rows here: 8 MB of an 8192-wide float table)
    in_column_slices(rows, lambda start, stop: _rows(table, block, start, stop, packed, scales), threads)
    return packed.reshape(-1), scales


def _rows(table, block, start, stop, packed, scales) -> None:
    x = table[start:stop].reshape(stop - start, table.shape[1] // block, block)
    high, low = x.max(axis=2, keepdims=True), x.min(axis=2, keepdims=True)
    peak = np.where(np.abs(high) > np.abs(low), high, low)
    scale = peak / -8.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale == 0, 0, x / scale).round().clip(-8, 7).astype(np.int8)
    q = q.reshape(stop - start, -1)
    packed[start:stop] = ((q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales[start:stop] = scale.reshape(stop - start, -1)
