"""Output-agreement metrics between a reference and a candidate model, on plain arrays.

One cosine over a whole flattened output is blind where the output joins values of very
different scales: a detector's ``[1, 84, 8400]`` head holds 4 box rows in pixels (0–640) and
80 class rows in probabilities (0–1), and a candidate that zeroes every class score keeps a
whole-output cosine of 0.9995. So outputs are also measured per slice along their
channel-like axes (``channel_axes``), and the worst slice is the figure that gates use.
"""

from __future__ import annotations

import numpy as np


# Whole-output sums are taken in float64 over chunks of this many elements: one float64 copy of
# GPT-2's 16×128×50257 logits is 823 MB, and cosine, relative L2, max |Δ| and SQNR each made two.
CHUNK = 1 << 22


def _sums(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float, float, float]:
    """⟨a, b⟩, ‖a‖², ‖b‖², ‖b − a‖² and max |b − a| in one float64 pass over chunks of the flattened outputs."""
    a, b = np.ravel(ref), np.ravel(cand)
    dot = aa = bb = ee = 0.0
    peaks = [0.0]
    for start in range(0, a.size, CHUNK):
        x = a[start:start + CHUNK].astype(np.float64)
        y = b[start:start + CHUNK].astype(np.float64)
        dot += float(np.dot(x, y))
        aa += float(np.dot(x, x))
        bb += float(np.dot(y, y))
        np.subtract(y, x, out=y)
        ee += float(np.dot(y, y))
        peaks.append(float(np.max(np.abs(y, out=y))))
    return dot, aa, bb, ee, float(np.max(peaks))


def whole(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Cosine, relative L2, max abs error and SQNR (dB) of the flattened outputs, from one pass
    (see ``cosine``, ``relative_l2``, ``max_abs``, ``sqnr_db`` for what each means)."""
    sums = _sums(ref, cand)
    return {"cosine": _cosine(*sums[:3]), "relative_l2": _relative_l2(sums[1], sums[3]),
            "max_abs_error": sums[4], "sqnr_db": _sqnr_db(sums[1], sums[3])}


# An output whose spread across the examples is below this share of its size barely varies over the data:
# a Siamese verifier's similarity read 0.9983–0.9985 on noise inputs, where cosine 0.999998 hid a cut that
# moved six of seven pairs it reads as different (0.000) to above 0.5.
NEARLY_CONSTANT = 1e-2


def spread(ref: np.ndarray) -> float | None:
    """How much an output varies across its leading axis (the examples), as a share of its size: the RMS
    over its elements of their standard deviation across the examples, over the output's RMS. Near 0 the
    data does not exercise the output, and cosine, relative L2 and SQNR, dominated by what every example
    shares, cannot tell a broken candidate from a good one. None with fewer than two examples. In
    float64 over chunks of examples (``CHUNK`` elements), as ``whole`` is."""
    if not _has_examples(ref):
        return None
    rows, step = _rows(ref)
    mean = _example_mean(rows, step)
    deviation = energy = 0.0
    for start in range(0, len(rows), step):
        x = rows[start:start + step].astype(np.float64)
        energy += float(np.sum(x * x))
        x -= mean
        deviation += float(np.sum(x * x))
    return float(np.sqrt(deviation / energy)) if energy > 0 else 0.0


def centered_cosine(ref: np.ndarray, cand: np.ndarray, mean: np.ndarray | None = None) -> float | None:
    """The cosine of how each model's output departs from the reference's mean over the examples (its leading
    axis): what tells one example from another. Cosine, relative L2 and SQNR are dominated by what every
    example shares; this is not. speechmos's PLCMOS cut by half read 3.2 for every synthetic input where its
    input read 3.9–4.2 by input, at cosine 0.9997: centered, 0.004. None with fewer than two examples, or where the
    shapes differ; 1.0 where neither varies. In float64 over chunks of examples, as ``spread``. ``mean``: the
    reference's (``example_mean``), where one reference is compared with many candidates."""
    if not _has_examples(ref) or cand.shape != ref.shape:
        return None
    rows, step = _rows(ref)
    mean = _example_mean(rows, step) if mean is None else mean
    return _departures_cosine(rows, cand.reshape(rows.shape), step, lambda start, stop: mean)


def residual_cosine(ref: np.ndarray, cand: np.ndarray, base: np.ndarray) -> float | None:
    """The cosine of what each model adds to ``base``, an input of the output's shape that the model passes
    through: ``ref − base`` against ``cand − base``. The output's own cosine reads mostly the input passed on:
    RivaGAN's watermark encoder returns its frame plus a watermark of 1.6 % of its RMS, and with 80 % of its
    weights pruned its output kept cosine 0.9997 while the watermark it added read 0.61. None where the
    shapes differ or the output is not float; 1.0 where neither adds anything. In float64 over chunks."""
    if ref.ndim < 1 or ref.size == 0 or ref.dtype.kind != "f" or cand.shape != ref.shape or base.shape != ref.shape:
        return None
    rows, step = _rows(ref)
    bases = base.reshape(rows.shape)
    return _departures_cosine(rows, cand.reshape(rows.shape), step, lambda start, stop: bases[start:stop])


def _departures_cosine(rows: np.ndarray, others: np.ndarray, step: int, base) -> float:
    """The cosine of ``rows − base`` and ``others − base`` over chunks of ``step`` rows (``base(start, stop)``
    gives what is taken from that chunk's rows: one row for all, or a row each), in float64."""
    dot = aa = bb = 0.0
    for start in range(0, len(rows), step):
        under = base(start, start + step)
        x = rows[start:start + step].astype(np.float64) - under
        y = others[start:start + step].astype(np.float64) - under
        dot += float(np.sum(x * y))
        aa += float(np.sum(x * x))
        bb += float(np.sum(y * y))
    return _cosine(dot, aa, bb)


def joined(arrays: list[np.ndarray]) -> np.ndarray:
    """One array from a model's per-feed arrays (an output's, an input's): concatenated along the batch axis
    where their shapes allow, else flattened and concatenated, in feed order either way (so an output and the
    input it was made from line up element for element); a single feed is returned as it is, not copied."""
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim and a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.ravel() for a in arrays])


