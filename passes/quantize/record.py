"""What a graph scheme's run records in the report: its outcome, the --explain table, the summary line."""

from __future__ import annotations

import onnx
import onnx_ir as ir


def outcome(model, result, scheme, excluded, score, evaluator, verdict) -> tuple[str, dict]:
    """The summary line and the details of a kept candidate (``result``, with ``excluded`` in float)."""
    from mcomp.summary import tensor_counts

    before, after = tensor_counts(model)[0].bytes, tensor_counts(result)[0].bytes
    live = scheme.units
    quantized = [u for u in live if u.name not in excluded]
    fell_back = sorted(u.name for u in live if u.name in excluded and u.name not in scheme.user)
    ops: dict[str, int] = {}
    for u in quantized:
        ops[u.op_type] = ops.get(u.op_type, 0) + 1
    fid = score.to_dict(evaluator.reference_accuracy)
    latency = f"latency ×{verdict.ratio:.2f} of the input, " if verdict else ""
    summary = (f"{scheme.label}: {len(quantized)}/{len(live)} nodes quantized; {latency}"
               f"{fidelity_text(fid)}" + (f", accuracy drop {fid['accuracy_drop']:+.4f}" if "accuracy_drop" in fid else "")
               + f"; tensors {before:,} → {after:,} bytes (×{after / max(before, 1):.2f})")
    prepared = scheme.prepared
    return summary, {
        "quantized_nodes": len(quantized), "quantized_ops": ops,
        "exclusions": sorted(excluded - set(prepared.float_only)), "float_nodes_from_search": fell_back,
        "fidelity": fid, "weight_bytes": {"before": before, "after": after},
        "quantized_weight_bytes": _layer_weight_bytes(prepared.proto, ir.serde.serialize_model(result), quantized),
        "candidates_built": scheme.builds}


def explain(errors, user, fit, ranked, guard_float) -> list[dict]:
    """Per-layer rows ranked by the noise each adds; with the damage of the layer's group where measured."""
    budget_float = set(fit.exclude) if fit else set()
    damage = {m: g.damage for g in ranked for m in g.members}
    rows = []
    for rank, e in enumerate(errors, 1):
        status = ("float (--exclude)" if e.name in user else "float (accuracy budget)" if e.name in budget_float
                  else "float (latency)" if e.name in guard_float else "quantized")
        rows.append({"rank": rank, **e.row(), "group_damage": None if e.name not in damage else round(damage[e.name], 6),
                     "status": status})
    return rows


def fidelity_text(fid: dict) -> str:
    """``cosine 0.999 (worst slice: output0[1][12] 0.93)`` for the summary line."""
    text = f"cosine {fid['cosine']}"
    worst = fid.get("worst_slice")
    if worst:
        text += f" (worst slice {worst['output']}[axis {worst['axis']}][{worst['index']}] cosine {worst['cosine']})"
    return text


def _layer_weight_bytes(prepared: onnx.ModelProto, result: onnx.ModelProto, quantized) -> dict:
    """Weight tensors of the quantized compute layers: float bytes before, and after the bytes of what replaced
    them (``W_quantized``, ``W_scale``, ``W_zero_point``; ``W_Q4``, ``W_scales`` …)."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    weights = set()
    for u in (u for u in quantized if u.compute or u.op_type == "Gather"):
        node = nodes.get(u.name)
        index = 0 if u.op_type == "Gather" else 1
        if node is not None and len(node.input) > index and node.input[index] in inits:
            weights.add(node.input[index])
    before = sum(numpy_helper.to_array(inits[w]).nbytes for w in weights)
    after = sum(numpy_helper.to_array(t).nbytes for t in result.graph.initializer
                if t.name not in inits and any(t.name.startswith(w + "_") for w in weights))
    return {"layers": len(weights), "before": before, "after": after,
            "ratio": round(before / after, 3) if after else None}
