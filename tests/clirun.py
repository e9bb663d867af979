"""Runs ``python -m mcomp ...`` as a user would: a subprocess, stdout and stderr captured.

Each run costs a second or so of interpreter start-up and imports, so the CLI test modules
start the runs their selected tests need all at once, a few at a time, in threads:

    @uses("optimize")                    # this test reads the run called "optimize"
    def test_x(runs): res = runs["optimize"]

``runs`` is a module fixture built with :func:`batch`; it looks at the tests pytest
selected (after -k/-m), prepares their runs (in the main thread: files, snapshots), and
starts them. A key may name the test's parameters, e.g. ``"help-{command}"``.
"""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mcomp

ASSETS = Path(mcomp.__file__).resolve().parent / "assets"
DIGITS = ASSETS / "digits_cnn.onnx"
DIGITS_EVAL = ASSETS / "digits_eval.npz"
REPO = Path(__file__).resolve().parent.parent
WORKERS = max(2, min(6, (os.cpu_count() or 2) * 2))
# A guard against a hung run, not a speed check: a run that takes 10 s on a quiet machine can take minutes
# on a loaded one (four runs at a time on two busy cores), and no test may fail for that.
HANG_TIMEOUT = 900.0


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float
    before: dict[str, str] | None = None  # snapshot of the run's folder before and after
    after: dict[str, str] | None = None
    folder: Path | None = None  # where it ran

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def explain(self) -> str:
        """For assertion messages."""
        return (f"\n$ {' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stderr ---\n{self.stderr[-3000:]}\n--- stdout ({len(self.stdout)} bytes) ---\n"
                f"{self.out[:1000]}")


def mcomp_argv(*args) -> list[str]:
    return [sys.executable, "-m", "mcomp", *(str(a) for a in args)]


def run_mcomp(*args, cwd: Path, stdin: bytes | None = None, timeout: float = HANG_TIMEOUT,
              terminal: tuple[str, ...] = ()) -> Result:
    """``mcomp *args`` in ``cwd``; stdin gets ``stdin`` (or nothing) through a pipe, stdout and stderr are captured.

    ``terminal`` names streams ("stdin", "stdout") to put on a pseudo-terminal instead, as a person's shell
    would: what the command writes there is not read back (``stdout`` is then b"")."""
    unknown = set(terminal) - {"stdin", "stdout"}
    if unknown:
        raise ValueError(f"terminal takes 'stdin' and 'stdout', not {sorted(unknown)}")
    if "stdin" in terminal and stdin is not None:
        raise ValueError("stdin is either bytes through a pipe or a terminal, not both")
    argv = mcomp_argv(*args)
    streams: dict = {"stderr": subprocess.PIPE}
    leader = follower = None
    if terminal:
        leader, follower = pty.openpty()
    if "stdin" in terminal:
        streams["stdin"] = follower
    else:
        streams["input"] = stdin if stdin is not None else b""
    streams["stdout"] = follower if "stdout" in terminal else subprocess.PIPE
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, timeout=timeout, env=_env(), **streams)
    finally:
        for fd in (follower, leader):
            if fd is not None:
                os.close(fd)
    return Result(["mcomp", *argv[3:]], proc.returncode, proc.stdout or b"",
                  proc.stderr.decode("utf-8", errors="replace"), time.perf_counter() - start, folder=Path(cwd))


def gated(path: Path, folder: Path, npz: str, step: str, floor: float) -> dict[str, Result]:
    """``mcomp run`` of one ``step`` (YAML flow mapping, e.g. ``prune: {rate: 0.8}``) on ``path`` with a fidelity
    gate at ``floor``, once per ``measure.fidelity`` mode: mode → the run's result."""
    done = {}
    for mode in ("slice", "whole"):
        (folder / f"gate-{mode}.yaml").write_text(
            f"model: {path}\ndata: {{evaluation: {npz}}}\nmeasure: {{latency: false, fidelity: {mode}}}\n"
            f"steps:\n  - {step}\ngate: {{min_fidelity: {floor}}}\n")
        done[mode] = run_mcomp("run", f"gate-{mode}.yaml", "-o", f"gated-{mode}.onnx", cwd=folder)
    return done


def run_shell(script: str, *, cwd: Path, timeout: float = HANG_TIMEOUT) -> Result:
    """A bash pipeline (``set -o pipefail``); ``mcomp`` in it means this interpreter's ``-m mcomp``."""
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", "set -o pipefail\nmcomp() { \"$MCOMP_PY\" -m mcomp \"$@\"; }\n" + script],
                          cwd=cwd, capture_output=True, timeout=timeout, env=_env() | {"MCOMP_PY": sys.executable})
    return Result(["bash", "-c", script], proc.returncode, proc.stdout, proc.stderr.decode("utf-8", errors="replace"),
                  time.perf_counter() - start)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): relative path → sha256, or "dir"."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = sha256(Path(p)) if os.access(p, os.R_OK) else "unreadable"
    return out


def uses(*keys: str):
    """Declares the runs a test reads, so that :func:`batch` can start them up front."""
    def mark(fn):
        fn._mcomp_runs = keys
        return fn
    return mark


class Batch:
    """Runs prepared up front and run in a thread pool; ``batch[key]`` waits for one."""

    def __init__(self, prepare: Callable[[str], Callable[[], Result]], keys: list[str], workers: int = WORKERS):
        self._prepare = prepare
        self._pool = ThreadPoolExecutor(workers)
        self._futures: dict[str, Future] = {}
        for key in keys:
            self.start(key)

    def start(self, key: str) -> None:
        if key in self._futures:
            return
        try:
            run = self._prepare(key)
        except BaseException as exc:  # e.g. a model that cannot be fetched: fails only the tests that read it
            failed: Future = Future()
            failed.set_exception(exc)
            self._futures[key] = failed
            return
        self._futures[key] = self._pool.submit(run)

    def __getitem__(self, key: str) -> Result:
        self.start(key)
        return self._futures[key].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def selected_keys(request, module) -> list[str]:
    """The run keys of the tests pytest selected in ``module``, in collection order."""
    keys: list[str] = []
    for item in request.session.items:
        if getattr(item, "module", None) is not module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        for key in getattr(getattr(item, "function", None), "_mcomp_runs", ()):
            key = key.format(**params)
            if key not in keys:
                keys.append(key)
    return keys
