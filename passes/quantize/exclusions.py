"""``--exclude``: node names, globs, op types, or a previous report whose exclusions to reuse."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import onnx

from mcomp.errors import BadInput


def matcher(entries: list[str]):
    """``(name, op_type) -> bool`` for node names/globs, op types, and exclusions read from a report."""
    patterns: list[str] = []
    for entry in entries:
        if entry.endswith(".json"):
            patterns += _report_exclusions(Path(entry))
        else:
            patterns.append(entry)
    names = [p for p in patterns if p]

    def match(name: str, op_type: str) -> bool:
        return any(p == op_type or p == name or fnmatch.fnmatchcase(name, p) for p in names)

    return match


def excluded_nodes(entries: list[str], proto: onnx.ModelProto,
                   aliases: dict[str, tuple[str, str]] | None = None) -> set[str]:
    """Names of the top-level nodes of ``proto`` that ``entries`` exclude; ``aliases`` gives a rewritten
    node's name and op type in the input (the user names the input's nodes)."""
    if not entries:
        return set()
    match = matcher(entries)
    aliases = aliases or {}
    return {n.name for n in proto.graph.node
            if match(n.name, n.op_type) or (n.name in aliases and match(*aliases[n.name]))}


def _report_exclusions(path: Path) -> list[str]:
    """The ``exclusions`` of every quantize step of a previous report (or a JSON list of names)."""
    if not path.is_file():
        raise BadInput(f"quantize: --exclude {path}: no such report file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"quantize: --exclude {path}: not JSON ({exc})") from None
    if isinstance(doc, list):
        return [str(x) for x in doc]
    found = [name for step in doc.get("steps", []) if step.get("pass") == "quantize"
             for name in step.get("changes", {}).get("exclusions", [])]
    if not found and not any(step.get("pass") == "quantize" for step in doc.get("steps", [])):
        raise BadInput(f"quantize: --exclude {path}: the report has no quantize step")
    return found
