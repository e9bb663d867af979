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


# Up to this many scores in all, the k-th smallest is taken from all of them joined; above it, only
# the scores near it are joined (``_bracketed_kth``): joined whole, a 2.5 GiB model's scores were one
# more copy of every weight.
JOIN_BELOW = 1 << 22
SAMPLE = 1 << 20  # scores sampled to bracket the k-th smallest
# Elements a step of the counting passes reads: each step's comparison goes into one reused mask rather
# than a boolean copy of the whole tensor (three such copies per weight were most of the time a big
# model's global threshold took: 0.45 → 0.18 s over 201 M scores for the count and the gathering).
CHUNK = 1 << 20


def _counted(flat: np.ndarray, value: float, compare) -> int:
    """How many elements of ``flat`` satisfy ``compare(element, value)`` (a numpy comparison ufunc)."""
    mask, total = np.empty(min(CHUNK, flat.size), dtype=bool), 0
    for start in range(0, flat.size, CHUNK):
        part = flat[start:start + CHUNK]
        total += int(np.count_nonzero(compare(part, value, out=mask[:part.size])))
    return total


def count_at_most(scores: np.ndarray, value: float) -> int:
    """How many of ``scores`` are ≤ ``value`` (NaN is not)."""
    return _counted(scores.reshape(-1), value, np.less_equal)


def global_threshold(scores: list[np.ndarray], rate: float) -> float:
    """The score below which ``rate`` of all elements fall (the k-th smallest over every tensor)."""
    total = sum(s.size for s in scores)
    k = int(round(rate * total))
    if k <= 0:
        return -np.inf
    if total > JOIN_BELOW:
        return _bracketed_kth(scores, k, total)
    flat = np.concatenate([s.ravel() for s in scores])
    flat.partition(k - 1)  # in place: the concatenation is a copy already (one fewer of every score)
    return float(flat[k - 1])


def _bracketed_kth(scores: list[np.ndarray], k: int, total: int) -> float:
    """The exact k-th smallest of all ``scores`` (as the joined partition gives it, NaN last), joining
    only those inside a bracket around it: the bracket is read off a seeded sample of the scores with
    a margin of six standard errors, the scores below it are counted, and a bracket the k-th smallest
    is not inside is widened to the end it missed (at worst every score is joined, as before)."""
    rng = np.random.default_rng(0)
    sample = np.concatenate([s.ravel()[rng.integers(0, s.size, max(1, SAMPLE * s.size // total))] for s in scores])
    sample = sample[~np.isnan(sample)]
    q = k / total
    margin = 6 * np.sqrt(q * (1 - q) / max(sample.size, 1)) + 2 / max(sample.size, 1)
    lo = float(np.quantile(sample, q - margin)) if sample.size and q - margin > 0 else -np.inf
    hi = float(np.quantile(sample, q + margin)) if sample.size and q + margin < 1 else np.inf
    below, inside = _below_and_inside(scores, lo, hi)
    if below >= k:
        lo = -np.inf
        below, inside = _below_and_inside(scores, lo, hi)
    if below + inside.size < k:
        inside = np.concatenate([s[s >= lo] for s in scores])
        if below + inside.size < k:  # the k-th is past every number: NaN, as in the joined partition
            return float("nan")
    inside.partition(k - below - 1)
    return float(inside[k - below - 1])


def _below_and_inside(scores: list[np.ndarray], lo: float, hi: float) -> tuple[int, np.ndarray]:
    """How many ``scores`` are below ``lo``, and those within [lo, hi] joined (NaN in neither), read in
    one pass of ``CHUNK`` steps with two reused masks."""
    size = min(CHUNK, max(s.size for s in scores))
    low, high = np.empty(size, dtype=bool), np.empty(size, dtype=bool)
    below, inside = 0, []
    for s in scores:
        flat = s.reshape(-1)
        for start in range(0, flat.size, CHUNK):
            part = flat[start:start + CHUNK]
            a, b = low[:part.size], high[:part.size]
            below += int(np.count_nonzero(np.less(part, lo, out=a)))
            np.logical_and(np.greater_equal(part, lo, out=a), np.less_equal(part, hi, out=b), out=a)
            inside.append(part[a])
    return below, np.concatenate(inside)


def prune_mask(scores: np.ndarray, count: int, near: float | None = None) -> np.ndarray:
    """A boolean keep-mask zeroing exactly ``count`` lowest-scored elements (ties broken by position).

    A partition, not a sort: linear time (a full argsort of one 8192×8192 weight took 115 s).
    ``near``: a value that may be the count-th smallest (the global threshold the counts came
    from); when the counts below and at it show that it is, no partition is made (one copied an
    8192×8192 layer, 0.27 s; counting is two reads)."""
    flat = scores.ravel()
    if count <= 0:
        return np.ones(scores.shape, dtype=bool)
    if count >= flat.size:
        return np.zeros(scores.shape, dtype=bool)
    threshold = near if near is not None and _is_kth(flat, count, near) else np.partition(flat, count - 1)[count - 1]
    keep = np.logical_not(np.less(flat, threshold), out=np.empty(flat.size, dtype=bool))  # NaN kept, as ~(<) keeps it
    ties = np.flatnonzero(flat == threshold)  # in position order: the first ones go, as a stable sort would
    keep[ties[:count - (flat.size - int(keep.sum()))]] = False
    return keep.reshape(scores.shape)


def _is_kth(flat: np.ndarray, count: int, value: float) -> bool:
    """Whether ``value`` is the count-th smallest of ``flat`` (as a partition orders it)."""
    if np.isnan(value):
        return False
    below = _counted(flat, value, np.less)
    return below < count <= below + _counted(flat, value, np.equal)


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
