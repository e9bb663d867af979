"""Typed errors. The CLI maps each type to one line on stderr and an exit code (design §5)."""


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
