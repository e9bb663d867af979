"""``mcomp passes``: the installed passes with their options, on stdout (the command's result);
``-q``: their names alone."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated

import typer
from rich.table import Table

from mcomp.cli import console
from mcomp.cli.helpformat import GENERAL, OUTPUT
from mcomp.cli.options import Debug

Json = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                    help="print the passes and their options as JSON on stdout")]
# The list is this command's result, so -q does not silence it: it leaves only the names, one per
# line, for scripts (`for p in $(mcomp passes -q)`), as `docker ps -q` leaves the ids.
NamesOnly = Annotated[bool, typer.Option("-q", "--quiet", rich_help_panel=GENERAL,
                                         help="only the pass names, one per line (for scripts)")]


@console.command
def passes(json: Json = False, quiet: NamesOnly = False, debug: Debug = False) -> None:
    """List the passes installed through the 'mcomp.passes' entry points, with their options.

    Example: mcomp passes -q (the names alone, one per line)
    """
    from mcomp import registry

    if quiet and not json:
        sys.stdout.write("".join(f"{name}\n" for name in registry.names()))
        return
    described = [registry.describe(name) for name in registry.names()]
    if json:
        sys.stdout.write(jsonlib.dumps(described, indent=2) + "\n")
        return
    for d in described:
        table = Table(title=f"{d['name']}: {d['summary']}", title_justify="left")
        for col in ("option", "type", "default", "description"):
            table.add_column(col)
        for key, o in d["options"].items():
            kind = o.get("type", "") + (f" {o['enum']}" if "enum" in o else "")
            table.add_row(key, kind, str(o.get("default", "")), o.get("description", ""))
        console.out.print(table)
    if not described:
        console.out.print("no passes installed")
