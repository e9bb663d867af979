"""mcomp.heap: a training step's large buffers are reused rather than faulted in afresh each step
(glibc), and the memory is given back when training ends."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from mcomp import heap

BLOCK = 256 << 20  # far above glibc's mmap threshold (at most 32 MiB)


def _faults_of_the_second_of_two_blocks() -> int:
    first = np.ones(BLOCK, np.uint8)  # touches every page
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = np.ones(BLOCK, np.uint8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator settings: nothing changes elsewhere")
def test_a_freed_large_block_is_reused_inside_and_given_back_after():
    outside = _faults_of_the_second_of_two_blocks()  # munmapped when freed, faulted in again
    with heap.reused_heap() as applied:
        assert applied
        inside = _faults_of_the_second_of_two_blocks()
        held = _resident_bytes()
    after = _resident_bytes()
    assert inside * 4 < outside, (inside, outside)  # 4 KiB pages: ~65,536 against ~0; huge pages: 128 against ~0
    assert held - after > BLOCK // 2, (held, after)  # malloc_trim gave the kept block back
    assert _faults_of_the_second_of_two_blocks() * 4 > outside  # glibc's defaults are back