def _has_examples(ref: np.ndarray) -> bool:
    return ref.ndim >= 1 and ref.shape[0] >= 2 and ref.size > 0 and ref.dtype.kind == "f"


def _rows(ref: np.ndarray) -> tuple[np.ndarray, int]:
    """One row per example, and how many rows a chunk of ``CHUNK`` elements holds."""
    rows = ref.reshape(ref.shape[0], -1)
    return rows, max(1, CHUNK // rows.shape[1])


def example_mean(ref: np.ndarray) -> np.ndarray | None:
    """The reference's mean over its examples (its leading axis), per element, in float64; None with fewer
    than two examples."""
    return _example_mean(*_rows(ref)) if _has_examples(ref) else None


def _example_mean(rows: np.ndarray, step: int) -> np.ndarray:
    mean = np.zeros(rows.shape[1])
    for start in range(0, len(rows), step):
        mean += rows[start:start + step].sum(axis=0, dtype=np.float64)
    return mean / len(rows)


def slice_spreads(ref: np.ndarray, axes: list[int]) -> list[float]:
    """``spread`` of every slice along ``axes`` (channel-like axes: ``channel_axes``). A detector's box rows
    hold the grid positions every image shares and swamp its whole output's spread (YOLOv5's [1, 3549, 6]
    on 16 photos: 3.4e-03), while its objectness and class rows vary: a slice that varies is exercised."""
    found = []
    for axis in axes:
        for index in range(ref.shape[axis]):
            value = spread(np.take(ref, index, axis=axis))
            if value is not None:
                found.append(value)
    return found


def _cosine(dot: float, aa: float, bb: float) -> float:
    na, nb = np.sqrt(aa), np.sqrt(bb)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    # rounding puts a vector's cosine with itself at 1 + 2e-16 (51 of 200 random vectors): bounded, it
    # cannot print as "1 − fidelity -0.0000" in mcomp auto's front
    return float(np.clip(dot / (na * nb), -1.0, 1.0))


def _relative_l2(aa: float, ee: float) -> float:
    err, norm = float(np.sqrt(ee)), float(np.sqrt(aa))
    return err / norm if norm > 0 else err


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs (1.0 for identical, also for two zero tensors)."""
    return _cosine(*_sums(ref, cand)[:3])


def relative_l2(ref: np.ndarray, cand: np.ndarray) -> float:
    """‖cand − ref‖₂ / ‖ref‖₂ (the absolute L2 error where the reference is all zeros)."""
    sums = _sums(ref, cand)
    return _relative_l2(sums[1], sums[3])


def max_abs(ref: np.ndarray, cand: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    return _sums(ref, cand)[4]


def is_classifier_shaped(output: np.ndarray) -> bool:
    """[batch, classes] (or [batch, ..., classes]) float scores with more than one class."""
    return output.dtype.kind == "f" and output.ndim >= 2 and output.shape[-1] > 1


def top1(output: np.ndarray) -> np.ndarray:
    return np.argmax(output.reshape(-1, output.shape[-1]), axis=-1)


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    return float(np.mean(top1(ref) == top1(cand)))


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of [batch, classes] scores against integer labels (or one-hot labels)."""
    labels = np.asarray(labels)
    if labels.ndim == output.ndim and labels.shape == output.shape:
        labels = np.argmax(labels, axis=-1)
    return float(np.mean(top1(output) == labels.reshape(-1)))


def binary_accuracy(output: np.ndarray, labels: np.ndarray) -> float | None:
    """Accuracy of one score per example (``[N]`` or ``[N, 1]``) against labels 0 and 1: a probability
    (every score in 0..1) over 0.5, else a logit over 0, reads as class 1. pipecat's smart-turn (a sigmoid
    "turn complete" probability, [N, 1]) had no accuracy at all: one column is no argmax. None where the
    output is not one float score per example or a label is neither 0 nor 1."""
    labels = np.asarray(labels).reshape(-1)
    if output.dtype.kind != "f" or output.ndim not in (1, 2) or output.size != len(output) or \
            output.size != labels.size or output.size == 0 or not np.all(np.isin(labels, (0, 1))):
        return None
    scores = output.reshape(-1)
    threshold = 0.5 if scores.min() >= 0.0 and scores.max() <= 1.0 else 0.0
    return float(np.mean((scores > threshold) == (labels == 1)))


# A channel-like axis: not the batch axis, at most this many slices, each of at least MIN_SLICE
# elements (fewer make percentiles, and a slice's cosine, noise: [4, 256] features are not 256 channels) ...
MAX_SLICES = 1024
MIN_SLICE = 16
# ... and the magnitudes of some two slices lie apart by at least this factor: the 10th percentile
# of |x| in one is this many times the 90th percentile in the other.
SCALE_SPREAD = 10.0
# Slices whose peak is below this share of the largest slice's peak are not scored: at that
# level they are rounding noise of any 8-bit grid (e.g. the score row of a class absent from the data).
SLICE_FLOOR = 1e-4


# Which axes are channel-like is read from at most this many elements of an output (one batch item at least).
AXES_SAMPLE = 1 << 24


def leading_items(output: np.ndarray) -> np.ndarray:
    """The first items along the batch axis, as many as fit in ``AXES_SAMPLE`` elements (at least one)."""
    if output.size <= AXES_SAMPLE or output.ndim < 2:
        return output
    per_item = output.size // max(1, output.shape[0])
    return output[:max(1, AXES_SAMPLE // max(1, per_item))]


def slice_percentiles(ref: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The 10th and 90th percentiles of |x| in each slice along ``axis``."""
    moved = np.moveaxis(np.abs(ref.astype(np.float64)), axis, 0).reshape(ref.shape[axis], -1)
    low, high = np.percentile(moved, [10, 90], axis=1)
    return low, high


def channel_axes(ref: np.ndarray) -> list[int]:
    """Non-batch axes of 2–1024 slices whose magnitudes separate by ``SCALE_SPREAD`` (a detector's box
    rows against its class rows), plus the time axis of sequence class scores ``[N, T, C]``.

    Separation, not a spread of averages: the rows of a text detector's probability map differ in
    mean as much as a detector's box and class rows, but by content (text in some rows), so the
    bulk of every row is background and their magnitude ranges overlap.

    The magnitudes are read from the leading batch items only (``leading_items``): the axes are a
    property of the output's layout, and the percentiles over all of GPT-2's 16×128×50257 logits took 19 s."""
    if ref.dtype.kind != "f" or ref.ndim < 2 or ref.size == 0 or not np.all(np.isfinite(ref)):
        return []
    sample = leading_items(ref)
    axes = []
    for axis in range(1, ref.ndim):
        if not 2 <= ref.shape[axis] <= MAX_SLICES or ref.size // ref.shape[axis] < MIN_SLICE:
            continue
        low, high = slice_percentiles(sample, axis)
        floor, top = float(high.min()), float(low.max())
        if top > 0 and (floor == 0 or top / floor >= SCALE_SPREAD):
            axes.append(axis)
    if is_sequence_scores(sample) and ref.ndim - 2 not in axes and 2 <= ref.shape[-2] <= MAX_SLICES:
        axes.append(ref.ndim - 2)
    return sorted(axes)


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ‖ref‖² / ‖cand − ref‖² in dB (inf where identical)."""
    sums = _sums(ref, cand)
    return _sqnr_db(sums[1], sums[3])


def per_slice(ref: np.ndarray, cand: np.ndarray, axis: int) -> list[dict]:
    """Cosine and SQNR of every scored slice along ``axis`` (see ``SLICE_FLOOR``)."""
    dot, aa, bb, ee, peaks = _slice_sums(ref, cand, axis)
    floor = SLICE_FLOOR * float(peaks.max(initial=0.0))
    return [{"index": i, "cosine": _cosine(dot[i], aa[i], bb[i]), "sqnr_db": _sqnr_db(aa[i], ee[i])}
            for i in range(len(peaks)) if peaks[i] > floor]


def _slice_sums(ref: np.ndarray, cand: np.ndarray, axis: int) -> np.ndarray:
    """``_sums`` of every slice along ``axis`` at once (⟨a, b⟩, ‖a‖², ‖b‖², ‖b − a‖², and the
    reference's peak |a| in place of the error's), in float64 over chunks of at most about ``CHUNK``
    elements of the outputs as they lie (``[before, slices, after]`` views). Slice by slice, with the
    slices moved to the front (a copy of each output) and two passes each, this was 2.6 s of a
    PP-OCR recognizer's 200 × 40 × 6625 outputs, scored once per quantize candidate; 0.6 s now."""
    slices = ref.shape[axis]
    before = int(np.prod(ref.shape[:axis], dtype=np.int64))
    after = int(np.prod(ref.shape[axis + 1:], dtype=np.int64))
    r, c = ref.reshape(before, slices, after), cand.reshape(before, slices, after)
    sums = np.zeros((5, slices))
    rows = max(1, CHUNK // max(1, slices * after))
    columns = after if slices * after <= CHUNK else max(1, CHUNK // slices)
    for i in range(0, before, rows):
        for j in range(0, after, columns):
            x = r[i:i + rows, :, j:j + columns].astype(np.float64)
            y = c[i:i + rows, :, j:j + columns].astype(np.float64)
            sums[0] += np.einsum("isj,isj->s", x, y)
            sums[1] += np.einsum("isj,isj->s", x, x)
            sums[2] += np.einsum("isj,isj->s", y, y)
            np.subtract(y, x, out=y)
            sums[3] += np.einsum("isj,isj->s", y, y)
            np.maximum(sums[4], np.abs(x, out=x).max(axis=(0, 2)), out=sums[4])
    return sums


def worst_slice(ref: np.ndarray, cand: np.ndarray, axes: list[int] | None = None) -> dict | None:
    """The slice with the lowest cosine over every channel-like axis of ``ref`` (``axes``, where the
    caller found them once for many candidates), or None where the output has no such axis:
    ``{"axis", "index", "cosine", "sqnr_db", "slices"}``."""
    worst = None
    for axis in channel_axes(ref) if axes is None else axes:
        rows = per_slice(ref, cand, axis)
        for row in rows:
            if worst is None or row["cosine"] < worst["cosine"]:
                worst = {"axis": axis, **row, "slices": ref.shape[axis]}
    return worst


def is_class_scores(output: np.ndarray) -> bool:
    """Scores over classes on the last axis: ``[N, C]`` logits or probabilities, or any ``[N, ..., C]``
    whose last axis is a (log-)softmax. A detector's ``[1, 84, 8400]`` head is not: top-1 over its
    anchors means nothing."""
    if output.dtype.kind != "f" or output.ndim < 2 or output.shape[-1] < 2 or output.size == 0:
        return False
    if output.ndim == 2:
        return not _is_embedding(output)
    return _is_softmax(output) or _is_log_softmax(output)


def beside_normalized_scores(outputs: list[np.ndarray | None]) -> set[int]:
    """Outputs (indices) shaped like class scores that are a multi-task model's regressions: raw
    ``[N, ..., K]`` values of a model that has (log-)softmax scores among its outputs, none of width
    ``K``. MTCNN's ONet gives face boxes ``[N, 4]``, landmarks ``[N, 10]`` and a face/not-face softmax
    ``[N, 2]``: the report gave "top-1 agreement" over box coordinates, accuracy was read from the
    boxes (the first ``[N, K]`` output), and distillation fitted them with a softmax. Raw logits of
    the normalized scores' own width (a model that outputs both logits and probabilities) stay scores;
    a model with no normalized output is left as before: its ``[N, K]`` outputs read as logits."""
    if len(outputs) < 2:  # one output is what it is (a language model's logits are not read twice)
        return set()
    arrays = [a if a is not None and a.dtype.kind == "f" and a.ndim >= 2 and a.size else None for a in outputs]
    normalized = {i for i, a in enumerate(arrays)
                  if a is not None and a.shape[-1] >= 2 and (_is_softmax(a) or _is_log_softmax(a))}
    widths = {arrays[i].shape[-1] for i in normalized}
    return {i for i, a in enumerate(arrays)
            if widths and a is not None and i not in normalized and a.shape[-1] not in widths}


def _is_embedding(output: np.ndarray) -> bool:
    """Rows of unit L2 norm that are not probabilities: an embedding (EfficientWord-Net's [1, 2048]
    ArcFace features; resemblyzer's [N, 256] speaker vectors, non-negative after a ReLU), whose argmax
    means nothing; the report gave its "top-1 agreement" beside a cosine. Logits are not normalized;
    probabilities are not negative and sum to 1, so that a confident softmax row (nearly one-hot,
    L2 norm nearly 1) is not taken for one, while a non-negative unit vector sums to more than 1."""
    rows = output.reshape(output.shape[0], -1).astype(np.float64)
    if not np.all(np.abs(np.linalg.norm(rows, axis=1) - 1) < 1e-3):
        return False
    return bool(np.any(rows < 0) or np.any(rows.sum(axis=1) > 1.01))


def is_sequence_scores(output: np.ndarray) -> bool:
    """Class scores per position: ``[N, T, C]`` (e.g. a CTC recognizer's per-time-step softmax)."""
    return output.ndim >= 3 and is_class_scores(output)


def _is_softmax(x: np.ndarray) -> bool:
    return bool(x.min() >= 0) and bool(np.allclose(x.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def _is_log_softmax(x: np.ndarray) -> bool:
    if x.max() > 1e-6:
        return False
    return bool(np.allclose(np.exp(x.astype(np.float64)).sum(axis=-1), 1.0, atol=1e-3))


def worst_step_top1(ref: np.ndarray, cand: np.ndarray) -> dict | None:
    """Top-1 agreement per position of ``[N, T, C]`` sequence scores (over the batch): the worst step."""
    if not is_sequence_scores(ref):
        return None
    r = top1(ref).reshape(ref.shape[0], -1)
    c = top1(cand).reshape(cand.shape[0], -1)
    per_step = np.mean(r == c, axis=0)
    step = int(np.argmin(per_step))
    return {"step": step, "top1_agreement": float(per_step[step]), "steps": int(per_step.size)}
