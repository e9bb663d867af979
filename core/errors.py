"""Typed errors. The CLI maps each type to one line on stderr and an exit code (design §5)."""

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short(exc: BaseException | None, limit: int = 200, *, first_line: bool = False) -> str:
    """An exception's text on one line, at most ``limit`` characters: what mcomp's one-line error
    messages quote of a library's failure. Whitespace is collapsed and colour codes dropped; its type
    stands in where it has no text. torch.onnx wraps the real error in a coloured multi-line report
    whose first lines are boilerplate ("Failed to export the model with torch.export. This is step
    1/3 …"): its "Exception summary" line is the one quoted. ``first_line``: only the first line (torch's
    own errors follow it with many lines of advice)."""
    if exc is None:
        return "unknown error"
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("## Exception summary"):
            lines = [lines[i + 1]]
            break
    if first_line:
        lines = lines[:1]
    text = " ".join(" ".join(lines).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"



class McompError(Exception):
    """Base class: an expected failure with a message fit for one line on stderr."""

    exit_code = 1


class BadInput(McompError):
    """Bad usage or bad input: unreadable/invalid model, bad data, bad config, unwritable output."""

    exit_code = 2


class ConfigError(BadInput):
    """A pipeline file or pass option that does not validate."""


class NotApplicable(BadInput):
    """A pass that cannot work on this model and data, whatever its options: a distillation whose
    outputs do not follow the examples (silero-vad's sequence model). ``mcomp auto`` leaves the pass
    out of the trials after the first such failure (``pass_name``) instead of drawing it again."""

    def __init__(self, message: str, pass_name: str = "") -> None:
        super().__init__(message)
        self.pass_name = pass_name


class ProviderUnavailable(BadInput):
    """An explicitly requested execution provider is not available on this machine."""


class GateFailed(McompError):
    """A quality gate (accuracy drop, fidelity, speed-up) failed; nothing is written.

    Carries the run's report so that the CLI can still show what was measured.
    """

    exit_code = 3

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report
