"""What the leftovers of a killed run are judged by: whether their process still runs."""

from __future__ import annotations

import os
import time

import pytest

from mcomp import atomic, processes


@pytest.mark.skipif(not os.path.isdir("/proc") or not hasattr(os, "fork"), reason="reads /proc (Linux)")
def test_a_zombie_is_not_alive():
    """A worker killed with its search stays a zombie where pid 1 does not reap (a container without an
    init): kill(pid, 0) still found it, and the resume of ``mcomp auto`` never marked its trial
    interrupted (CI's kill -9 test, on such a machine); an atomic write's temp file stayed too."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while _state(child) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)  # exited, not yet waited for: a zombie
        assert _state(child) == "Z"
        assert not processes.alive(child) and not atomic._running(child)
        assert processes.alive(os.getpid()) and atomic._running(os.getpid())
    finally:
        os.waitpid(child, 0)
    assert not processes.alive(child)


def test_no_such_process_is_not_alive():
    assert not processes.alive(2 ** 22 + 12345) and not processes.alive("not a pid")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]
