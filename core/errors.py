"""Typed errors. The CLI maps each type to one line on stderr and an exit code (design §5)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line (whitespace collapsed; its type where it has no text), at most
    ``limit`` characters: what the one-line error messages quote of a library's failure."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class McompError(Exception):
    """Base class: an expected failure with a message fit for one line on stderr."""

    exit_code = 1


class BadInput(McompError):
    """Bad usage or bad input: unreadable/invalid model, bad data, bad config, unwritable output."""

    exit_code = 2


class ConfigError(BadInput):
    """A pipeline file or pass option that does not validate."""


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
