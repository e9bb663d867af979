"""``mcomp bench MODEL...``: latency measured interleaved, with ratios to the first model.

Each run feeds one example (or the batch --input-shape gives), as the pass commands time them, and
the table says the shapes it ran at and where they came from: a figure at an assumed 224×224 must
not pass for one at the model's real size."""

from __future__ import annotations

import contextlib
import json as jsonlib
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mcomp.cli import console
from mcomp.cli.options import (Arch, BenchRuns, Data, Debug, InputShape, Json, Provider, Quiet, Threads, Trust, Warmup,
                               parse_input_shapes)


@console.command
def bench(
    models: Annotated[list[str], typer.Argument(help="models to measure; ratios are against the first", show_default=False)],
    data: Data = None, provider: Provider = "auto", threads: Threads = None, runs: BenchRuns = 50, warmup: Warmup = 5,
    noise_floor: Annotated[bool, typer.Option("--aa/--no-aa", help="also time a second session of the first model (A/A noise floor)")] = True,
    json: Json = False, input_shape: InputShape = None, arch: Arch = None, trust_checkpoint: Trust = False,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Warm-up, then timed rounds in which every model runs once on the same input (A, B, A, B …):
    p50/p90/p99 latency of one example, throughput, peak memory, and each model's median per-round
    ratio to the first.

    Example: mcomp bench model.onnx model.optimize.onnx --runs 100
    """
    from mcomp import bench as bench_core, data as data_io, model as model_io, pipeline, session
    from mcomp import shapes as shapes_io
    from mcomp.sources import runnable

    shapes = parse_input_shapes(input_shape)
    shapes = shapes or data_io.checkpoint_shapes(models, [data])
    options = model_io.LoadOptions(arch, trust_checkpoint, shapes)
    loaded = [model_io.load(m, options) for m in models]
    shapes = data_io.bind_input_shapes(shapes, loaded[0].model)
    specs = session.input_specs(loaded[0].model)
    first = [(s.name, s.dtype) for s in specs]
    for lm in loaded[1:]:
        if [(s.name, s.dtype) for s in session.input_specs(lm.model)] != first:
            from mcomp.errors import BadInput

            raise BadInput(f"{lm.source.path}: its inputs differ from {loaded[0].source.path}'s "
                           f"({[n for n, _ in first]}); bench compares models fed the same inputs")
    dataset = data_io.load(data or "random", loaded[0].model, input_shapes=shapes, synthetic_feeds=4)
    resolved = pipeline.resolve_shapes(loaded[0].model, shapes, {"evaluation": dataset})
    feeds = bench_core.example_feeds(dataset.feeds, specs, shapes)
    providers = session.resolve_providers(provider)
    zeros = data_io.zeroed_inputs(specs)
    with bench_core.hint_assumed_shapes(resolved, dataset.synthetic, zeros), contextlib.ExitStack() as stack:
        # small models as bytes; a big one as a file with its data beside it, written once and mapped by
        # its sessions (``sources.runnable``), not serialized whole into a protobuf first
        sources = [stack.enter_context(runnable(lm.model)) for lm in loaded]
        result = bench_core.interleaved([(lm.source.path, src) for lm, src in zip(loaded, sources)], feeds,
                                        providers=providers, threads=threads, warmup=warmup, runs=runs,
                                        noise_floor=noise_floor, provider_label=session.provider_name(providers))
    doc = result.to_dict() | {"data": dataset.describe(), "shapes": shapes_io.describe(resolved),
                              "input_shapes": {n: list(a.shape) for n, a in feeds[0].items()},
                              "examples_per_run": bench_core.batch_size(feeds[0])}
    if json:
        sys.stdout.write(jsonlib.dumps(doc, indent=2) + "\n")
    if not console.quiet():
        print_bench(doc, console.information(json))


def print_bench(result: dict, to: Console) -> None:
    """The latency table, the shapes it was measured at, and the A/A noise floor to read it against."""
    from mcomp.report import measured_at

    runs = result["models"][0]["runs"]
    how = f"sequential blocks, {runs} runs a block" if str(result.get("method", "")).startswith("sequential") \
        else f"interleaved, {runs} rounds"  # big models are timed one session at a time (mcomp.bench_blocks)
    table = Table(title=f"latency on {result['provider']} ({how})", title_justify="left")
    for col in ("model", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "peak MB", "ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in result["models"]:
        table.add_row(m["label"], f"{m['p50_ms']:.3f}", f"{m['p90_ms']:.3f}", f"{m['p99_ms']:.3f}",
                      f"{m['throughput']:,.1f}", "?" if m["peak_memory_mb"] is None else f"{m['peak_memory_mb']:.1f}",
                      "1 (ref)" if m["ratio"] is None else f"×{m['ratio']:.3f}")
    to.print(table)
    to.print(f"  latency {per_run(result.get('examples_per_run', 1))}, measured at "
             f"{measured_at(result.get('shapes') or {})}")
    floor = result.get("noise_floor")
    if floor:
        to.print(f"  A/A noise floor: median ×{floor['median']:.3f}, p10–p90 ×{floor['p10']:.3f}–×{floor['p90']:.3f}")


def per_run(examples: int) -> str:
    """What one timed run is: one example (as a user runs the model), or the batch --input-shape gave."""
    return "per example" if examples == 1 else f"per run of {examples} examples"
