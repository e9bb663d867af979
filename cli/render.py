"""Terminal renderings (rich tables on stderr) of reports and records."""

from __future__ import annotations

from rich.table import Table

from mcomp.cli.console import err, quiet
from mcomp.report import headline


def print_report(doc: dict) -> None:
    if quiet():
        return
    table = Table(title=f"mcomp: {doc['input']['path']} → {doc['output'].get('path') or '(not written)'}",
                  title_justify="left")
    for col, justify in (("metric", "left"), ("input", "right"), ("output", "right"), ("change", "right")):
        table.add_column(col, justify=justify)
    for row in headline(doc):
        table.add_row(*row)
    err.print(table)
    for step in doc["steps"]:
        summary = step["summary"] or ("changed the model" if step["modified"] else "model unchanged")
        err.print(f"  step {step['pass']}: {step['seconds']} s; {summary}")
    for gate, g in doc.get("gates", {}).items():
        err.print(f"  gate {gate}: limit {g['limit']}, value {g['value']}: {'passed' if g['passed'] else '[red]FAILED[/]'}")
    for note in doc.get("notes", []):
        err.print(f"  note: {note}")


def print_inspect(path: str, info: dict) -> None:
    if quiet():
        return
    table = Table(title=f"{path}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for io in ("inputs", "outputs"):
        for spec in info[io]:
            shape = "[" + ", ".join(str(d) for d in spec["shape"]) + "]" if spec["shape"] is not None else "?"
            dyn = f" dynamic dims {spec['dynamic_dims']}" if spec["dynamic_dims"] else ""
            table.add_row(io[:-1], f"{spec['name']}: {spec['dtype']} {shape}{dyn}")
    table.add_row("opsets", ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    table.add_row("nodes", f"{info['nodes']:,}")
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in list(info["ops"].items())[:12])
                  + (" …" if len(info["ops"]) > 12 else ""))
    table.add_row("parameters", f"{info['parameters']:,} ({info['nonzero_parameters']:,} non-zero, sparsity {info['sparsity']:.2%})")
    table.add_row("bytes by dtype", ", ".join(f"{k} {v:,}" for k, v in info["bytes_by_dtype"].items()) or "none")
    unknown = f" ({len(info['macs_unknown_nodes'])} nodes of unknown shape)" if info["macs_unknown_nodes"] else ""
    table.add_row("MACs", f"{info['macs']:,} at {info['macs_input_shapes']}{unknown}")
    err.print(table)


def print_bench(result: dict) -> None:
    if quiet():
        return
    table = Table(title=f"latency on {result['provider']} (interleaved, {result['models'][0]['runs']} rounds)",
                  title_justify="left")
    for col in ("model", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "peak MB", "ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in result["models"]:
        table.add_row(m["label"], f"{m['p50_ms']:.3f}", f"{m['p90_ms']:.3f}", f"{m['p99_ms']:.3f}",
                      f"{m['throughput']:.1f}", "?" if m["peak_memory_mb"] is None else f"{m['peak_memory_mb']:.1f}",
                      "1 (ref)" if m["ratio"] is None else f"×{m['ratio']:.3f}")
    err.print(table)
    floor = result.get("noise_floor")
    if floor:
        err.print(f"  A/A noise floor: median ×{floor['median']:.3f}, p10–p90 ×{floor['p10']:.3f}–×{floor['p90']:.3f}")
