"""``mcomp run PIPELINE.yaml [MODEL]``: a declared pipeline of passes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Debug, FidelityMode, InputShape, Json, Output, Provider, Quiet, Report, ReportHtml,
                               ReportMd, Threads, Trust)
from mcomp.cli.pass_command import Common, execute, rank_scratch, torchrun_rank


@console.command
def run(
    pipeline_file: Annotated[Path, typer.Argument(metavar="PIPELINE.yaml", help="pipeline YAML: model, data, steps, gate, output (see the README)", show_default=False)],
    model: Annotated[Optional[str], typer.Argument(help="model; overrides 'model:' in the file", show_default=False)] = None,
    output: Output = None, provider: Provider = "auto", threads: Threads = None, json: Json = False,
    report: Report = None, report_md: ReportMd = None, report_html: ReportHtml = None, input_shape: InputShape = None,
    arch: Arch = None, trust_checkpoint: Trust = False, fidelity: FidelityMode = None,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Run the steps of a pipeline file, measure the result against the input, apply its gates, write model and report.

    Example: mcomp run configs/quickstart.yaml
    """
    rank = torchrun_rank()
    with rank_scratch(rank) as scratch:  # under torchrun, only rank 0 writes the model and the report
        from mcomp.pipeline_spec import load_file

        pipeline = load_file(pipeline_file)
        if scratch is not None:
            console.configure(True, False)
            output, report, json = str(Path(scratch) / "model.onnx"), Path(scratch) / "r.json", False
            report_md = report_html = None
            pipeline = pipeline.model_copy(update={"report_html": None})  # nor the file's report_html: page
        execute(pipeline, Common(model, output=output, provider=provider, threads=threads, json=json, report=report,
                                 report_md=report_md, report_html=report_html, input_shape=input_shape, arch=arch,
                                 trust_checkpoint=trust_checkpoint, fidelity=fidelity))
