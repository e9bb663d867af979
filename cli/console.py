"""The two consoles, error mapping and progress.

``out`` (stdout) carries the result of the commands whose result is information (``inspect``,
``bench``, ``compare``, ``passes``), so ``mcomp inspect m.onnx | grep MACs`` works; ``err``
(stderr) carries everything else for people: a pass command's summary (its stdout may carry the
model), progress, warnings, errors (design §5).

Both print text as it is (``markup=False``): model, tensor and file names, and a pass's own
words, may hold ``[...]`` that rich would read as markup (``net[fp32].onnx``, a shape
``[batch, 3, height, width]``). Colour is given with styled ``Text``, never with markup. When
their stream is not a terminal (a pipe, a file, a CI log) they render at full width, so a piped
table keeps whole names instead of being cut to 80 columns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time
import traceback
import warnings

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from mcomp.errors import GateFailed, McompError, short

# The width of what is rendered for a pipe or a file: wide enough for any row, so nothing is cut.
# A table is as wide as its content, not this; plain lines are not padded.
PIPED_WIDTH = 100_000


class Stream(Console):
    """A console at the terminal's width on a terminal, and at full width elsewhere (rich would
    otherwise use 80 columns, or the width of whichever standard stream is a terminal)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


err = Stream(stderr=True, markup=False, highlight=False, soft_wrap=True)
out = Stream(markup=False, highlight=False, soft_wrap=True)
_state = {"quiet": False}


# The graph libraries log their own housekeeping ("Skipped deduplication of initializer …")
# as warnings; mcomp reports what matters itself, so during a command only their errors reach stderr.
LIBRARY_LOGGERS = ("onnx_ir", "onnxscript", "onnxruntime", "torch.onnx")


def configure(quiet: bool = False, json_out: bool = False) -> None:
    _state["quiet"] = quiet


@contextlib.contextmanager
def library_logs_quiet():
    """Only errors from the graph libraries' loggers while a command runs; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)


@contextlib.contextmanager
def warnings_as_lines():
    """A Python warning raised during a command prints as one ``warning:`` line (nothing with -q):
    by default Python prints the file, line and source line of the call (two lines, mcomp's own
    path in them) for what is a message to the user (a checkpoint exported at a fixed batch)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        own = category.__module__.startswith("mcomp")  # TorchExportWarning: addressed to the user as it is
        say(f"warning: {text}" if own else f"warning: {category.__name__}: {text}")

    before = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = before


def quiet() -> bool:
    return _state["quiet"]


def information(json: bool) -> Console:
    """Where an information command (inspect, bench, compare, passes) prints its table: stdout, which
    is its result; stderr when ``--json`` gives stdout to the JSON document alone."""
    return err if json else out


def say(message: str) -> None:
    if not _state["quiet"]:
        err.print(message)


def fail(message: str, code: int) -> typer.Exit:
    """One line on stderr, then the exit code (design §5). Whitespace is collapsed here, once for every
    message: a quoted library error or a YAML problem may hold newlines."""
    message = " ".join(str(message).split())
    if err.is_terminal:
        err.print(Text.assemble(("error:", "bold red"), f" {message}"))
    else:
        print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextlib.contextmanager
def guard(debug: bool = False):
    """Maps mcomp's typed errors to one line and an exit code; the traceback only with --debug. Ctrl-C
    raises KeyboardInterrupt while the command runs (so its temporary files are removed on the way
    out), whatever the program does with it before and after (``cli.main`` exits at once)."""
    with _interrupt_raises():
        try:
            yield
        except typer.Exit:
            raise
        except GateFailed as exc:
            if exc.report is not None and not quiet():
                from mcomp.cli.render import print_report

                print_report(exc.report)
            if debug:
                traceback.print_exc()
            raise fail(str(exc), exc.exit_code) from None
        except McompError as exc:
            if debug:
                traceback.print_exc()
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was written", 130) from None
        except Exception as exc:  # an internal failure: say so, in one line, unless --debug
            if debug:
                traceback.print_exc()
            text = short(exc, 300)
            raise fail(f"internal error: {type(exc).__name__}: {text} (rerun with --debug for the traceback)", 1) from None


