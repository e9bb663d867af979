"""Pass commands built from the pass's ``Config`` (design §5): the YAML and the CLI cannot drift.

Every field of a registered pass's Config becomes an option of ``mcomp NAME``: ``--field-name``,
its type, ``Literal`` choices shown as choices, its bounds as a range, its default and its
description as help. The options every model-writing command shares (``-o``, ``--data``,
``--provider`` …, ``-q``, ``--debug``) are added once, here. A built-in pass may add a
``CommandSpec`` in its ``cli/cmd_NAME.py`` for what is about the command rather than the pass
(other flag spellings, a gate, a second data set); a third-party pass found through the
``mcomp.passes`` entry points gets its command with no code in ``cli/``. In help the pass's own
options come first, in a panel of their own ("Quantize options", or the panels its Config's
fields name), then the shared panels (``cli/helpformat.py``).

typer builds commands from function signatures, so a command here is a function whose
``__signature__`` is assembled from the Config; typer reads it as it would a hand-written one.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional

import annotated_types
import typer

from mcomp.cli import console
from mcomp.cli import options as shared
from mcomp.cli.pass_command import Common, run_single_pass

# The options every model-writing command takes, in the order help shows them.
# Each names its help panel (options.py); the pass's own options come first, in a panel of their own.
COMMON_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("data", shared.Data, None), ("input_shape", shared.InputShape, None), ("runs", shared.Runs, 30),
    ("provider", shared.Provider, "auto"), ("threads", shared.Threads, None),
    ("output", shared.Output, None), ("report", shared.Report, None), ("report_md", shared.ReportMd, None),
    ("report_html", shared.ReportHtml, None), ("json", shared.Json, False),
    ("arch", shared.Arch, None), ("trust_checkpoint", shared.Trust, False), ("metric", shared.MetricSpec, None),
)
FIDELITY_OPTION = ("fidelity", shared.FidelityMode, None)  # only where a check of the pass uses it
OUTPUT_CONTROL = (("quiet", shared.Quiet, False), ("debug", shared.Debug, False))


@dataclass
class CommandSpec:
    """What a pass's command adds to its Config's options; all optional."""

    argument: str = "model"  # name of the model argument (distill: student)
    argument_help: str | None = None
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # field → its flag spellings
    required: tuple[str, ...] = ()  # fields the command line must give (though the YAML may omit them)
    # Options of the command that are not pass options: (name, Annotated type, default).
    extra: tuple[tuple[str, Any, Any], ...] = ()
    # Runs the step: (options, extra values, Common) → report; default: a one-step pipeline.
    run: Callable[[dict, dict, Common], dict] | None = None
    help: str | None = None  # the command's help [default: the pass class's docstring]
    panel: str | None = None  # the help panel of the pass's own options [default: "Quantize options"]
    # Further panels for some of them, in help order: {"Calibration": ("calibration", "percentile")}.
    panels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def panel_of(self, name: str) -> str | None:
        return next((panel for panel, names in self.panels.items() if name in names), None)


def pass_command(cls, spec: CommandSpec | None = None) -> Callable[..., None]:
    """A typer-ready command function for the pass class ``cls``."""
    spec = spec or CommandSpec()
    fields = cls.Config.model_fields
    common = COMMON_OPTIONS + ((FIDELITY_OPTION,) if getattr(cls, "checks_fidelity", False) else ())
    reserved = {spec.argument} | {name for name, _, _ in common + OUTPUT_CONTROL + spec.extra}
    clash = reserved.intersection(fields)
    if clash:
        raise TypeError(f"pass {cls.name!r}: option(s) {sorted(clash)} clash with the command's own options")

    argument_help = spec.argument_help or "ONNX model, PyTorch checkpoint, or - for stdin"
    params = [_param(spec.argument, Annotated[str, typer.Argument(help=argument_help, show_default=False)],
                     inspect.Parameter.empty, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [_param(name, *option_for(name, info, spec)) for name, info in fields.items()]
    params += [_param(name, kind, default) for name, kind, default in spec.extra + common + OUTPUT_CONTROL]

    def command(**values: Any) -> None:
        options = {name: _parsed(values[name], info) for name, info in fields.items()}
        extra = {name: values[name] for name, _, _ in spec.extra}
        run_common = Common(values[spec.argument], **{name: values[name] for name, _, _ in common})
        if spec.run is not None:
            spec.run(options, extra, run_common)
        else:
            run_single_pass(cls.name, options, run_common)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.help or (cls.__doc__ or cls.summary or cls.name)
    command.__name__ = cls.name.replace("-", "_")
    command = console.command(command)
    command.panel = spec.panel or f"{cls.name.replace('-', ' ').capitalize()} options"  # see helpformat.HelpCommand
    return command


def option_names(cls, spec: CommandSpec | None = None) -> set[str]:
    """The option parameters a pass command takes (for the test that Config and CLI agree)."""
    spec = spec or CommandSpec()
    common = COMMON_OPTIONS + ((FIDELITY_OPTION,) if getattr(cls, "checks_fidelity", False) else ())
    return set(cls.Config.model_fields) | {name for name, _, _ in spec.extra + common + OUTPUT_CONTROL}


def option_for(name: str, info, spec: CommandSpec) -> tuple[Any, Any]:
    """(Annotated type, default) of the option for one Config field."""
    kind, optional = _unwrap_optional(info.annotation)
    flags = spec.flags.get(name) or (_flag(name, kind),)
    required = name in spec.required or info.is_required()
    help_text = info.description or name.replace("_", " ")  # every option says something in --help
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    # A Config may group its fields in help: Field(..., json_schema_extra={"panel": "Calibration"}).
    option = functools.partial(typer.Option, *flags, rich_help_panel=extra.get("panel") or spec.panel_of(name))
    default = inspect.Parameter.empty if required else _default(info)
    show_default = default not in (None, inspect.Parameter.empty) and not isinstance(default, list)
    if typing.get_origin(kind) is list:
        item = (typing.get_args(kind) or (str,))[0]
        item = item if item in (str, int, float) or _choices(item) else str
        return Annotated[Optional[list[item]], option(help=help_text + "; repeatable", show_default=False,
                                                      metavar=_metavar(name, item))], None
    if kind is bool:
        return Annotated[bool, option(help=help_text, show_default=True)], default
    if kind in (int, float):  # bounds in the help; the Config checks them (one line, exit 2)
        help_text += _range_text(info.metadata)
    elif kind is not str and _choices(kind) is None:
        # Anything else (a mapping, a nested model): YAML text on the command line, validated by the Config.
        return Annotated[Optional[str], option(help=help_text + " (YAML)", show_default=False, metavar="YAML")], None
    help_text = _choice_paragraphs(help_text, _choices(kind) or ())
    value = option(help=help_text, show_default=show_default, metavar=_metavar(name, kind))
    return Annotated[Optional[kind] if optional or default is None else kind, value], default


def _metavar(name: str, kind) -> str | None:
    """What the value looks like, in words a user reads (not a Python type); choices list themselves."""
    choices = _choices(kind)
    if choices:
        return "|".join(str(c) for c in choices)
    words = {"teacher": "PATH", "checkpoint_dir": "PATH", "teacher_arch": "MODULE:FACTORY", "hints": "STUDENT=TEACHER",
             "exclude": "NAME|OP"}
    return {int: "N", float: "X"}.get(kind, words.get(name, "TEXT"))


def _choice_paragraphs(text: str, choices: tuple) -> str:
    """A description that says what each choice does ("static: …; dynamic: …; fp16") gets a
    paragraph per choice in --help, so a user scans the modes instead of reading one long line."""
    parts = [part.strip() for part in text.split("; ")]
    if len(parts) < 2 or len(parts) != len(choices) or any(
            part.partition(":")[0] != str(choice) for part, choice in zip(parts, choices)):
        return text
    return "\n\n".join(parts)


def _param(name: str, annotation, default, kind=inspect.Parameter.KEYWORD_ONLY) -> inspect.Parameter:
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


def _flag(name: str, kind) -> str:
    flag = "--" + name.replace("_", "-")
    return f"{flag}/--no-{name.replace('_', '-')}" if kind is bool else flag


def _unwrap_optional(annotation) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (annotation, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _choices(kind) -> tuple | None:
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _default(info):
    if info.default_factory is not None:
        value = info.default_factory()
        return None if isinstance(value, (list, dict)) else value  # None: the Config's own default applies
    return info.default


def _range_text(metadata) -> str:
    """Pydantic's bounds for the help: " [0 < x < 1]"."""
    lo = hi = ""
    for bound in metadata:
        if isinstance(bound, annotated_types.Ge):
            lo = f"{bound.ge} ≤ "
        elif isinstance(bound, annotated_types.Gt):
            lo = f"{bound.gt} < "
        elif isinstance(bound, annotated_types.Le):
            hi = f" ≤ {bound.le}"
        elif isinstance(bound, annotated_types.Lt):
            hi = f" < {bound.lt}"
    return f" [{lo}x{hi}]" if lo or hi else ""


def _parsed(value, info):
    """A command-line value as the Config expects it (YAML text for structured fields)."""
    kind, _ = _unwrap_optional(info.annotation)
    if isinstance(value, str) and kind not in (str,) and _choices(kind) is None:
        import yaml

        return yaml.safe_load(value)
    return value
