"""``mcomp bench MODEL...``: latency measured interleaved, with ratios to the first model."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Data, Debug, InputShape, Json, Provider, Quiet, Runs, Threads, Trust, Warmup,
                               parse_input_shapes)
from mcomp.cli.render import print_bench


@console.command
def bench(
    models: Annotated[list[str], typer.Argument(help="models to measure; ratios are against the first", show_default=False)],
    data: Data = None, provider: Provider = "auto", threads: Threads = None, runs: Runs = 50, warmup: Warmup = 5,
    noise_floor: Annotated[bool, typer.Option("--aa/--no-aa", help="also time a second session of the first model (A/A noise floor)")] = True,
    json: Json = False, input_shape: InputShape = None, arch: Arch = None, trust_checkpoint: Trust = False,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Warm-up, then timed rounds in which every model runs once on the same input (A, B, A, B …):
    p50/p90/p99 latency, throughput, peak memory, and each model's median per-round ratio to the first.

    Example: mcomp bench model.onnx model.optimize.onnx --runs 100
    """
    from mcomp import bench as bench_core, data as data_io, model as model_io, session

    shapes = parse_input_shapes(input_shape)
    options = model_io.LoadOptions(arch, trust_checkpoint, shapes)
    loaded = [model_io.load(m, options) for m in models]
    shapes = data_io.bind_input_shapes(shapes, loaded[0].model)
    first = [(s.name, s.dtype) for s in session.input_specs(loaded[0].model)]
    for lm in loaded[1:]:
        if [(s.name, s.dtype) for s in session.input_specs(lm.model)] != first:
            from mcomp.errors import BadInput

            raise BadInput(f"{lm.source.path}: its inputs differ from {loaded[0].source.path}'s "
                           f"({[n for n, _ in first]}); bench compares models fed the same inputs")
    dataset = data_io.load(data or "random", loaded[0].model, input_shapes=shapes, synthetic_feeds=4)
    providers = session.resolve_providers(provider)
    result = bench_core.interleaved([(lm.source.path, model_io.to_bytes(lm.model)) for lm in loaded],
                                    dataset.feeds[:4], providers=providers, threads=threads, warmup=warmup,
                                    runs=runs, noise_floor=noise_floor, provider_label=session.provider_name(providers))
    doc = result.to_dict() | {"data": dataset.describe(), "input_shapes": {n: list(a.shape) for n, a in dataset.feeds[0].items()}}
    if json:
        sys.stdout.write(jsonlib.dumps(doc, indent=2) + "\n")
    print_bench(doc, console.information(json))
