"""The ``mcomp`` command: one typer app, one module per command (parse → library call → render)."""

from __future__ import annotations

import typer

from mcomp import __version__
from mcomp.cli.cmd_bench import bench
from mcomp.cli.cmd_compare import compare
from mcomp.cli.cmd_distill import distill
from mcomp.cli.cmd_export import export
from mcomp.cli.cmd_inspect import inspect
from mcomp.cli.cmd_optimize import optimize
from mcomp.cli.cmd_passes import passes
from mcomp.cli.cmd_prune import prune
from mcomp.cli.cmd_quantize import quantize
from mcomp.cli.cmd_run import run as run_pipeline

EPILOG = "Exit codes: 0 done; 1 internal failure; 2 bad usage or input; 3 a quality gate failed (nothing written)."

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, epilog=EPILOG,
                  help="Make trained networks smaller and faster, and prove it: prune, quantize, distill, optimize.",
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"mcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    """Model compression from the command line."""


for command in (inspect, prune, distill, quantize, optimize, run_pipeline, bench, compare, export, passes):
    app.command(name=command.__name__ if command is not run_pipeline else "run", epilog=EPILOG)(command)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
