"""Symmetric block-wise weight quantization in MatMulNBits' layout, on every core. Pure numpy.

Why our own: onnxruntime's ``quantize_matmul_4bits``/``8bits`` (what its ``MatMulNBitsQuantizer``
calls per layer) runs on one core and holds the GIL: 1.3–1.8 s per 8192×8192 layer, and two layers
in two threads take twice as long as one. numpy's array operations release the GIL, so column
slices of one layer run in parallel here: 0.48 s for that layer on 2 cores.

The result is the same bytes as onnxruntime's (its MLAS ``BlockwiseQuantizer`` with symmetric
ranges), which the tests check against it: in each block of ``block`` consecutive rows of a column,
the value of largest magnitude (the larger half on a tie) maps to ``-2^(bits-1)``, so
``scale = peak / -2^(bits-1)``; then ``q = clamp(roundf(x / scale + 2^(bits-1)), 0, 2^bits - 1)``
with ``roundf``'s halves away from zero and the reciprocal multiplied, as MLAS computes it.
Packed column-major: ``packed[n, block_index]`` holds the block's values, two to a byte for 4 bits
(the even row in the low nibble).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

COLUMNS = 256  # columns per task: 8 MB of a 8192-row float layer, measured as fast as 128–512


def supported(weight: np.ndarray, block: int, bits: int) -> bool:
    """The cases computed here; others go to onnxruntime's kernel (rows padded to a whole block, 2 bits).
    Non-finite weights are found while quantizing (``NonFinite``), not by a pass of their own."""
    return (bits in (4, 8) and weight.ndim == 2 and weight.dtype == np.float32 and block % 2 == 0
            and weight.shape[0] % block == 0 and weight.size > 0)


class NonFinite(ValueError):
    """A NaN or infinity among the weights: onnxruntime's range scan skips a NaN where numpy's min and
    max carry it, so such a weight is left to onnxruntime's kernel."""


def quantize(weight: np.ndarray, block: int, bits: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] → (``packed`` uint8 [N, K/block, block·bits/8], ``scales`` float32 [N, K/block])."""
    if not supported(weight, block, bits):
        raise ValueError(f"block-wise quantization here takes a 2-D float32 weight with rows a multiple of "
                         f"the block, and 4 or 8 bits; got {weight.dtype} {weight.shape}, block {block}, {bits} bits")
    rows, columns = weight.shape
    blocks = rows // block
    packed = np.empty((columns, blocks, block * bits // 8), dtype=np.uint8)
    scales = np.empty((columns, blocks), dtype=np.float32)
    in_column_slices(columns, lambda start, stop: _columns(weight, block, bits, start, stop, packed, scales), threads)
    return packed, scales


def in_column_slices(columns: int, task, threads: int | None = None) -> None:
    """``task(start, stop)`` over slices of ``COLUMNS`` columns, on every core (numpy releases the GIL);
    the first error a task raises is raised here."""
    starts = range(0, columns, COLUMNS)
    workers = max(1, min(threads or os.cpu_count() or 1, len(starts)))
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda start: task(start, min(start + COLUMNS, columns)), starts):
            pass


def _columns(weight, block, bits, start, stop, packed, scales) -> None:
    mid = np.float32(1 << (bits - 1))
    # a view of the columns: [block index, row in the block, column]
    x = weight[:, start:stop].reshape(weight.shape[0] // block, block, stop - start)
    high, low = x.max(axis=1), x.min(axis=1)
    if not (np.isfinite(high).all() and np.isfinite(low).all()):  # a NaN or an infinity in a block shows here
        raise NonFinite(f"a NaN or an infinity in columns {start}–{stop - 1}")
    peak = np.where(np.abs(high) > np.abs(low), high, low)
    scale = peak / -mid
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    y = x * reciprocal[:, None, :]
    y += mid
    rounded = np.trunc(y)
    y -= rounded  # the fraction, exact in float; roundf: a half or more rounds up (below 0 the clamp gives 0)
    rounded += y >= 0.5
    np.clip(rounded, 0, (1 << bits) - 1, out=rounded)
    q = rounded.astype(np.uint8).transpose(2, 0, 1)  # [column, block index, row]
    packed[start:stop] = q[..., 0::2] | (q[..., 1::2] << 4) if bits == 4 else q
    scales[start:stop] = scale.T
