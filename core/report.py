"""The run report (design §7): JSON first, with a versioned schema (``report.schema.json``
beside this module), rendered to Markdown here and to the terminal by the CLI."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from typing import TYPE_CHECKING

from mcomp import __version__, report_warnings

if TYPE_CHECKING:  # the CLI imports this module for rendering: no onnx before a command runs (design §5)
    import onnx_ir as ir

    from mcomp.model import ModelSource

SCHEMA_VERSION = 1
SCHEMA_ID = f"mcomp-report/{SCHEMA_VERSION}"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def model_entry(model: ir.Model, source: ModelSource | None, input_shapes=None) -> dict:
    from mcomp import summary
    from mcomp.external_data import release_pages

    info = summary.describe(model, input_shapes=input_shapes)
    entry = {"path": source.path if source else None, "sha256": source.sha256 if source else None,
             "bytes": source.bytes if source else None, "kind": source.kind if source else "onnx"}
    keys = ("parameters", "nonzero_parameters", "sparsity", "parameter_bytes", "macs", "nodes", "opset", "ops")
    entry.update({k: info[k] for k in keys})
    # a MACs figure that misses nodes says so, and why, rather than passing for the whole count
    entry["macs_unknown"] = ({"nodes": len(info["macs_unknown_nodes"]), "reason": info["macs_unknown_reason"]}
                             if info["macs_unknown_nodes"] else None)
    if info.get("macs_in_loop_bodies"):
        entry["macs_in_loop_bodies"] = info["macs_in_loop_bodies"]
    entry["weights_zstd"] = weights_zstd(model)
    release_pages(model)  # read in full above: unmapped, so the next model's entry does not stack on it
    return entry


def weights_zstd(model: ir.Model) -> int | None:
    """Bytes of the stored tensors after zstd (level 3, the chunks ``compressed_sizes`` takes): what an
    unstructured prune's zeros or shared values save on disk and on the wire. zstd only: it took 0.09 s
    on ppocr-rec's 10.8 MB of weights, DEFLATE ten times as long. None without ``zstandard``. Above
    64 MiB of weights, an estimate from evenly spaced chunks (``estimated_sizes``)."""
    from mcomp.kernels.compression import estimated_sizes
    from mcomp.summary import tensor_buffers

    return estimated_sizes(tensor_buffers(model), deflate=False).get("zstd")


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
    """The report. ``input_shapes``: what ``mcomp.shapes.resolve`` gave (name → InputShape), the
    shapes every figure was measured at; recorded under ``"shapes"`` with where each came from."""
    from mcomp import shapes as shapes_io

    resolved = {n: v if isinstance(v, shapes_io.InputShape) else shapes_io.InputShape(n, tuple(v), "--input-shape")
                for n, v in (input_shapes or {}).items()}
    input_shapes = shapes_io.concrete(resolved)
    notes = []
    if evaluation.synthetic:
        notes.append("measured on synthetic inputs: accuracy is unknown and fidelity is on noise")
    for step in steps:
        notes.extend(f"{step['pass']}: {n}" for n in step["notes"])
    teacher = _teacher_step({"steps": steps})
    if teacher is not None:
        fid = (teacher.get("changes") or {}).get("fidelity") or {}
        before, after = (fid.get(k) or {} for k in ("before", "after"))
        if after.get("cosine") is not None:
            notes.append(f"fidelity and top-1 agreement above are the output's against the input, the student before "
                         f"distillation; against the teacher {teacher['options']['teacher']}: cosine "
                         f"{before.get('cosine', float('nan')):.4f} → {after['cosine']:.4f} on {fid.get('data')}")
    return {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "input": model_entry(reference, source, input_shapes),
        "output": model_entry(candidate, None, input_shapes),
        "shapes": shapes_io.describe(resolved),
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


def _macs_cell(entry: dict) -> str:
    """A model's MACs; "unknown" where none of its compute nodes could be counted: "0" read as a model
    without compute (silero VAD, whose network is all inside If branches)."""
    return "unknown" if not entry["macs"] and entry.get("macs_unknown") else _fmt_int(entry["macs"])


def _macs_change(before: dict, after: dict) -> str:
    """The MACs ratio, or why there is none: a side with nodes it could not count (fused contrib ops
    whose shapes no inference resolves, say) would give a ratio that reads as a saving."""
    missing = [(side, entry["macs_unknown"]["nodes"]) for side, entry in (("input", before), ("output", after))
               if entry.get("macs_unknown")]
    if missing:
        return "no ratio: " + ", ".join(f"{n} {side} node{'s' if n != 1 else ''} not counted" for side, n in missing)
    looped = before.get("macs_in_loop_bodies") or after.get("macs_in_loop_bodies")
    return _ratio(after["macs"], before["macs"]) + (" (Loop bodies counted for one iteration)" if looped else "")


def _zstd_row(doc: dict) -> list[tuple[str, str, str, str]]:
    """The "weights, zstd" row: the models' own figures, else those an (unstructured) prune step recorded."""
    before, after = doc["input"].get("weights_zstd"), doc["output"].get("weights_zstd")
    if before is None or after is None:
        recorded = [s["changes"]["compressed_bytes"] for s in doc.get("steps", [])
                    if "compressed_bytes" in (s.get("changes") or {})]
        if not recorded or "zstd" not in recorded[0]["before"]:
            return []
        before, after = recorded[0]["before"]["zstd"], recorded[-1]["after"]["zstd"]
    return [("weights, zstd", _fmt_int(before), _fmt_int(after), _ratio(after, before))]


