"""``mcomp prune MODEL --rate 0.5 [...]``: pruning as a one-step pipeline."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Data, Debug, InputShape, Json, ModelArg, Output, Provider, Quiet, Report,
                               ReportMd, Runs, Threads, Trust)
from mcomp.cli.pass_command import Common, run_single_pass


def prune(
    model: ModelArg,
    rate: Annotated[float, typer.Option("--rate", help="share removed: of prunable weights (unstructured), of channels (structured), or of --target")] = 0.5,
    method: Annotated[str, typer.Option("--method", help="magnitude | random | taylor (zero weights); structured (remove channels by --importance); merge (fold near-duplicate filters)")] = "magnitude",
    target: Annotated[Optional[str], typer.Option("--target", help="what --rate is a share of: weights, channels, params or macs [default: weights, or channels for structured/merge]", show_default=False)] = None,
    scope: Annotated[str, typer.Option("--scope", help="unstructured: global (one threshold) or layer (the rate in each layer)")] = "global",
    importance: Annotated[str, typer.Option("--importance", help="structured: l1 | l2 | bn | taylor | random")] = "l1",
    round_to: Annotated[int, typer.Option("--round-to", help="structured: kept channels rounded to a multiple of this")] = 8,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="node name glob or op type never pruned; repeatable")] = None,
    protect_ends: Annotated[bool, typer.Option("--protect-ends/--no-protect-ends", help="leave the first and last prunable layers whole")] = True,
    max_layer_rate: Annotated[float, typer.Option("--max-layer-rate", help="no layer loses more than this share")] = 0.95,
    batches: Annotated[int, typer.Option("--batches", help="taylor: batches of --data for the gradients")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="taylor: prune in this many steps, with fresh gradients in each")] = 5,
    output: Output = None, data: Data = None, provider: Provider = "auto", threads: Threads = None,
    json: Json = False, report: Report = None, report_md: ReportMd = None, input_shape: InputShape = None,
    arch: Arch = None, trust_checkpoint: Trust = False, runs: Runs = 30,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Prune weights or channels; the report gives the requested and achieved figures per layer.

    Examples: mcomp prune model.onnx --rate 0.8 (unstructured, global magnitude);
    mcomp prune model.onnx --method structured --rate 0.5 --importance l2;
    mcomp prune model.onnx --method structured --target macs --rate 0.5
    """
    console.configure(quiet, json)
    with console.guard(debug):
        options = {"method": method, "rate": rate, "target": target, "scope": scope, "importance": importance,
                   "round_to": round_to, "exclude": exclude or [], "protect_ends": protect_ends,
                   "max_layer_rate": max_layer_rate, "batches": batches,
                   "steps": steps}
        run_single_pass("prune", options, Common(model, output, data, provider, threads, json, report, report_md,
                                                 input_shape, arch, trust_checkpoint, runs))
