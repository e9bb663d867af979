"""Importance scores for pruning: how much a weight, or a channel, matters. Pure numpy.

Element scores (unstructured): magnitude |w|, Taylor |w · ∂L/∂w|, random.
Channel scores (structured): the L1/L2 norm of a channel's slice, summed over every tensor
of its group; BatchNorm scale |γ|; Taylor summed over the channel's slice; random.
The criteria that the prune pass offers, by name, are registered in ``mcomp.passes.prune.criteria``
from these functions.
"""

from __future__ import annotations

import numpy as np


def magnitude(w: np.ndarray) -> np.ndarray:
    """|w| as float32 (float32 weights are not copied first: one 8192×8192 weight's copy was 256 MiB
    and a third of the time)."""
    return np.abs(w.astype(np.float32, copy=False))


def taylor(w: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """First-order Taylor estimate of the loss change when a weight is zeroed (Molchanov et al.)."""
    return np.abs(w.astype(np.float32) * grad.astype(np.float32))


def random_scores(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


CHANNEL_BLOCK_BYTES = 16 << 20  # channel_norm's working copy: this much of ``w`` at a time


def channel_norm(w: np.ndarray, axis: int, p: int = 1) -> np.ndarray:
    """Per-channel Lp norm of ``w`` along ``axis`` (over all other axes).

    Computed over blocks of channels of about ``CHANNEL_BLOCK_BYTES``, each laid out and summed as
    the whole tensor would be (the same sums, bit for bit), so the float32 copy, its reordering and
    its absolute values are one block's, not three copies of the tensor (768 MiB more for one
    8192×8192 float weight)."""
    channels = w.shape[axis]
    # at least two channels a block: numpy sums a block of one channel in another order (pairwise)
    step = max(2, CHANNEL_BLOCK_BYTES // max(1, 4 * (w.size // channels if channels else 0)))
    starts = list(range(0, channels, step))
    if len(starts) > 1 and channels - starts[-1] == 1:
        starts.pop()  # the last channel joins the block before it
    out = np.empty(channels, dtype=np.float32)
    for start, stop in zip(starts, starts[1:] + [channels]):
        block = w[(slice(None),) * axis + (slice(start, stop),)].astype(np.float32)  # laid out as w is
        moved = np.moveaxis(block, axis, 0).reshape(block.shape[axis], -1)
        out[start:stop] = np.abs(moved).sum(axis=1) if p == 1 else np.sqrt((moved ** 2).sum(axis=1))
    return out


def channel_taylor(w: np.ndarray, grad: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel Taylor score: |Σ w·g| over the channel's slice (the loss change of removing it)."""
    prod = np.moveaxis((w.astype(np.float32) * grad.astype(np.float32)), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(prod.sum(axis=1))


def normalize(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean, so that tensors of different scale can be summed or compared."""
    mean = float(np.mean(scores)) if scores.size else 0.0
    return scores / mean if mean > 0 else scores


def global_threshold(scores: list[np.ndarray], rate: float) -> float:
    """The score below which ``rate`` of all elements fall (the k-th smallest over every tensor)."""
    flat = np.concatenate([s.ravel() for s in scores]) if scores else np.zeros(0)
    k = int(round(rate * flat.size))
    if k <= 0:
        return -np.inf
    flat.partition(k - 1)  # in place: the concatenation is a copy already (one fewer of every score)
    return float(flat[k - 1])


def prune_mask(scores: np.ndarray, count: int) -> np.ndarray:
    """A boolean keep-mask zeroing exactly ``count`` lowest-scored elements (ties broken by position).

    A partition, not a sort: linear time (a full argsort of one 8192×8192 weight took 115 s)."""
    flat = scores.ravel()
    if count <= 0:
        return np.ones(scores.shape, dtype=bool)
    if count >= flat.size:
        return np.zeros(scores.shape, dtype=bool)
    threshold = np.partition(flat, count - 1)[count - 1]
    keep = ~(flat < threshold)
    ties = np.flatnonzero(flat == threshold)  # in position order: the first ones go, as a stable sort would
    keep[ties[:count - (flat.size - int(keep.sum()))]] = False
    return keep.reshape(scores.shape)


def keep_channels(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices (sorted) of the ``keep`` highest-scored channels."""
    keep = max(1, min(int(keep), scores.size))
    return np.sort(np.argsort(-scores, kind="stable")[:keep])


def rounded_keep(channels: int, rate: float, round_to: int) -> int:
    """Channels kept when removing ``rate`` of ``channels``, rounded to a multiple of ``round_to``
    (never below ``round_to`` or one, never above ``channels``). A rate of 0 keeps every channel:
    rounding to the multiple alone would cut (20 → 16, since Python rounds halves to even)."""
    if rate <= 0:
        return channels
    keep = channels * (1.0 - rate)
    if round_to > 1 and channels >= round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return int(min(channels, max(1, round(keep))))
