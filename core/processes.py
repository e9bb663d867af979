"""Whether a process on this machine still runs: what the leftovers of a killed run are judged by
(an atomic write's temp file, an ``mcomp auto`` trial left RUNNING)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie does not: a process killed with its parent is reparented to
    pid 1, and where pid 1 does not reap (a container without an init, such as the machine this was
    found on) it stays a zombie for good, which ``kill(pid, 0)`` still finds: the resume of a killed
    ``mcomp auto`` then never marked its trial interrupted."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:  # "pid (comm) S …": the state follows the last ')'
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): kill's answer stands; else it ended meanwhile
        return not os.path.isdir("/proc")