def shape_dims(entry: dict) -> str:
    """An input shape (a ``shapes.InputShape.describe()`` entry) as people write it: ``1×3×224×224``."""
    return "×".join(map(str, entry["shape"])) or "scalar"


def shape_origin(entry: dict) -> str:
    """Where a shape came from: ``from data``, or the dims mcomp assumed and the option that sets them,
    so whoever reads a figure measured at a guess knows how to measure at the real size (design §7)."""
    assumed = entry.get("assumed_dims") or []
    if not assumed:
        return f"from {entry['source']}"
    return (f"assumed: dim{'s' if len(assumed) > 1 else ''} {','.join(map(str, assumed))} — set "
            f"{entry.get('set_with', '--input-shape')}")


def measured_at(shapes: dict[str, dict]) -> str:
    """Every input's shape and origin in one line: ``x 1×3×224×224 (assumed: dims 0,2,3 — set …)``;
    what inspect, bench and compare print beside a figure."""
    return "; ".join(f"{name} {shape_dims(e)} ({shape_origin(e)})" for name, e in shapes.items()) or "no inputs"


# A tensor name in a table cell is cut to this many characters: openWakeWord's timer model names its output
# with the JSON of its class names (160 characters), which widened the terminal table past any screen.
NAME_WIDTH = 48


def clipped(name, width: int = NAME_WIDTH) -> str:
    """``name``, or its start and end around an ellipsis where it is longer than ``width`` (the full name
    stays in the JSON report)."""
    name = str(name)
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def headline(doc: dict) -> list[tuple[str, str, str, str]]:
    """(metric, input, output, change) rows shared by the Markdown and terminal renderings."""
    i, o = doc["input"], doc["output"]
    rows = [
        ("file bytes", _fmt_int(i["bytes"]), _fmt_int(o.get("bytes")), _ratio(o.get("bytes"), i["bytes"])),
        ("parameters", _fmt_int(i["parameters"]), _fmt_int(o["parameters"]), _ratio(o["parameters"], i["parameters"])),
        ("non-zero parameters", _fmt_int(i["nonzero_parameters"]), _fmt_int(o["nonzero_parameters"]),
         _ratio(o["nonzero_parameters"], i["nonzero_parameters"])),
        ("MACs", _macs_cell(i), _macs_cell(o), _macs_change(i, o)),
        ("nodes", _fmt_int(i["nodes"]), _fmt_int(o["nodes"]), _ratio(o["nodes"], i["nodes"])),
    ]
    rows += _zstd_row(doc)
    for name, entry in (doc.get("shapes") or {}).items():  # what MACs and latency above were measured at
        rows.append(("measured at", f"{clipped(name)} {shape_dims(entry)}", "", shape_origin(entry)))
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
        delta = "outputs of another shape" if fid["max_abs_error"] is None else f"max |Δ| {fid['max_abs_error']:.3g}"
        if fid.get("centered_cosine") is not None:
            delta += f", centered {fid['centered_cosine']:.4f}"
        if fid.get("residual_cosine") is not None:
            delta += f", residual {fid['residual_cosine']:.4f}"
        rows.append(("fidelity", _lowest_output(doc), f"{fid['cosine']:.6f}", delta))
    worst = fid.get("worst_slice")
    if worst:
        sqnr = "SQNR ∞" if worst["sqnr_db"] is None else f"SQNR {worst['sqnr_db']:.1f} dB"
        rows.append(("fidelity, worst slice", f"{clipped(worst['output'])}: axis {worst['axis']}, {worst['index']} of "
                     f"{worst['slices']}", f"{worst['cosine']:.6f}", sqnr))
    for name, out in doc["fidelity"]["outputs"].items():
        if out.get("top1_agreement") is not None:
            step = out.get("worst_step_top1")
            change = f"worst step {step['step']}: {step['top1_agreement']:.2%}" if step else ""
            rows.append((f"top-1 agreement ({clipped(name)})", "", f"{out['top1_agreement']:.2%}", change))
    return rows


def _lowest_output(doc: dict) -> str:
    """"cosine", or with several outputs the one whose cosine the row gives (the lowest): rapid-layout's row
    read 0.985 above a worst-slice row of 0.987, which was another output's."""
    cosines = {n: o["cosine"] for n, o in doc["fidelity"]["outputs"].items() if o.get("cosine") is not None}
    return "cosine" if len(cosines) < 2 else f"cosine, {clipped(min(cosines, key=cosines.get))}"


