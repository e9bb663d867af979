"""Renderings (rich tables) of reports and records: a pass's report on stderr; inspect's and
bench's tables on the console the command gives (stdout, its result; stderr under ``--json``).

The consoles print text as it is (no markup: ``cli/console.py``), so a name holding ``[...]``
shows whole; colour comes from styled ``Text``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcomp.cli.console import err, out, quiet
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
        verdict = ("passed", "") if g["passed"] else ("FAILED", "red")
        err.print(Text.assemble(f"  gate {gate}: limit {g['limit']}, value {g['value']}: ", verdict))
    for note in doc.get("notes", []):
        err.print(f"  note: {note}")
    print_warnings(doc)


def print_warnings(doc: dict) -> None:
    """A result much worse than its input, last, where the eye lands: yellow (red when severe) on a
    terminal, plain ``warning: …`` lines in a pipe or a log (the console drops styles there)."""
    found = doc.get("warnings") or []
    for i, w in enumerate(found):
        colour = "red" if w["severity"] == "severe" else "yellow"
        err.print(Text.assemble(("warning: ", f"bold {colour}"), (w["message"], colour)))
        if i + 1 == len(found) or found[i + 1]["advice"] != w["advice"]:  # one advice under the warnings it answers
            err.print(Text.assemble("  next: ", (w["advice"], "bold")))


def print_inspect(path: str, info: dict, to: Console = out) -> None:
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
    to.print(table)


def print_bench(result: dict, to: Console = out) -> None:
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
    to.print(table)
    floor = result.get("noise_floor")
    if floor:
        to.print(f"  A/A noise floor: median ×{floor['median']:.3f}, p10–p90 ×{floor['p10']:.3f}–×{floor['p90']:.3f}")
