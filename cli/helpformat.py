"""Command help as people read it: options in panels, arguments and values as words (``MODEL``, ``N``).

A pass command has some thirty options; one flat list hides the few a user came for. typer
groups options by ``rich_help_panel``, but only in its rich help, which reads every help text as
rich markup (``[default: <stem>.<pass>.onnx beside the input]`` would be eaten as a tag) and
styles what a pipe gets. Here the panels are plain sections written by click's formatter
(``Quantize options:``, ``Data and measurement:`` …): text prints as it is, a pipe gets plain
text, and help imports nothing beyond typer.

typer also writes a required argument as ``{model}`` and a value as ``<int range>`` or
``<list[str]>`` (Python types); a user reads ``MODEL`` and ``N``. ``HelpCommand`` names them so
when the command is built, which also makes errors say ``Missing argument 'MODEL'``.
"""

from __future__ import annotations

import typing

from typer.core import TyperCommand

# The panels every model-writing command shares, in the order help shows them, after the
# command's own options. ``options.py`` assigns the shared options to them.
DATA = "Data and measurement"
OUTPUT = "Output and reports"
CHECKPOINTS = "Checkpoints"
GENERAL = "General"
SHARED_PANELS = (DATA, OUTPUT, CHECKPOINTS, GENERAL)
OWN_PANEL = "Options"  # the panel of an option that names none, unless the command says otherwise


class HelpCommand(TyperCommand):
    """A typer command whose help lists options by panel and names every value in words.

    ``default_panel``: where options that name no panel go (a pass command: ``Quantize options``)."""

    default_panel: str = OWN_PANEL

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None:
                param.metavar = value_word(param)

    def collect_usage_pieces(self, ctx) -> list[str]:
        """``[OPTIONS] MODEL`` and ``[MODEL]`` for an optional one, not typer's ``{model}``."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                word = argument_word(param)
                pieces.append(word if param.required else f"[{word}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        write_panels(self, ctx, formatter)


def value_word(param) -> str | None:
    """How a value looks, in the word a user reads: MODEL for an argument ``model``, N for an
    integer, X for a number, PATH for a path, the choices themselves; None for a flag."""
    if param.param_type_name == "argument":
        return (param.name or "arg").upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    described = getattr(param, "type_descriptor", None)
    if described is None:
        return None
    if described.choices is not None:
        return "|".join(str(c) for c in described.choices)
    if described.is_path:
        return "PATH"
    kind = described.annotation
    if typing.get_origin(kind) is list:
        kind = (typing.get_args(kind) or (str,))[0]
    return {int: "N", float: "X"}.get(kind, "TEXT")


def argument_word(param) -> str:
    """MODEL, or MODELS... for an argument that takes several."""
    return param.metavar + ("..." if param.nargs != 1 else "")


def panel_of(param, default: str) -> str:
    """The panel an option shows in: its own, else General for --help, else the command's default."""
    panel = getattr(param, "rich_help_panel", None)
    if panel:
        return panel
    return GENERAL if param.name == "help" else default


def write_panels(command, ctx, formatter) -> None:
    """Arguments, then the command's own panels in the order their options come, then the shared ones."""
    arguments: list[tuple[str, str]] = []
    panels: dict[str, list[tuple[str, str]]] = {}
    default = getattr(command, "default_panel", OWN_PANEL)
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append((argument_word(param), record[1]))
        else:
            panels.setdefault(panel_of(param, default), []).append(record)
    rows = arguments + [row for group in panels.values() for row in group]
    width = min(max((len(first) for first, _ in rows), default=0), 30)  # one column for every panel
    order = [p for p in panels if p not in SHARED_PANELS] + [p for p in SHARED_PANELS if p in panels]
    start = len(formatter.buffer)
    for title, group in [("Arguments", arguments)] * bool(arguments) + [(p, panels[p]) for p in order]:
        with formatter.section(title):
            formatter.write_dl([(first.ljust(width), text) for first, text in group])
    # click indents the blank line between two paragraphs of a help text; a blank line stays blank
    formatter.buffer[start:] = ["\n" if p.endswith("\n") and not p.strip() else p for p in formatter.buffer[start:]]
