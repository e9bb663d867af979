"""What every model-writing command shares: build a pipeline, run it, write model and report.

A single-pass command (``mcomp optimize …``) is a one-step pipeline (design §4).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcomp.cli import console
from mcomp.cli.options import parse_input_shapes
from mcomp.cli.render import print_report
from mcomp.errors import BadInput, GateFailed


@dataclass
class Common:
    """The options every model-writing command takes."""

    model: str | None
    output: str | None = None
    data: str | None = None
    provider: str = "auto"
    threads: int | None = None
    json: bool = False
    report: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    input_shape: list[str] | None = None
    arch: str | None = None
    trust_checkpoint: bool = False
    runs: int = 30
    fidelity: str | None = None  # --fidelity slice|whole; None keeps the pipeline's measure.fidelity
    metric: str | None = None  # --metric file.py:function; None keeps the pipeline's measure.metric


def command_line() -> str:
    return "mcomp " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_single_pass(name: str, options: dict[str, Any], common: Common, gate=None, *, eval_data: str | None = None,
                    latency: bool = True, seed: int = 0) -> dict:
    """A one-step pipeline. ``--data`` serves every role (calibration, training, evaluation) unless
    ``eval_data`` names the evaluation set; ``gate``: an optional ``pipeline_spec.Gate``
    (``mcomp quantize --min-speedup``); ``latency=False`` skips the final timing (torchrun ranks > 0)."""
    from mcomp.pipeline_spec import DataRoles, Gate, Measure, Pipeline, single_step

    step = single_step(name, {k: v for k, v in options.items() if v is not None})
    data = common.data
    roles = DataRoles(calibration=data, evaluation=eval_data or data, training=data)
    pipeline = Pipeline(steps=[step], data=roles, provider=common.provider, threads=common.threads, seed=seed,
                        measure=Measure(runs=common.runs, latency=latency), gate=gate or Gate())
    return execute(pipeline, common)


def execute(pipeline, common: Common) -> dict:
    """Runs ``pipeline`` with the command line's overrides; writes the model, then the report."""
    from mcomp import atomic
    from mcomp import model as model_io
    from mcomp import report as report_io
    from mcomp.pipeline import RunRequest, inputs_of
    from mcomp.pipeline import execute as run_pipeline

    if common.json and common.output == "-":
        raise BadInput("--json and -o - both want stdout; write the model or the report to a file")
    if common.fidelity is not None:
        from mcomp.evaluate import FIDELITY_MODES

        if common.fidelity not in FIDELITY_MODES:
            raise BadInput(f"--fidelity {common.fidelity!r}: expected one of {', '.join(FIDELITY_MODES)}")
        pipeline = pipeline.model_copy(update={"measure": pipeline.measure.model_copy(update={"fidelity": common.fidelity})})
    if common.metric is not None:
        from mcomp.cli.options import absolute_metric

        measure = pipeline.measure.model_copy(update={"metric": absolute_metric(common.metric)})
        pipeline = pipeline.model_copy(update={"measure": measure})
    if common.provider != "auto" or common.threads:
        pipeline = pipeline.model_copy(update={"provider": common.provider, "threads": common.threads or pipeline.threads})
    shapes = parse_input_shapes(common.input_shape)
    load = model_io.LoadOptions(common.arch, common.trust_checkpoint, shapes)
    report_path = common.report or (Path(pipeline.resolve(pipeline.report)) if pipeline.report else None)
    html_path = common.report_html or (Path(pipeline.resolve(pipeline.report_html)) if pipeline.report_html else None)
    output = common.output or pipeline.resolve(pipeline.output)
    protect = inputs_of(pipeline, common.model or pipeline.resolve(pipeline.model)) + ((output,) if output else ())
    for path in (report_path, common.report_md, html_path):
        if path is not None:
            model_io.check_writable(Path(path), protect=protect)
    sides = [str(p) for p in (output, report_path, common.report_md, html_path) if p not in (None, "-")]
    for i, a in enumerate(sides):
        for b in sides[i + 1:]:
            if Path(a).resolve() == Path(b).resolve():
                raise BadInput(f"{b}: named twice among the output model, --report, --report-md and --report-html")
    given = [report_path, common.report_md, html_path]

    def reports_of(model: Path) -> list[Path]:  # what a new model at ``model`` makes stale
        return [Path(p) for p in [given[0] or model.with_suffix(".report.json"), *given[1:]] if p is not None]

    with atomic.writes_together(reports_of):  # the model's output stays locked until its reports are written
        try:
            with console.Progress(enabled=not common.json) as progress:
                outcome = run_pipeline(pipeline, RunRequest(common.model, common.output, load, command_line(), progress))
        except GateFailed as failed:  # nothing is written; scripts still get the measurements with --json
            if common.json and failed.report is not None:
                sys.stdout.write(report_io.to_json(failed.report))
            raise
        doc = outcome.report
        if report_path is None and outcome.output not in (None, "-"):
            report_path = Path(outcome.output).with_suffix(".report.json")
        _write_reports(doc, report_path, common.report_md, html_path)
    if common.json:
        sys.stdout.write(report_io.to_json(doc))
    print_report(doc)
    if report_path is not None:
        verb = "replaced" if outcome.replaced else "wrote"
        console.say(f"{verb} {outcome.output} and {report_path}")
    return doc


def _write_reports(doc: dict, report_path: Path | None, md_path: Path | None, html_path: Path | None) -> None:
    from mcomp import model as model_io
    from mcomp import report as report_io

    if report_path is not None:
        model_io.write_bytes_atomic(Path(report_path), report_io.to_json(doc).encode())
    if md_path is not None:
        model_io.write_bytes_atomic(Path(md_path), report_io.to_markdown(doc).encode())
    if html_path is not None:  # matplotlib is imported here, and only here
        from mcomp import report_html

        model_io.write_bytes_atomic(Path(html_path), report_html.to_html(doc).encode())


def torchrun_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return int(os.environ.get("RANK", "0") or 0)
    return 0


@contextlib.contextmanager
def rank_scratch(rank: int):
    """A throw-away folder for the outputs of torchrun ranks above 0 (rank 0 writes the result)."""
    if rank == 0:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mcomp-rank-") as folder:
        yield folder
