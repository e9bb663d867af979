"""The fidelity kernels on outputs too large for float64 copies: sums taken in chunks, and
channel-like axes read from leading batch items (``kernels.fidelity``)."""

from __future__ import annotations

import numpy as np
import pytest

from mcomp.kernels import fidelity as fk


def test_chunked_sums_equal_the_whole_array_formulas(monkeypatch):
    monkeypatch.setattr(fk, "CHUNK", 1000)  # 7 chunks, the last one short
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 7, 311)).astype(np.float32)
    cand = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    got = fk.whole(ref, cand)
    assert got["cosine"] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12)
    assert got["relative_l2"] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-12)
    assert got["max_abs_error"] == np.max(np.abs(b - a))
    assert got["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(a * a) / np.sum((b - a) ** 2)), rel=1e-12)
    assert fk.cosine(ref, cand) == got["cosine"] and fk.max_abs(ref, cand) == got["max_abs_error"]


@pytest.mark.parametrize("chunk", [1 << 22, 200, 5])  # whole; rows of the leading axis; columns of one row
@pytest.mark.parametrize("axis", [1, 2])
def test_slices_in_chunks_equal_each_slice_measured_alone(monkeypatch, chunk, axis):
    """Every slice's cosine and SQNR, taken together over chunks, against ``cosine``/``sqnr_db`` of that
    slice alone; a slice below the floor (all zeros) is left out, one left identical has SQNR inf."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((5, 7, 31)).astype(np.float32)
    cand = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    zero, same = [slice(None)] * 3, [slice(None)] * 3
    zero[axis], same[axis] = 3, 4
    ref[tuple(zero)] = cand[tuple(zero)] = 0
    cand[tuple(same)] = ref[tuple(same)]
    monkeypatch.setattr(fk, "CHUNK", chunk)
    rows = fk.per_slice(ref, cand, axis)
    assert [row["index"] for row in rows] == [i for i in range(ref.shape[axis]) if i != 3]
    for row in rows:
        r, c = np.take(ref, row["index"], axis=axis), np.take(cand, row["index"], axis=axis)
        assert row["cosine"] == pytest.approx(fk.cosine(r, c), rel=1e-12)
        assert row["sqnr_db"] == (pytest.approx(fk.sqnr_db(r, c), rel=1e-12) if row["index"] != 4 else float("inf"))


def test_a_nan_in_any_chunk_reaches_the_figures(monkeypatch):
    monkeypatch.setattr(fk, "CHUNK", 4)
    ref = np.ones(10, np.float32)
    cand = ref.copy()
    cand[9] = np.nan  # in the last, short chunk
    assert np.isnan(fk.max_abs(ref, cand)) and np.isnan(fk.cosine(ref, cand))


def test_channel_axes_of_a_large_output_come_from_its_leading_items(monkeypatch):
    """A detector-like head (4 box rows in pixels, 80 class rows in 0–1) keeps its class axis when only
    the first batch item is read, and the sample read is the first items, at least one."""
    monkeypatch.setattr(fk, "AXES_SAMPLE", 84 * 500)
    rng = np.random.default_rng(1)
    head = np.concatenate([rng.uniform(50, 600, (6, 4, 500)), rng.uniform(0, 1, (6, 80, 500))], axis=1)
    head = head.astype(np.float32)
    assert fk.leading_items(head).shape == (1, 84, 500)
    assert fk.channel_axes(head) == [1]
    small = head[:, :, :10]
    assert fk.leading_items(small) is small  # under the sample size: read whole
