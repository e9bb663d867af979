"""``mcomp quantize MODEL [--mode ...]``: quantization as a one-step pipeline."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Data, Debug, FidelityMode, InputShape, Json, ModelArg, Output, Provider, Quiet,
                               Report, ReportMd, Runs, Threads, Trust)
from mcomp.cli.pass_command import Common, run_single_pass

EXPLAIN_ROWS = 15


def quantize(
    model: ModelArg,
    mode: Annotated[str, typer.Option("--mode", help="static (QDQ int8, needs --data) | dynamic (int8 weights, MatMul/attention/LSTM) | weight-only (int4/int8 MatMulNBits) | fp16 | kmeans (shared weights)")] = "static",
    activations: Annotated[str, typer.Option("--activations", help="static: auto (uint8 on x86 CPU, int8 elsewhere) | uint8 | int8")] = "auto",
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="static/dynamic: a weight scale per output channel (upgrades opset < 13)")] = True,
    symmetric: Annotated[bool, typer.Option("--symmetric", help="static: symmetric activation ranges")] = False,
    calibration: Annotated[str, typer.Option("--calibration", help="static: minmax | percentile | entropy")] = "minmax",
    percentile: Annotated[float, typer.Option("--percentile", help="percentile calibration: share of values kept in range")] = 99.999,
    bits: Annotated[Optional[int], typer.Option("--bits", help="weight-only: 4 or 8; kmeans: 2-8 [4]", show_default=False)] = None,
    block_size: Annotated[int, typer.Option("--block-size", help="weight-only: weights per scale (power of 2)")] = 32,
    keep_io_types: Annotated[bool, typer.Option("--keep-io-types/--fp16-io", help="fp16: keep float32 inputs and outputs")] = True,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="node name or glob, op type, or a previous report (.json) whose exclusions to reuse; repeatable")] = None,
    latency_guard: Annotated[bool, typer.Option("--latency-guard/--no-latency-guard", help="send back to float what does not pay on --provider; never write a slower model")] = True,
    guard_runs: Annotated[int, typer.Option("--guard-runs", min=5, help="interleaved rounds per latency-guard measurement")] = 30,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="accuracy budget (labelled --data): 0.005 = half a point", show_default=False)] = None,
    min_fidelity: Annotated[Optional[float], typer.Option("--min-fidelity", help="fidelity floor against the input, without labels [0.98 worst-slice cosine when no budget is given]", show_default=False)] = None,
    fidelity_metric: Annotated[str, typer.Option("--fidelity-metric", help="what --min-fidelity bounds: cosine | top1")] = "cosine",
    explain: Annotated[bool, typer.Option("--explain", help="ranked per-layer error table (SQNR, cosine) in the report")] = False,
    force: Annotated[bool, typer.Option("--force", help="quantize a model that is already quantized")] = False,
    max_range_ratio: Annotated[float, typer.Option("--max-range-ratio", min=1.0, help="static: a Concat whose inputs' ranges, or an output whose slices' ranges, differ by more than this stays float")] = 16.0,
    min_speedup: Annotated[Optional[float], typer.Option("--min-speedup", help="gate: fail with exit 3 (nothing written) below this speed-up over the input", show_default=False)] = None,
    output: Output = None, data: Data = None, provider: Provider = "auto", threads: Threads = None,
    json: Json = False, report: Report = None, report_md: ReportMd = None, input_shape: InputShape = None,
    arch: Arch = None, trust_checkpoint: Trust = False, runs: Runs = 30, fidelity: FidelityMode = None,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Quantize; the written model is never slower than the input on --provider, and stays within the accuracy budget.

    Examples: mcomp quantize model.onnx --data calib.npz (static int8, uint8 activations on x86);
    mcomp quantize model.onnx --data calib.npz --max-drop 0.005 --explain;
    mcomp quantize model.onnx --mode weight-only --bits 4 --block-size 32;
    mcomp quantize model.onnx --mode kmeans --bits 4
    """
    from mcomp.pipeline_spec import Gate

    console.configure(quiet, json)
    with console.guard(debug):
        options = {"mode": mode, "activations": activations, "per_channel": per_channel, "symmetric": symmetric,
                   "calibration": calibration, "percentile": percentile, "bits": bits, "block_size": block_size,
                   "keep_io_types": keep_io_types, "exclude": exclude or [], "latency_guard": latency_guard,
                   "guard_runs": guard_runs, "max_drop": max_drop, "min_fidelity": min_fidelity,
                   "fidelity_metric": fidelity_metric, "explain": explain, "force": force,
                   "max_range_ratio": max_range_ratio}
        gate = Gate(min_speedup=min_speedup) if min_speedup is not None else None
        doc = run_single_pass("quantize", options, Common(model, output, data, provider, threads, json, report,
                                                          report_md, input_shape, arch, trust_checkpoint, runs, fidelity=fidelity), gate)
        if explain:
            _print_explain(doc)


def _print_explain(doc: dict) -> None:
    if console.quiet():
        return
    from rich.table import Table

    rows = next((s["changes"].get("explain") for s in doc["steps"] if s["pass"] == "quantize"), None)
    if not rows:
        return
    table = Table(title=f"per-layer error, ranked by the noise each adds (top {min(EXPLAIN_ROWS, len(rows))} of {len(rows)})",
                  title_justify="left")
    for col in ("#", "node", "op", "SQNR dB", "added dB", "cosine", "group damage", "status"):
        table.add_column(col, justify="left" if col in ("node", "op", "status") else "right")
    for r in rows[:EXPLAIN_ROWS]:
        table.add_row(str(r["rank"]), r["node"], r["op_type"], _num(r["sqnr_db"]), _num(r["added_noise_db"]),
                      f"{r['cosine']:.4f}", _num(r["group_damage"], ".2e"), r["status"])
    console.err.print(table)


def _num(value, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)
