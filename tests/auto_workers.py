"""Worker functions for ``mcomp auto``'s supervisor tests: they run in spawned processes, which import
them by module name (a test module's own functions would bring pytest's state with them)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


class OneStep:
    """A search space of one prune option."""

    def sample(self, trial):
        return [("prune", {"rate": trial.suggest_float("rate", 0.1, 0.9)})]

    def describe(self):
        return {}


def _measured(trials):
    return trials.Measured(loss=0.0, objective=0.5, accuracy=None, accuracy_input=None, fidelity=1.0,
                           latency_ratio=0.5, latency_band=None, latency_ms=None, size_ratio=None,
                           macs_ratio=None, parameters_ratio=None, seconds=0.1)


def killed(plan, settings, space, events, times: int = 1) -> None:
    """The real worker, whose first ``times`` trials kill their own process with SIGKILL, as the
    kernel's out-of-memory killer does; the trials after them complete."""
    from mcomp.auto import search as searches
    from mcomp.auto import trial as trials

    def run(settings, steps, output, **kwargs):
        kills = Path(settings.folder) / "kills"
        done = len(kills.read_text()) if kills.exists() else 0
        if done < times:
            kills.write_text("k" * (done + 1))
            os.kill(os.getpid(), signal.SIGKILL)
        return _measured(trials), {}

    trials.run = run
    searches._worker_main(plan, settings, space, events)


def killed_always(plan, settings, space, events) -> None:
    killed(plan, settings, space, events, times=10 ** 6)