# the warnings live in their own module; the pipeline and the tests read them here as before
warnings, GENERIC_ADVICE, _teacher_step = report_warnings.warnings, report_warnings.GENERIC_ADVICE, \
    report_warnings._teacher_step


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def human(value) -> str:
    """A report value as people read it: ``yes``/``no``, ``0.0019`` rather than ``0.0018518518518518823``,
    ``1,257`` rather than ``1257``, ``—`` for none; lists and mappings item by item."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value == 0 or abs(value) >= 1000:
            return f"{value:,.1f}".removesuffix(".0")
        if abs(value) >= 0.001:
            return f"{value:.4f}".rstrip("0").rstrip(".")
        return f"{value:.2g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(human(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={human(v)}" for k, v in value.items())
    return str(value)


def data_rows(doc: dict) -> list[tuple[str, ...]]:
    """(role, source, samples, labels, synthetic) of each data set the run used."""
    rows = []
    for role, ds in (doc.get("data") or {}).items():
        if isinstance(ds, dict):
            role_name = role.replace("_", " ")
            rows.append((role_name, str(ds.get("source")), human(ds.get("samples")), human(ds.get("labels")),
                         human(ds.get("synthetic"))))
    return rows


def gate_rows(doc: dict) -> list[tuple[str, str, str, str]]:
    return [(k, human(v.get("limit")), human(v.get("value")), human(v.get("passed")))
            for k, v in (doc.get("gates") or {}).items() if isinstance(v, dict)]


def report_notes(doc: dict) -> list[str]:
    """The report's notes less those that repeat a step's own (shown with the step)."""
    shown = {f"{s['pass']}: {n}" for s in doc["steps"] for n in s.get("notes") or []}
    return [n for n in doc["notes"] if n not in shown]


def warning_groups(doc: dict) -> list[tuple[list[dict], str]]:
    """The report's warnings grouped under the advice they share, in order: one "next" under the
    warnings it answers, as the terminal prints them (Markdown and HTML alike)."""
    groups: list[tuple[list[dict], str]] = []
    for w in doc.get("warnings") or []:
        if groups and groups[-1][1] == w["advice"]:
            groups[-1][0].append(w)
        else:
            groups.append(([w], w["advice"]))
    return groups


def data_notes(doc: dict) -> list[str]:
    """The data sets' own notes (synthetic inputs, images resized …), each once, with the roles it is about."""
    roles: dict[str, list[str]] = {}
    sets = {role: ds for role, ds in (doc.get("data") or {}).items() if isinstance(ds, dict)}
    for role, ds in sets.items():
        for note in ds.get("notes") or []:
            roles.setdefault(note, []).append(role.replace("_", " "))
    return [note if len(r) == len(sets) else f"{', '.join(r)}: {note}" for note, r in roles.items()]


def _markdown_warnings(doc: dict) -> list[str]:
    """GitHub-style alert blocks (a plain quote elsewhere): CAUTION when one is severe."""
    lines = []
    for found, advice in warning_groups(doc):
        kind = "CAUTION" if any(w["severity"] == "severe" for w in found) else "WARNING"
        lines += [f"> [!{kind}]"] + [f"> - **{_cell(w['message'])}**" for w in found]
        lines += [">", f"> **Next:** {_cell(advice)}", ""]
    return lines


def _table(header: tuple[str, ...], rows, align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]


def to_markdown(doc: dict) -> str:
    lines = ["# mcomp report", "", f"`{doc['command']}` — {doc['created']}", "",
             f"Input: `{doc['input']['path']}` → output: `{doc['output'].get('path')}`", ""]
    lines += _markdown_warnings(doc)  # first, where the eye lands: a result much worse than its input
    lines += _table(("metric", "input", "output", "change"), headline(doc), ("---", "---:", "---:", "---:"))
    lines += ["", "## Steps", ""]
    lines += _table(("#", "pass", "options", "seconds", "changed"),
                    [(n, s["pass"], human(s["options"]), human(s["seconds"]), human(s["modified"]))
                     for n, s in enumerate(doc["steps"], 1)], ("---", "---", "---", "---:", "---"))
    for n, step in enumerate(doc["steps"], 1):
        lines += ["", f"### {n}. {step['pass']}", ""]
        if step.get("summary"):
            lines.append(step["summary"])
        lines += [f"- {note}" for note in step.get("notes") or []]
    data = data_rows(doc)
    if data:
        lines += ["", "## Data", ""]
        lines += _table(("role", "source", "samples", "labels", "synthetic"), data, ("---",) * 2 + ("---:",) + ("---",) * 2)
        lines += [""] + [f"- {n}" for n in data_notes(doc)] if data_notes(doc) else []
    if doc.get("gates"):
        lines += ["", "## Gates", ""] + _table(("gate", "limit", "value", "passed"), gate_rows(doc),
                                               ("---", "---:", "---:", "---"))
    if report_notes(doc):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report_notes(doc)]
    env = doc["environment"]
    threads = f", {env['threads']} threads" if env.get("threads") else ""
    lines += ["", f"onnxruntime {env['onnxruntime']} on {env['cpu']}, providers {', '.join(env['providers_used'])}"
              f"{threads}", ""]
    return "\n".join(lines)
