"""The ``mcomp`` command: one typer app. Hand-written commands for what is not a pass (inspect,
bench, compare, export, run, passes); one command per registered pass, built from its Config
(``cli/generate.py``) when it is asked for, so a third-party pass needs no code here."""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup
from typer.models import CommandInfo

from mcomp import __version__
from mcomp.cli.cmd_bench import bench
from mcomp.cli.cmd_compare import compare
from mcomp.cli.cmd_export import export
from mcomp.cli.cmd_inspect import inspect
from mcomp.cli.cmd_passes import passes
from mcomp.cli.cmd_run import run as run_pipeline

EPILOG = "Exit codes: 0 done; 1 internal failure; 2 bad usage or input; 3 a quality gate failed (nothing written)."
# The built-in pass commands, in the order help lists them; other registered passes follow by name.
BUILTIN_PASSES = ("prune", "distill", "quantize", "optimize")


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


def pass_click_command(name: str):
    from mcomp import registry
    from mcomp.cli.generate import pass_command

    function = pass_command(registry.get(name), command_spec(name))
    info = CommandInfo(name=name, callback=function, epilog=EPILOG)
    return typer.main.get_command_from_info(info, pretty_exceptions_short=False, rich_markup_mode=None)


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, epilog=EPILOG, cls=Commands,
                  help="Make trained networks smaller and faster, and prove it: prune, quantize, distill, optimize.",
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"mcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    """Model compression from the command line."""


for command in (inspect, run_pipeline, bench, compare, export, passes):
    app.command(name=command.__name__ if command is not run_pipeline else "run", epilog=EPILOG)(command)


def run() -> None:
    """The console script. Usage errors are one line and exit 2, like every other error (design §5)."""
    import sys

    from typer._click import exceptions as usage

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
    except usage.Abort:
        print("error: interrupted; nothing was written", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
