"""``mcomp quantize MODEL [--mode ...]``: the quantize Config's options (cli/generate.py), a speed-up gate and --explain."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.generate import CommandSpec
from mcomp.cli.pass_command import Common, run_single_pass

EXPLAIN_ROWS = 15


def _run(options: dict, extra: dict, common: Common) -> dict:
    """A one-step pipeline, with --min-speedup as its gate; then the --explain table."""
    from mcomp.pipeline_spec import Gate

    gate = Gate(min_speedup=extra["min_speedup"]) if extra["min_speedup"] is not None else None
    doc = run_single_pass("quantize", options, common, gate)
    if options.get("explain"):
        _print_explain(doc)
    return doc


SPEC = CommandSpec(
    flags={"per_channel": ("--per-channel/--per-tensor",), "keep_io_types": ("--keep-io-types/--fp16-io",)},
    extra=(("min_speedup", Annotated[Optional[float], typer.Option(
        "--min-speedup", help="gate: fail with exit 3 (nothing written) below this speed-up over the input",
        show_default=False, metavar="X", rich_help_panel="Accuracy and speed guards")], None),),
    run=_run,
    panels={"Calibration (static)": ("calibration", "percentile", "calibration_feeds", "symmetric", "activations",
                                     "max_range_ratio"),
            "Accuracy and speed guards": ("max_drop", "min_fidelity", "fidelity_metric", "latency_guard", "guard_runs",
                                          "explain")},
    help="""Quantize; the written model is never slower than the input on --provider, and stays within the accuracy budget.

    Examples: mcomp quantize model.onnx --data calib.npz (static int8, uint8 activations on x86);
    mcomp quantize model.onnx --data calib.npz --max-drop 0.005 --explain;
    mcomp quantize model.onnx --mode weight-only --bits 4 --block-size 32;
    mcomp quantize model.onnx --mode kmeans --bits 4
    """)


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
