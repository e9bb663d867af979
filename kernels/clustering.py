"""1-D k-means for weight sharing (Deep Compression, Han et al. 2016). Pure numpy.

A layer's weights are replaced by ``k = 2^bits`` shared values (the codebook) and a
``bits``-bit index per weight. Deep Compression initializes the centroids linearly over
[min, max] (better than density-based initialization for the rare large weights, which
matter most); k-means++ is offered too. Assignment in 1-D is a sorted search against
the midpoints between centroids, so each iteration is O(n log k).
"""

from __future__ import annotations

import numpy as np


def kmeans_1d(values: np.ndarray, k: int, *, init: str = "linear", iterations: int = 30,
              seed: int = 0, tolerance: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (sorted, float32, ``k`` or fewer when there are fewer distinct values) and each value's index."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    distinct = np.unique(x)
    if distinct.size <= k:  # already shared: every distinct value is a centroid
        return distinct.astype(np.float32), np.searchsorted(distinct, x).astype(np.int64)
    centroids = _init(x, k, init, np.random.default_rng(seed))
    labels = assign(x, centroids)
    for _ in range(iterations):
        sums = np.bincount(labels, weights=x, minlength=k)
        counts = np.bincount(labels, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # an empty cluster keeps its place
        updated.sort()
        shift = float(np.max(np.abs(updated - centroids)))
        centroids = updated
        labels = assign(x, centroids)
        if shift <= tolerance * max(1.0, float(np.max(np.abs(x)))):
            break
    return centroids.astype(np.float32), labels


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value."""
    mids = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(mids, np.asarray(x, dtype=np.float64).ravel()).astype(np.int64)


def _init(x: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    if init == "linear":
        return np.linspace(x.min(), x.max(), k)
    if init == "density":  # quantiles of the distribution
        return np.quantile(x, (np.arange(k) + 0.5) / k)
    if init == "kmeans++":
        sample = x if x.size <= 65536 else rng.choice(x, 65536, replace=False)
        chosen = [float(rng.choice(sample))]
        dist = (sample - chosen[0]) ** 2
        for _ in range(1, k):
            total = dist.sum()
            pick = float(rng.choice(sample, p=dist / total)) if total > 0 else float(rng.choice(sample))
            chosen.append(pick)
            dist = np.minimum(dist, (sample - pick) ** 2)
        return np.sort(np.asarray(chosen))
    raise ValueError(f"unknown k-means init {init!r} (linear, density, kmeans++)")


def reconstruct(centroids: np.ndarray, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The shared-weight tensor: every weight replaced by its centroid."""
    return centroids[labels].reshape(shape).astype(np.float32)
