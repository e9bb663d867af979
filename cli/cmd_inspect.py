"""``mcomp inspect MODEL``: what is inside a model, as a table on stdout (its result, so
``mcomp inspect m.onnx | grep MACs`` works) or the record as JSON. Every cell is text for people:
no Python reprs; a figure that depends on an input shape says the shape and where it came from.

A model that loads but that no runtime accepts (a dim of -5, a Conv kernel_shape of -3, external data
past the end of its file) is refused here as by every other command (exit 2, one line naming what is
wrong), rather than described with exit 0: ``mcomp inspect m.onnx && deploy m.onnx`` must stop, and
the one line says more about such a model than its table would. The checks are the loader's
(``mcomp.model``), made without an onnxruntime session, so inspecting a 2 GB model stays cheap."""

from __future__ import annotations

import json as jsonlib
import sys

from rich.table import Table

from mcomp.cli import console
from mcomp.cli.options import Arch, Debug, InputShape, Json, ModelArg, Quiet, Trust, parse_input_shapes


@console.command
def inspect(model: ModelArg, json: Json = False, input_shape: InputShape = None, arch: Arch = None,
            trust_checkpoint: Trust = False, quiet: Quiet = False, debug: Debug = False) -> None:
    """Inputs and outputs (with dynamic dims), opsets, op histogram, parameters, non-zeros, bytes by dtype, MACs.

    MACs are counted at --input-shape for dynamic dims, else at the model's own sizes (metadata such
    as imgsz), else at assumed ones (batch 1, images 224×224, others 32); the table says which.

    Example: mcomp inspect model.onnx --input-shape x=1,3,224,224 --json
    """
    from mcomp import data, model as model_io, summary

    shapes = parse_input_shapes(input_shape)
    loaded = model_io.load(model, model_io.LoadOptions(arch, trust_checkpoint, shapes))
    info = {"path": loaded.source.path, "bytes": loaded.source.bytes, "sha256": loaded.source.sha256,
            "kind": loaded.source.kind}
    info |= summary.describe(loaded.model, input_shapes=data.bind_input_shapes(shapes, loaded.model))
    if json:
        sys.stdout.write(jsonlib.dumps(info, indent=2) + "\n")
    elif not console.quiet():
        console.out.print(table(loaded.source.path, info))


# A dim name longer than this is cut in the table: exporters write formulas there (a YOLOv8 export's
# anchors dim is 380 characters of floor(height/2 - 1/2)…), which made the table wider than any terminal.
# --json keeps the name whole.
DIM_NAME_WIDTH = 24


def _dim(d) -> str:
    text = str(d)
    return text if len(text) <= DIM_NAME_WIDTH else text[:DIM_NAME_WIDTH - 1] + "…"


def _signature(spec: dict) -> str:
    """``x: float32 [N, 3, H, W], dims 0,2,3 dynamic``: a shape as written, not a list repr."""
    shape = "[" + ", ".join(_dim(d) for d in spec["shape"]) + "]" if spec["shape"] is not None else "of unknown shape"
    dynamic = spec.get("dynamic_dims") or []
    dims = f", dim{'s' if len(dynamic) > 1 else ''} {','.join(map(str, dynamic))} dynamic" if dynamic else ""
    return f"{spec['name']}: {spec['dtype']} {shape}{dims}"


def macs_text(info: dict) -> str:
    """``282,085,184 at x 1×3×224×224 (assumed: dims 0,2,3 — set --input-shape x=1,3,H,W)``: the count,
    the shapes it was counted at, what mcomp had to assume and the option that sets it."""
    from mcomp.report import measured_at

    unknown = info.get("macs_unknown_nodes") or []
    at = measured_at(info.get("input_shapes") or {})
    if unknown and not info["macs"]:  # "0" would read as a model without compute (silero VAD: all of it in If branches)
        why = info.get("macs_unknown_reason") or f"{len(unknown)} compute node(s) not counted"
        return f"unknown at {at}: {why}"
    missing = f"; {len(unknown)} node{'s' if len(unknown) > 1 else ''} of unknown shape not counted" if unknown else ""
    return f"{info['macs']:,} at {at}{missing}{loop_note(info)}"


def loop_note(info: dict) -> str:
    """``; 6,912,000 of them in Loop/Scan bodies, counted for one iteration``: the count is then a floor."""
    looped = info.get("macs_in_loop_bodies") or 0
    return (f"; {looped:,} of them in Loop/Scan bodies, counted for one iteration: a run that iterates "
            "computes more" if looped else "")


def table(path: str, info: dict) -> Table:
    """The inspect record (``summary.describe`` plus the file's own fields) as a two-column table."""
    rows = Table(title=f"{path}", title_justify="left", show_header=False)
    rows.add_column("what")
    rows.add_column("value")
    for io in ("inputs", "outputs"):
        for spec in info[io]:
            rows.add_row(io[:-1], _signature(spec))
    rows.add_row("opsets", ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    rows.add_row("nodes", f"{info['nodes']:,}")
    rows.add_row("ops", ", ".join(f"{op} {n}" for op, n in list(info["ops"].items())[:12])
                 + (" …" if len(info["ops"]) > 12 else ""))
    rows.add_row("parameters", f"{info['parameters']:,} ({info['nonzero_parameters']:,} non-zero, "
                               f"sparsity {info['sparsity']:.2%})")
    rows.add_row("bytes by dtype", ", ".join(f"{k} {v:,}" for k, v in info["bytes_by_dtype"].items()) or "none")
    rows.add_row("MACs", macs_text(info))
    return rows


__all__ = ["inspect", "macs_text", "table"]
