"""``mcomp passes``: the installed passes with their options, on stdout (the command's result)."""

from __future__ import annotations

import json as jsonlib
import sys

from rich.table import Table

from mcomp.cli import console
from mcomp.cli.options import Debug, Json, Quiet


@console.command
def passes(json: Json = False, quiet: Quiet = False, debug: Debug = False) -> None:
    """List the passes installed through the 'mcomp.passes' entry points, with their options."""
    from mcomp import registry

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
