"""The run report (design §7): JSON first, with a versioned schema (``report.schema.json``
beside this module), rendered to Markdown here and to the terminal by the CLI."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from typing import TYPE_CHECKING

from mcomp import __version__

if TYPE_CHECKING:  # the CLI imports this module for rendering: no onnx before a command runs (design §5)
    import onnx_ir as ir

    from mcomp.model import ModelSource

SCHEMA_VERSION = 1
SCHEMA_ID = f"mcomp-report/{SCHEMA_VERSION}"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def model_entry(model: ir.Model, source: ModelSource | None, input_shapes=None) -> dict:
    from mcomp import summary

    info = summary.describe(model, input_shapes=input_shapes)
    entry = {"path": source.path if source else None, "sha256": source.sha256 if source else None,
             "bytes": source.bytes if source else None, "kind": source.kind if source else "onnx"}
    keys = ("parameters", "nonzero_parameters", "sparsity", "parameter_bytes", "macs", "nodes", "opset", "ops")
    entry.update({k: info[k] for k in keys})
    # a MACs figure that misses nodes says so, and why, rather than passing for the whole count
    entry["macs_unknown"] = ({"nodes": len(info["macs_unknown_nodes"]), "reason": info["macs_unknown_reason"]}
                             if info["macs_unknown_nodes"] else None)
    return entry


def environment(providers: list[str], threads: int | None) -> dict:
    import onnx
    import onnxruntime as ort

    return {"mcomp": __version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_name(),
            "providers_available": ort.get_available_providers(), "providers_used": providers,
            "threads": threads}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(*, command: str, source: ModelSource, reference: ir.Model, candidate: ir.Model, steps: list[dict],
          datasets: dict, evaluation, quality: dict, latency: dict | None, providers: list[str],
          threads: int | None, input_shapes, seconds: float) -> dict:
    notes = []
    if evaluation.synthetic:
        notes.append("measured on synthetic inputs: accuracy is unknown and fidelity is on noise")
    for step in steps:
        notes.extend(f"{step['pass']}: {n}" for n in step["notes"])
    return {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "input": model_entry(reference, source, input_shapes),
        "output": model_entry(candidate, None, input_shapes),
        "steps": steps,
        "data": {role: ds.describe() for role, ds in datasets.items()} | {"measured_on": evaluation.describe()},
        "fidelity": quality["fidelity"],
        "accuracy": quality["accuracy"],
        "latency": latency,
        "environment": environment(providers, threads),
        "gates": {},
        "seconds": round(seconds, 3),
        "notes": notes,
    }


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, default=_jsonable) + "\n"


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _fmt_int(n) -> str:
    return "?" if n is None else f"{n:,}"


def _ratio(a, b) -> str:
    return f"×{a / b:.3f}" if a is not None and b else "—"


def headline(doc: dict) -> list[tuple[str, str, str, str]]:
    """(metric, input, output, change) rows shared by the Markdown and terminal renderings."""
    i, o = doc["input"], doc["output"]
    rows = [
        ("file bytes", _fmt_int(i["bytes"]), _fmt_int(o.get("bytes")), _ratio(o.get("bytes"), i["bytes"])),
        ("parameters", _fmt_int(i["parameters"]), _fmt_int(o["parameters"]), _ratio(o["parameters"], i["parameters"])),
        ("non-zero parameters", _fmt_int(i["nonzero_parameters"]), _fmt_int(o["nonzero_parameters"]),
         _ratio(o["nonzero_parameters"], i["nonzero_parameters"])),
        ("MACs", _fmt_int(i["macs"]), _fmt_int(o["macs"]), _ratio(o["macs"], i["macs"])),
        ("nodes", _fmt_int(i["nodes"]), _fmt_int(o["nodes"]), _ratio(o["nodes"], i["nodes"])),
    ]
    lat = doc.get("latency")
    if lat:
        rows.append(("latency p50 (ms)", f"{lat['reference']['p50_ms']:.3f}", f"{lat['candidate']['p50_ms']:.3f}",
                     f"×{lat['ratio']:.3f} (A/A {lat['noise_floor']['p10']:.2f}–{lat['noise_floor']['p90']:.2f})"
                     if lat.get("noise_floor") else f"×{lat['ratio']:.3f}"))
    acc = doc["accuracy"]
    if acc.get("known"):
        rows.append(("accuracy", f"{acc['reference']:.2%}", f"{acc['candidate']:.2%}", f"{(acc['candidate'] - acc['reference']) * 100:+.2f} pts"))
    else:
        rows.append(("accuracy", "unknown", "unknown", acc.get("reason", "")))
    fid = doc["fidelity"]["summary"]
    if fid["cosine"] is not None:
        rows.append(("fidelity", "cosine", f"{fid['cosine']:.6f}", f"max |Δ| {fid['max_abs_error']:.3g}"))
    worst = fid.get("worst_slice")
    if worst:
        sqnr = "SQNR ∞" if worst["sqnr_db"] is None else f"SQNR {worst['sqnr_db']:.1f} dB"
        rows.append(("fidelity, worst slice", f"{worst['output']}: axis {worst['axis']}, {worst['index']} of "
                     f"{worst['slices']}", f"{worst['cosine']:.6f}", sqnr))
    for name, out in doc["fidelity"]["outputs"].items():
        if out.get("top1_agreement") is not None:
            step = out.get("worst_step_top1")
            change = f"worst step {step['step']}: {step['top1_agreement']:.2%}" if step else ""
            rows.append((f"top-1 agreement ({name})", "", f"{out['top1_agreement']:.2%}", change))
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(doc: dict) -> str:
    lines = ["# mcomp report", "", f"`{doc['command']}` — {doc['created']}", "",
             f"Input: `{doc['input']['path']}` → output: `{doc['output'].get('path')}`", "",
             "| metric | input | output | change |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in headline(doc)]
    lines += ["", "## Steps", "", "| # | pass | options | seconds | changed |", "|---|---|---|---:|---|"]
    for n, step in enumerate(doc["steps"], 1):
        options = ", ".join(f"{k}={v}" for k, v in step["options"].items())
        lines.append(f"| {n} | {step['pass']} | {options} | {step['seconds']} | {'yes' if step['modified'] else 'no'} |")
    lines += [f"\n- {step['pass']}: {step['summary']}" for step in doc["steps"] if step.get("summary")]
    if doc.get("gates"):
        lines += ["", "## Gates", "", "| gate | limit | value | passed |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {v['limit']} | {v['value']} | {v['passed']} |" for k, v in doc["gates"].items()]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    env = doc["environment"]
    lines += ["", f"onnxruntime {env['onnxruntime']} on {env['cpu']}, providers {', '.join(env['providers_used'])}", ""]
    return "\n".join(lines)
