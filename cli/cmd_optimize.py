"""``mcomp optimize MODEL [--level ...]``: graph optimization as a one-step pipeline."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, FidelityMode, Data, Debug, InputShape, Json, ModelArg, Output, Provider, Quiet, Report,
                               ReportMd, Runs, Threads, Trust)
from mcomp.cli.pass_command import Common, run_single_pass


def optimize(
    model: ModelArg,
    level: Annotated[str, typer.Option("--level", help="onnxruntime offline level after the portable rewrites: none, basic (portable ONNX), extended, all (onnxruntime-specific, for --provider)")] = "basic",
    tolerance: Annotated[float, typer.Option("--tolerance", help="max |Δ| per output, relative to max(1, max |reference|); a stage beyond it is dropped")] = 1e-4,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="stage not to run (fold-constants, eliminate, fuse-batchnorm, fuse, onnxruntime); repeatable")] = None,
    output: Output = None, data: Data = None, provider: Provider = "auto", threads: Threads = None,
    json: Json = False, report: Report = None, report_md: ReportMd = None, input_shape: InputShape = None,
    arch: Arch = None, trust_checkpoint: Trust = False, runs: Runs = 30, fidelity: FidelityMode = None,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Fold constants and BatchNorm, drop dead/identity nodes, fuse, then run onnxruntime's offline optimizer.

    Every stage is checked numerically against the input; one that changes outputs beyond --tolerance is dropped.

    Example: mcomp optimize model.onnx --level basic -o model.opt.onnx
    """
    console.configure(quiet, json)
    with console.guard(debug):
        run_single_pass("optimize", {"level": level, "tolerance": tolerance, "skip": skip or []},
                        Common(model, output, data, provider, threads, json, report, report_md, input_shape, arch,
                               trust_checkpoint, runs, fidelity=fidelity))
