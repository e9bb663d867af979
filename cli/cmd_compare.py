"""``mcomp compare REFERENCE CANDIDATE``: fidelity, accuracy and latency of one model against another."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated

import typer
from rich.console import Console

from mcomp.cli import console
from mcomp.cli.options import (Arch, Data, Debug, FidelityMode, InputShape, Json, MetricSpec, Provider, Quiet, Runs,
                               Threads, Trust, parse_input_shapes)


@console.command
def compare(
    reference: Annotated[str, typer.Argument(help="the reference model", show_default=False)],
    candidate: Annotated[str, typer.Argument(help="the model to judge against it", show_default=False)],
    data: Data = None, provider: Provider = "auto", threads: Threads = None, runs: Runs = 30, json: Json = False,
    input_shape: InputShape = None, arch: Arch = None, trust_checkpoint: Trust = False, fidelity: FidelityMode = "slice",
    metric: MetricSpec = None, quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Fidelity (the worst slice along each output's channel-like axes, and whole-output cosine, relative L2,
    max abs error, top-1 agreement on class scores), accuracy where the data has labels (top-1, or your
    --metric), and the latency ratio measured interleaved.

    Example: mcomp compare model.onnx model.optimize.onnx --data eval.npz
    """
    from mcomp import bench, data as data_io, evaluate, heads, model as model_io, pipeline, session, shapes as shapes_io
    from mcomp.errors import BadInput

    if fidelity not in evaluate.FIDELITY_MODES:
        raise BadInput(f"--fidelity {fidelity!r}: expected one of {', '.join(evaluate.FIDELITY_MODES)}")
    from mcomp.metric import Metric
    from mcomp.pipeline_spec import Measure, Pipeline

    task_metric = Metric(metric) if metric else None  # a bad --metric fails before the models are read

    shapes = parse_input_shapes(input_shape)
    shapes = shapes or data_io.checkpoint_shapes([reference, candidate], [data])
    options = model_io.LoadOptions(arch, trust_checkpoint, shapes)
    ref, cand = model_io.load(reference, options), model_io.load(candidate, options)
    # unrelated models (outputs matched neither by name nor by count and shape) are refused before any run
    evaluate.match_outputs(session.output_specs(ref.model), session.output_specs(cand.model), where=cand.source.path)
    shapes = data_io.bind_input_shapes(shapes, ref.model)
    dataset = data_io.load(data or "random", ref.model, input_shapes=shapes)
    resolved = pipeline.resolve_shapes(ref.model, shapes, {"evaluation": dataset})
    providers = session.resolve_providers(provider)
    ref_bytes, cand_bytes = model_io.to_bytes(ref.model), model_io.to_bytes(cand.model)
    settings = Pipeline.model_construct(threads=threads, measure=Measure(runs=runs))
    zeros = data_io.zeroed_inputs(session.input_specs(ref.model))
    with bench.hint_assumed_shapes(resolved, dataset.synthetic, zeros):  # a failure at a guessed shape says so
        quality = evaluate.compare(ref_bytes, cand_bytes, dataset, providers, threads,
                                   [s.name for s in session.output_specs(ref.model)],
                                   metric=task_metric, heads=heads.linear_heads(ref.model))
        # one example per timed run, as the pass commands time it (not the data file's whole batch)
        latency = pipeline.measure_latency(ref_bytes, cand_bytes, dataset, providers, settings,
                                           specs=session.input_specs(ref.model), given=shapes)
    value, what = evaluate.figure_named(quality["fidelity"]["summary"], fidelity)
    quality["fidelity"]["figure"] = {"mode": fidelity, "value": value, "what": what}
    doc = {"reference": ref.source.path, "candidate": cand.source.path, **quality, "latency": latency,
           "shapes": shapes_io.describe(resolved)}
    if json:
        sys.stdout.write(jsonlib.dumps(doc, indent=2) + "\n")
    if not console.quiet():
        _print(doc, console.information(json))


def _print(doc: dict, to: Console) -> None:
    """The comparison, a line per figure, on ``to`` (stdout: the command's result; stderr under --json),
    ending with the shapes every figure was measured at and where they came from."""
    from mcomp.cli.cmd_bench import per_run
    from mcomp.report import measured_at

    fid, acc, lat = doc["fidelity"]["summary"], doc["accuracy"], doc["latency"]
    if fid["cosine"] is not None:
        worst = fid.get("worst_slice")
        none = "outputs of another shape (below)" if fid["shape_mismatch"] else "no output has channel-like axes"
        slice_text = (none if not worst else
                      f"worst slice {worst['output']} axis {worst['axis']} [{worst['index']} of {worst['slices']}]: "
                      f"cosine {worst['cosine']:.6f}, SQNR {_db(worst['sqnr_db'])}")
        figure = doc["fidelity"]["figure"]
        to.print(f"fidelity ({figure['mode']}, {figure['what']}): {figure['value']:.6f}; {slice_text}")
        if fid["relative_l2"] is not None:  # None: no output kept its shape (each counts as cosine 0)
            centered = "" if fid.get("centered_cosine") is None else f", centered cosine {fid['centered_cosine']:.6f}"
            if fid.get("residual_cosine") is not None:  # an output that passes an input on: what it adds
                centered += f", residual cosine {fid['residual_cosine']:.6f}"
            to.print(f"whole outputs: cosine {fid['cosine']:.6f}, relative L2 {fid['relative_l2']:.3g}, "
                     f"max |Δ| {fid['max_abs_error']:.3g}{centered}")
    for name, out in doc["fidelity"]["outputs"].items():
        if out.get("top1_agreement") is not None:
            step = out.get("worst_step_top1")
            to.print(f"top-1 agreement ({name}): {out['top1_agreement']:.2%}"
                     + (f", worst time step {step['step']}: {step['top1_agreement']:.2%}" if step else ""))
    for name in fid["shape_mismatch"]:
        to.print(f"output {name} of another shape, counted as cosine 0: {doc['fidelity']['outputs'][name]['error']}")
    if acc.get("known"):
        named = f" ({acc['metric']})" if acc.get("metric") else ""
        to.print(f"accuracy{named}: {acc['reference']:.2%} → {acc['candidate']:.2%} "
                 f"({(acc['candidate'] - acc['reference']) * 100:+.2f} pts)")
    else:
        to.print(f"accuracy: unknown ({acc['reason']})")
    floor = lat["noise_floor"]
    fed = next(iter(lat.get("feed_shapes", {}).values()), [1])
    to.print(f"latency {per_run(fed[0] if fed else 1)}: p50 {lat['reference']['p50_ms']:.3f} → {lat['candidate']['p50_ms']:.3f} ms, "
             f"ratio ×{lat['ratio']:.3f} (A/A ×{floor['p10']:.2f}–×{floor['p90']:.2f})")
    to.print(f"measured at {measured_at(doc.get('shapes') or {})}")


def _db(value: float | None) -> str:
    return "∞ (exact)" if value is None else f"{value:.1f} dB"
