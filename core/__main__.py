"""``python -m mcomp``: the same program as the ``mcomp`` console script (``mcomp.cli.main.run``)."""

import os

import _signal  # signal's C half, loaded already: importing signal itself builds enums, time Ctrl-C could fall into


def _interrupted(signum, frame) -> None:
    """Ctrl-C while ``mcomp.cli.main`` is still being found and loaded: the answer its own handler gives."""
    os.write(2, b"error: interrupted; nothing was written\n")
    os._exit(130)


_signal.signal(_signal.SIGINT, _interrupted)  # first: only Python's own start-up comes before this line

from mcomp.cli.main import run  # noqa: E402  (installs its handler before its heavy imports)

run()