@contextlib.contextmanager
def _interrupt_raises():
    """SIGINT raises KeyboardInterrupt inside, as Python's default; the handler before is restored after."""
    try:
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread, where no signal is delivered anyway
        before = None
    try:
        yield
    finally:
        if before is not None:  # None also for a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, before)


def command(function):
    """Every command's shared tail in one place: ``-q``/``--json`` configure the console, and
    errors map to one line and an exit code (``--debug`` adds the traceback). typer still sees
    the wrapped function's parameters (``functools.wraps``)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        configure(kwargs.get("quiet", False), kwargs.get("json", False))
        with guard(kwargs.get("debug", False)), library_logs_quiet(), warnings_as_lines():
            return function(*args, **kwargs)

    return wrapper


class Progress:
    """Progress on stderr through one helper (design §5): a live status line on a terminal;
    elsewhere (CI, ``make`` logs) a plain line at most every ``MCOMP_PROGRESS_SECONDS`` seconds
    (default 10), so a long step is never silent while a short one prints nothing. Silent with
    -q, or when the caller disables it (--json).

    A step that reports counts (``total > 1``) shows them, and how long is left once one unit is
    done (``quantize: latency guard  12/90  ~2:41 left``): a bare spinner for minutes does not say
    whether to wait or to stop. The estimate is per description (``Eta``); on a terminal it counts
    down between reports, since one unit of a long step may take many seconds."""

    def __init__(self, enabled: bool) -> None:
        on = enabled and not _state["quiet"]
        self.enabled = on and err.is_terminal
        self.plain = on and not err.is_terminal
        self.every = _seconds(os.environ.get("MCOMP_PROGRESS_SECONDS"), 10.0)
        self._last = time.monotonic()
        self._status = None
        self.eta = Eta()

    def __enter__(self):
        if self.enabled:
            self._status = err.status(self.eta)  # rendered on every refresh: the ETA counts down
            self._status.__enter__()
        return self

    def __call__(self, description: str, done: int, total: int) -> None:
        self.eta.update(description, done, total)
        if self._status is not None:
            self._status.update(self.eta)
        elif self.plain and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print(self.eta.line(), file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)


class Eta:
    """The progress line: ``description  k/N  ~M:SS left``. The rate is measured from the first report
    of this description (a new description, or counts that go back, start a new measurement), so an
    estimate appears only once a unit has been done since then; before that, and for ``total <= 1``,
    the line holds what is known."""

    def __init__(self) -> None:
        self.description, self.done, self.total = "starting", 0, 0
        self._start = self._since = self._first = 0.0
        self._rate: float | None = None  # seconds per unit

    def update(self, description: str, done: int, total: int) -> None:
        now = time.monotonic()
        if description != self.description or done < self.done:  # a new step, or a new loop of it
            self._start, self._first, self._rate = now, done, None
        self.description, self.done, self.total, self._since = description, done, total, now
        if done > self._first and now > self._start:
            self._rate = (now - self._start) / (done - self._first)

    def left(self) -> float | None:
        """Seconds left, counted down since the last report; None while unknown."""
        if self._rate is None or self.total <= 1:
            return None
        return max(0.0, self._rate * (self.total - self.done) - (time.monotonic() - self._since))

    def line(self) -> str:
        if self.total <= 1:
            return self.description
        left = self.left()
        return f"{self.description}  {self.done}/{self.total}" + ("" if left is None else f"  ~{clock(left)} left")

    def __rich__(self) -> Text:
        return Text(self.line())


def clock(seconds: float) -> str:
    """``2:41``, ``1:02:03``: a duration as people read a countdown."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _seconds(text: str | None, default: float) -> float:
    try:
        return max(0.0, float(text)) if text else default
    except ValueError:
        return default
