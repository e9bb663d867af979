"""Entropy coding of quantization indices: Huffman code lengths, coded sizes, the Shannon bound. Pure numpy.

Deep Compression stores each layer's cluster indices Huffman-coded: frequent indices get
short codes. ``huffman_lengths`` builds the code lengths from symbol counts (the code itself
follows canonically from the lengths, so lengths are all a size estimate needs); the coded
size is within one bit per symbol of the entropy, ``entropy_bits`` ≤ ``huffman_bits`` <
``entropy_bits`` + n.
"""

from __future__ import annotations

import heapq

import numpy as np


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length in bits of each symbol (0 for symbols that never occur; 1 for a lone symbol)."""
    counts = np.asarray(counts, dtype=np.int64).ravel()
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = [int(i) for i in np.flatnonzero(counts)]
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    # Each heap entry: (weight, tie-breaker, symbols under this subtree); merging deepens them by one.
    heap = [(int(counts[i]), i, [i]) for i in present]
    heapq.heapify(heap)
    order = counts.size
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        lengths[s1] += 1
        lengths[s2] += 1
        heapq.heappush(heap, (w1 + w2, order, s1 + s2))
        order += 1
    return lengths


def huffman_bits(counts: np.ndarray) -> int:
    """Total bits of the Huffman-coded symbols (the code table not included)."""
    counts = np.asarray(counts, dtype=np.int64).ravel()
    return int(np.dot(counts, huffman_lengths(counts)))


def entropy_bits(counts: np.ndarray) -> float:
    """The Shannon bound: n · H(p) bits for n symbols with empirical distribution p."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(-n * np.sum(p * np.log2(p)))


def coded_bytes(indices: np.ndarray, symbols: int) -> dict[str, int | float]:
    """Sizes of ``indices`` (values in [0, symbols)): fixed-width, Huffman-coded (with a table of one
    length byte per symbol), and the entropy bound, in bytes."""
    indices = np.asarray(indices).ravel()
    counts = np.bincount(indices, minlength=symbols)
    width = max(1, int(np.ceil(np.log2(max(symbols, 2)))))
    return {"fixed": int(np.ceil(indices.size * width / 8)),
            "huffman": int(np.ceil(huffman_bits(counts) / 8)) + symbols,
            "entropy": entropy_bits(counts) / 8}
