"""``mcomp auto MODEL --data TRAIN --max-drop 0.01``: the fastest (smallest, fewest MACs) model
within an accuracy or fidelity budget, found by a resumable search over pipelines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Debug, FidelityMode, InputShape, Json, ModelArg, Output, Provider, Quiet, Report,
                               ReportHtml, Runs, Threads, Trust, absolute_metric, parse_input_shapes)
from mcomp.errors import BadInput, GateFailed

SEARCH = "Search"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``10m``, ``1.5h`` → seconds."""
    if text is None:
        return None
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise BadInput(f"--time-budget {text!r}: expected a positive duration such as 600, 90s, 10m or 1h")
    return float(match.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}.get(match.group(2) or "s")


@console.command
def auto(
    model: ModelArg,
    data: Annotated[str, typer.Option("--data", help="training data (.npz with inputs, optional 'labels'; an image folder): "
                                      "calibrates, distils, and is measured on when --eval is absent", show_default=False,
                                      rich_help_panel=SEARCH, metavar="PATH")],
    eval_data: Annotated[Optional[str], typer.Option("--eval", "--eval-data",
                                                     help="held-out evaluation data; with labels for --max-drop",
                                                     show_default=False, rich_help_panel=SEARCH, metavar="PATH")] = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", min=0, max=1, help="budget: accuracy points lost, as a "
                                                      "fraction (0.01 = one point); needs labels", show_default=False,
                                                      rich_help_panel=SEARCH, metavar="X")] = None,
    min_fidelity: Annotated[Optional[float], typer.Option(
        "--min-fidelity", min=-1, max=1,
        help="budget: lowest worst-slice (or centered, residual) cosine against the input",
        show_default=False, rich_help_panel=SEARCH, metavar="X")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="file.py:function(outputs, labels) -> score, higher "
                                                  "is better: the accuracy --max-drop bounds, in place of top-1",
                                                  show_default=False, rich_help_panel=SEARCH, metavar="FILE:FUNCTION")] = None,
    objective: Annotated[str, typer.Option("--objective", help="what the search minimises", rich_help_panel=SEARCH,
                                           metavar="latency|size|macs")] = "latency",
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="trials in the study, resumed ones included "
                                                  "[default: 30, or as many as --time-budget allows]", show_default=False,
                                                  rich_help_panel=SEARCH, metavar="N")] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help="the search's wall time (600, 90s, 10m, "
                                                       "1h): no trial starts once what is left is needed to "
                                                       "re-measure the chosen model; a running trial stops "
                                                       "before its next step, or inside a pass at its next "
                                                       "progress report",
                                                       show_default=False, rich_help_panel=SEARCH,
                                                       metavar="DURATION")] = None,
    space: Annotated[Optional[Path], typer.Option("--space", help="search space YAML (passes, option ranges and choices) "
                                                  "[default: prune, distill, quantize, optimize]", show_default=False,
                                                  rich_help_panel=SEARCH, metavar="PATH")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="study storage URL, e.g. postgresql://user@host/db "
                                                   "for workers on several machines [default: a SQLite file beside -o]",
                                                   show_default=False, rich_help_panel=SEARCH, metavar="URL")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="study name; the same name resumes it [default: from the "
                                                 "input, data, space, objective and budget]", show_default=False,
                                                 rich_help_panel=SEARCH, metavar="NAME")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="worker processes on this machine",
                                         rich_help_panel=SEARCH, metavar="N")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="seed of the passes and the data (each worker process draws its own sampler seed from it)", rich_help_panel=SEARCH,
                                      metavar="N")] = 0,
    output: Output = None,
    save_pipeline: Annotated[Optional[Path], typer.Option("--save-pipeline", help="write the winning pipeline as YAML "
                                                          "(mcomp run reproduces it)", show_default=False,
                                                          rich_help_panel="Output and reports", metavar="PATH")] = None,
    report: Report = None, report_html: ReportHtml = None, json: Json = False,
    provider: Provider = "auto", threads: Threads = None, runs: Runs = 30, input_shape: InputShape = None,
    fidelity: FidelityMode = None, arch: Arch = None, trust_checkpoint: Trust = False,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Search pipelines of prune, distill, quantize and optimize for the fastest model within a budget;
    write it, the winning pipeline, and a report with every trial and the Pareto front.

    Example: mcomp auto model.onnx --data train.npz --eval eval.npz --max-drop 0.01 --time-budget 10m -o best.onnx
    """
    from mcomp import model as model_io
    from mcomp.auto import search, trial
    from mcomp.cli.auto_output import Printer, write_outputs
    from mcomp.cli.pass_command import command_line
    from mcomp.pipeline_spec import builtin

    if (max_drop is None) == (min_fidelity is None):
        raise BadInput("give one budget: --max-drop X (accuracy points lost, needs labels) or --min-fidelity X")
    if objective not in trial.OBJECTIVES:
        raise BadInput(f"--objective {objective!r}: expected one of {', '.join(trial.OBJECTIVES)}")
    if fidelity not in (None, "slice", "whole"):
        raise BadInput(f"--fidelity {fidelity!r}: expected slice or whole")
    seconds = parse_duration(time_budget)
    if json and output == "-":
        raise BadInput("--json and -o - both want stdout; write the model to a file")
    source = builtin(model)
    if model == "-":
        raise BadInput("mcomp auto reads the model many times: give a path, not -")
    out = Path(output) if output else model_io.default_output(source if not model.startswith("builtin:")
                                                              else Path(source).name, "auto")
    protect = tuple(p for p in (source, builtin(data), builtin(eval_data) if eval_data else None) if p)
    for path in (out, report, save_pipeline, report_html):
        if path is not None:
            model_io.check_writable(Path(path), protect=protect)
    shapes = parse_input_shapes(input_shape)
    settings = trial.Settings(
        model=model, train=data, evaluation=eval_data, folder=str(out.with_suffix(".auto")), objective=objective,
        max_drop=max_drop, min_fidelity=min_fidelity, fidelity=fidelity or "slice", provider=provider,
        threads=threads, input_shape={k: list(v) for k, v in shapes.items()} if shapes else None, runs=runs, seed=seed,
        arch=arch, trust_checkpoint=trust_checkpoint, metric=absolute_metric(metric))
    request = search.Request(settings, out, trials=trials, time_budget=seconds, space=str(space) if space else None,
                             storage=storage, study=study, workers=workers, command=command_line())
    printer = Printer(settings, trials, seconds, enabled=not json)
    report_path = report or out.with_suffix(".report.json")
    try:
        with printer:
            result = search.search(request, on_trial=printer.trial, progress=printer.progress)
    except GateFailed as failed:  # no trial met the budget: nothing written (the study keeps every trial)
        if failed.report is not None:
            write_outputs(failed.report, None, json_out=json)
            printer.closest(failed.report)
        raise GateFailed(str(failed)) from None
    write_outputs(result.report, result.model_bytes, output=out, pipeline_path=save_pipeline,
                  pipeline_yaml=result.pipeline_yaml, report_path=report_path, html_path=report_html, json_out=json)
    printer.summary(result.report, out, report_path, save_pipeline)
