"""How outputs reach their path (design §5): written whole beside it, then renamed into place.

Three things make that hold when runs are killed or overlap:

- temp names say who made them, ``.<name>.<host>-<pid>.<random>.tmp``, so the next write of
  the same output removes what a killed run (``kill -9`` gives no chance to clean up) left;
- an advisory lock, ``.<name>.lock`` beside the output, held from the model's write until its
  report is written (:func:`writes_together`), so two runs on the same ``-o`` cannot leave one
  run's model beside the other's report;
- a test hook, :func:`pause_before_rename`, stops a run between the temp file and the rename so
  tests can kill it exactly there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks; each file is still written atomically
    fcntl = None

TEMP_SUFFIX = ".tmp"
_together: contextlib.ExitStack | None = None  # set inside writes_together(): locks kept to its end
_companions: Callable[[Path], list[Path]] = lambda model: []  # and the files describing its models
_held: set[str] = set()  # outputs this process holds the lock of (flock does not nest across fds)


def temp_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: the owner in the name lets a later run tell a leftover from a live write."""
    return f".{path.name}.{_host()}-{os.getpid()}."


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def remove_leftovers(path: Path) -> None:
    """Removes the temp files and folders of earlier writes of ``path`` whose process is gone.

    Only names of our own form, made on this host, by a pid that no longer runs: a live writer's
    temp file (another run on the same output) is never touched; one on another host sharing the
    folder is left alone, as its pid means nothing here."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{6}})-(\d+)\.\w+{re.escape(TEMP_SUFFIX)}")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match[1] != _host() or _running(int(match[2])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _running(pid: int) -> bool:
    from mcomp.processes import alive

    return pid == os.getpid() or alive(pid)  # a zombie writer's temp file is litter too


@contextlib.contextmanager
def locked(path: str | Path | None):
    """Holds the advisory lock of output ``path`` (nothing for stdout or no path).

    The lock file is removed on release, so it is not left as litter; a waiter that then holds
    the lock of a removed file notices (its inode is no longer the path's) and locks again."""
    if path is None or str(path) == "-" or fcntl is None or os.path.realpath(path) in _held:
        yield
        return
    key, lock = os.path.realpath(path), Path(path).parent / f".{Path(path).name}.lock"
    while True:
        fd = _locked_fd(lock)
        if fd is None:  # a folder whose files cannot be locked: write unlocked, each file still atomic
            yield
            return
        mine = os.fstat(fd)
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: left, harmless
            os.unlink(lock)
        os.close(fd)


def _locked_fd(lock: Path) -> int | None:
    """An open descriptor of ``lock``, locked (waiting for it); None where that cannot be had: another
    user's lock file in a sticky folder, a file system without locks. Read-write first: NFS's locks
    need it; read-only for a lock file others made and we may not write."""
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            fd = os.open(lock, flags | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        except OSError:
            os.close(fd)
    return None


def lock_for_write(path: Path, own: contextlib.ExitStack) -> None:
    """Locks ``path`` for one write (``own``), or until the enclosing :func:`writes_together` ends."""
    (_together or own).enter_context(locked(path))


@contextlib.contextmanager
def writes_together(companions: Callable[[Path], list[Path]] = lambda model: []):
    """Every model saved inside the block keeps its output locked until the block ends.

    Why: the report names the model's sha256, and is written after it. With the lock held from
    the model's rename to the report's, two runs on the same ``-o`` take turns, and the last
    one leaves its own pair. Taken at the write, not before the work, so runs still overlap.
    ``companions(model path)``: the files that describe the model (its reports); the old ones are
    removed just before the new model takes their model's place, so a run killed between the two
    renames leaves a model without a report, never beside another model's report."""
    global _together, _companions
    outer = _together, _companions
    with contextlib.ExitStack() as stack:
        _together, _companions = stack, companions
        try:
            yield
        finally:
            _together, _companions = outer


def retire_companions(model: Path) -> None:
    """Called by a model's write just before its rename (see :func:`writes_together`)."""
    if _together is not None:
        for path in _companions(model):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def mkstemp_beside(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)


def pause_before_rename(dest: Path) -> None:
    """Test-only hook: with ``MCOMP_TEST_PAUSE_BEFORE_RENAME=<flag file>`` set, a write stops after
    its temp file is complete and before the rename, writes ``<pid> <dest>`` to the flag file, and
    waits while the flag file exists. A test kills it there (``kill -9``), or deletes the flag to
    let it go on to the next write. Unset (always, outside tests), it does nothing."""
    flag = os.environ.get("MCOMP_TEST_PAUSE_BEFORE_RENAME")
    if not flag:
        return
    staged = f"{flag}.{os.getpid()}.staged"
    Path(staged).write_text(f"{os.getpid()} {dest}")
    os.replace(staged, flag)
    while os.path.exists(flag):
        time.sleep(0.02)
