"""The ``mcomp`` command: one typer app. Hand-written commands for what is not a pass (inspect,
bench, compare, export, run, passes); one command per registered pass, built from its Config
(``cli/generate.py``) when it is asked for, so a third-party pass needs no code here."""

from __future__ import annotations

import os
import sys

import _signal  # signal's C half, loaded already: importing signal itself builds enums, time Ctrl-C could fall into

INTERRUPTED = "interrupted; nothing was written"


def exit_interrupted(signum=None, frame=None) -> None:
    """The SIGINT handler while no command body runs (start-up, parsing, after the answer): nothing is
    being written then, so exit at once, 130 and one line; a command body gets KeyboardInterrupt
    instead (``console.guard``), so that its temporary files are removed on the way out."""
    try:
        os.write(2, f"error: {INTERRUPTED}\n".encode())
    finally:
        os._exit(130)


def _is_the_program() -> bool:
    """This process is mcomp itself (the console script or ``python -m mcomp``), not a test importing it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "mcomp.__main__" or os.path.basename(sys.argv[0]) == "mcomp"


if _is_the_program():  # before the imports below: they take most of a second, a traceback's worth of Ctrl-C
    _signal.signal(_signal.SIGINT, exit_interrupted)

import contextlib
import importlib

import typer
from typer.core import TyperGroup
from typer.models import CommandInfo

from mcomp import __version__
from mcomp.cli.cmd_auto import auto
from mcomp.cli.cmd_bench import bench
from mcomp.cli.cmd_compare import compare
from mcomp.cli.cmd_export import export
from mcomp.cli.cmd_inspect import inspect
from mcomp.cli.cmd_passes import passes
from mcomp.cli.cmd_run import run as run_pipeline
from mcomp.cli.helpformat import HelpCommand

EPILOG = "Exit codes: 0 done; 1 internal failure; 2 bad usage or input; 3 a quality gate failed (nothing written)."
# The built-in pass commands, in the order help lists them; other registered passes follow by name.
BUILTIN_PASSES = ("prune", "distill", "quantize", "optimize")
# `mcomp --help` lists the commands by what a user comes to do; every pass (a third-party one too) compresses.
COMMAND_PANELS = {"run": "Compress", "inspect": "Inspect and measure", "bench": "Inspect and measure",
                  "compare": "Inspect and measure", "export": "Other", "passes": "Other"}


def command_spec(name: str):
    """The CommandSpec a built-in pass's ``cli/cmd_NAME.py`` declares, else None (the Config alone)."""
    try:
        module = importlib.import_module(f"mcomp.cli.cmd_{name.replace('-', '_')}")
    except ModuleNotFoundError as exc:
        if exc.name != f"mcomp.cli.cmd_{name.replace('-', '_')}":
            raise
        return None
    return getattr(module, "SPEC", None)


class Commands(TyperGroup):
    """The hand-written commands, plus a command per registered pass, built on first use: naming
    the passes costs no import; building one imports its pass module (not onnxruntime or torch)."""

    def list_commands(self, ctx) -> list[str]:
        from mcomp import registry

        names = list(self.commands)
        passes_ = [n for n in BUILTIN_PASSES if n in registry.names()]
        passes_ += [n for n in registry.names() if n not in passes_ and n not in names]
        return names[:1] + passes_ + names[1:]  # inspect, the passes, then the rest

    def get_command(self, ctx, name: str):
        if name in self.commands:
            return self.commands[name]
        from mcomp import registry

        if name not in registry.names():
            return None
        self.commands[name] = pass_click_command(name)
        return self.commands[name]

    def format_commands(self, ctx, formatter) -> None:
        """The commands in panels (Compress, Inspect and measure, Other), each with its first line."""
        names = [n for n in self.list_commands(ctx) if not getattr(self.get_command(ctx, n), "hidden", True)]
        limit = formatter.width - 6 - max(map(len, names), default=0)
        panels: dict[str, list[tuple[str, str]]] = {"Compress": []}
        for name in names:
            row = (name.ljust(max(map(len, names))), self.get_command(ctx, name).get_short_help_str(limit))
            panels.setdefault(COMMAND_PANELS.get(name, "Compress"), []).append(row)
        for title, rows in panels.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def pass_click_command(name: str):
    from mcomp import registry
    from mcomp.cli.generate import pass_command

    function = pass_command(registry.get(name), command_spec(name))
    info = CommandInfo(name=name, callback=function, epilog=EPILOG, cls=HelpCommand)
    command = typer.main.get_command_from_info(info, pretty_exceptions_short=False, rich_markup_mode=None)
    command.default_panel = function.panel  # the pass's own options (and its command's extras)
    return command


app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None, epilog=EPILOG, cls=Commands,
                  help="Make trained networks smaller and faster, and prove it: prune, quantize, distill, optimize.",
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"mcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    """Model compression from the command line."""


for command in (inspect, run_pipeline, auto, bench, compare, export, passes):
    name = command.__name__ if command is not run_pipeline else "run"
    app.command(name=name, epilog=EPILOG, cls=HelpCommand)(command)


def run() -> None:
    """The console script. Usage errors are one line and exit 2, like every other error; Ctrl-C at any
    moment is 130 and one line (design §5)."""
    from typer._click import exceptions as usage

    with contextlib.suppress(ValueError):  # ValueError: not the main thread (a test calling run())
        _signal.signal(_signal.SIGINT, exit_interrupted)
    try:
        code = app(standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:  # bare `mcomp`: the help, as a usage error
        exc.show()
        code = exc.exit_code
    except usage.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "mcomp"
        message = " ".join(exc.format_message().split())
        print(f"error: {message} (see '{where} --help')", file=sys.stderr)
        code = exc.exit_code
    except usage.ClickException as exc:  # e.g. a FileError from a parameter type
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:  # typer's, not click's: typer._click has none (so a completion's exit got a traceback)
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        code = 130
    with contextlib.suppress(ValueError):  # answered (and written): a late Ctrl-C must not say otherwise
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
