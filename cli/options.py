"""Shared option types, so that --provider or -o mean the same in every command (design §5).

Each names the help panel it shows in (``cli/helpformat.py``) and the word for its value
(``--threads N``, ``--data PATH|random``), so every command's help groups and words them alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from mcomp.cli.helpformat import CHECKPOINTS, DATA, GENERAL, OUTPUT
from mcomp.errors import BadInput

ModelArg = Annotated[str, typer.Argument(help="ONNX model, PyTorch checkpoint, or - for stdin", show_default=False)]
Output = Annotated[Optional[str], typer.Option("-o", "--output", help="output model path, or - for stdout [default: <stem>.<pass>.onnx beside the input]", show_default=False, rich_help_panel=OUTPUT, metavar="PATH")]
Data = Annotated[Optional[str], typer.Option("--data", help=".npz/.npy keyed by input name (optional 'labels'), an image folder, or 'random'", show_default=False, rich_help_panel=DATA, metavar="PATH|random")]
def _provider(value: str) -> str:
    """An unknown --provider is a usage error (one line, exit 2) before any work; see session.check_provider.
    A known one returns at once: session imports onnxruntime, which help and completion must not pay for."""
    if value in ("cpu", "cuda", "auto"):
        return value
    from mcomp.session import check_provider

    try:
        return check_provider(value)
    except BadInput as exc:
        raise typer.BadParameter(str(exc)) from None


Provider = Annotated[str, typer.Option("--provider", help="execution provider: cpu, cuda or auto (CUDA where available)", rich_help_panel=DATA, metavar="cpu|cuda|auto", callback=_provider)]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="intra-op threads [default: onnxruntime's]", show_default=False, rich_help_panel=DATA, metavar="N")]
Json = Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout", rich_help_panel=OUTPUT)]
Report = Annotated[Optional[Path], typer.Option("--report", help="report JSON path [default: beside the output]", show_default=False, rich_help_panel=OUTPUT, metavar="PATH")]
ReportMd = Annotated[Optional[Path], typer.Option("--report-md", help="also write the report as Markdown", show_default=False, rich_help_panel=OUTPUT, metavar="PATH")]
ReportHtml = Annotated[Optional[Path], typer.Option("--report-html", help="also write the report as one self-contained HTML page with plots (no network needed to open it)", show_default=False, rich_help_panel=OUTPUT, metavar="PATH")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="no progress, tables or warnings; errors still print", rich_help_panel=GENERAL)]
Debug = Annotated[bool, typer.Option("--debug", help="show tracebacks on errors", rich_help_panel=GENERAL)]
InputShape = Annotated[Optional[list[str]], typer.Option("--input-shape", help="concrete input shape, NAME=1,3,224,224 (or 1,3,224,224 for a single input); repeatable", show_default=False, rich_help_panel=DATA, metavar="SHAPE")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="module:factory (or file.py:factory) that builds the module for a state_dict checkpoint", show_default=False, rich_help_panel=CHECKPOINTS, metavar="MODULE:FACTORY")]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="allow unpickling a whole module (runs code from the file)", rich_help_panel=CHECKPOINTS)]
FidelityMode = Annotated[Optional[str], typer.Option(
    "--fidelity", help="what fidelity checks and gates compare: slice (the worst slice along each output's "
    "channel-like axes, e.g. a detector's class rows, or the centered or residual cosine where lower) or whole "
    "(one cosine per flattened output) [default: slice]", show_default=False, rich_help_panel=DATA,
    metavar="slice|whole")]
MetricSpec = Annotated[Optional[str], typer.Option("--metric", help="file.py:function(outputs, labels) -> score, higher is better: the task metric that accuracy, --max-drop and gates read, in place of top-1 (exact strings for a text recognizer, mAP for a detector)", show_default=False, rich_help_panel=DATA, metavar="FILE:FUNCTION")]
Runs = Annotated[int, typer.Option("--runs", min=3, help="timed rounds for latency (where a round is long: as many as fit in about 15 s, at least 10)", rich_help_panel=DATA, metavar="N")]
BenchRuns = Annotated[int, typer.Option("--runs", min=3, help="timed rounds for latency", rich_help_panel=DATA, metavar="N")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="untimed rounds before timing", rich_help_panel=DATA, metavar="N")]


def absolute_metric(spec: str | None) -> str | None:
    """``--metric file.py:function`` with the file named from here: a pipeline reads a metric file relative
    to its own folder, and ``mcomp auto``'s worker processes may run elsewhere."""
    if not spec:
        return None
    where, sep, function = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).resolve()}:{function}"
    return spec


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    """``["x=1,3,224,224"]`` → ``{"x": (1, 3, 224, 224)}``; an unnamed shape is keyed ``""``."""
    if not values:
        return None
    shapes = {}
    for value in values:
        name, _, dims = value.rpartition("=")
        try:  # 1,3,224,224 or 1x3x224x224; an empty dim ("1,,8", "1,x,8") is a typo, not a separator
            shape = tuple(int(d) for d in re.split(r"[,x]", dims.strip()))
        except ValueError:
            raise BadInput(f"--input-shape {value!r}: expected NAME=1,3,224,224 or 1,3,224,224") from None
        if not shape or any(d <= 0 for d in shape):
            raise BadInput(f"--input-shape {value!r}: dims must be positive integers")
        shapes[name.strip()] = shape
    if "" in shapes and len(shapes) > 1:
        raise BadInput("--input-shape: name every shape when giving more than one")
    return shapes
