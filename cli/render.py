"""Renderings (rich tables) of a pass's report, on stderr (its stdout may carry the model).
``inspect``'s and ``bench``'s tables live with their commands (``cmd_inspect``, ``cmd_bench``).

The consoles print text as it is (no markup: ``cli/console.py``), so a name holding ``[...]``
shows whole; colour comes from styled ``Text``."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from mcomp.cli.console import err, quiet
from mcomp.report import headline


def print_report(doc: dict) -> None:
    if quiet():
        return
    table = Table(title=f"mcomp: {doc['input']['path']} → {doc['output'].get('path') or '(not written)'}",
                  title_justify="left")
    for col, justify in (("metric", "left"), ("input", "right"), ("output", "right"), ("change", "right")):
        table.add_column(col, justify=justify)
    for row in headline(doc):
        table.add_row(*row)
    err.print(table)
    for step in doc["steps"]:
        summary = step["summary"] or ("changed the model" if step["modified"] else "model unchanged")
        err.print(f"  step {step['pass']}: {step['seconds']} s; {summary}")
    for gate, g in doc.get("gates", {}).items():
        verdict = ("passed", "") if g["passed"] else ("FAILED", "red")
        err.print(Text.assemble(f"  gate {gate}: limit {g['limit']}, value {g['value']}: ", verdict))
    for note in doc.get("notes", []):
        err.print(f"  note: {note}")
    print_warnings(doc)


def print_warnings(doc: dict) -> None:
    """A result much worse than its input, last, where the eye lands: yellow (red when severe) on a
    terminal, plain ``warning: …`` lines in a pipe or a log (the console drops styles there)."""
    found = doc.get("warnings") or []
    for i, w in enumerate(found):
        colour = "red" if w["severity"] == "severe" else "yellow"
        err.print(Text.assemble(("warning: ", f"bold {colour}"), (w["message"], colour)))
        if i + 1 == len(found) or found[i + 1]["advice"] != w["advice"]:  # one advice under the warnings it answers
            err.print(Text.assemble("  next: ", (w["advice"], "bold")))
