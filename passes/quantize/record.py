"""What a graph scheme's run records in the report: its outcome, the --explain table, the summary line."""

from __future__ import annotations

import numpy as np
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
    shares = weight_share(scheme.prepared.proto, quantized)
    summary = (f"{scheme.label}: {share_text(shares, len(quantized), len(live))}; {latency}"
               f"{fidelity_text(fid)}" + _accuracy_change(fid, evaluator)
               + f"; tensors {before:,} → {after:,} bytes (×{after / max(before, 1):.2f})")
    prepared = scheme.prepared
    return summary, {
        "quantized_nodes": len(quantized), "quantized_ops": ops, "quantized_weights": shares,
        "exclusions": sorted(excluded - set(prepared.float_only)), "float_nodes_from_search": fell_back,
        "fidelity": fid, "weight_bytes": {"before": before, "after": after},
        "quantized_weight_bytes": _layer_weight_bytes(prepared.proto, ir.serde.serialize_model(result), quantized),
        "candidates_built": scheme.builds}


def _accuracy_change(fid: dict, evaluator) -> str:
    """The accuracy change in points, as the report's table gives it, and on which feeds: the pass scores its
    first feeds, so its figure differs from the table's (ddddocr's recognizer: "accuracy drop +0.0312" here
    beside "-4.69 pts" in the table read as two contradicting figures in two units)."""
    if "accuracy_drop" not in fid:
        return ""
    return f", accuracy {-fid['accuracy_drop'] * 100:+.2f} pts{evaluator.scored_on()}"


def weight_share(proto: onnx.ModelProto, quantized) -> dict:
    """The float weights (elements) of ``proto``, every graph included: how many the ``quantized`` nodes
    hold, and which op types hold the rest, largest first. A node count hides that one float LSTM can
    hold half the weights while every quantizable node was quantized; this share does not."""
    from mcomp.graph import proto_graphs

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    sizes: dict[str, int] = {}
    nodes: list[onnx.NodeProto] = []
    for g in proto_graphs(proto.graph):
        sizes.update({t.name: int(np.prod(t.dims)) for t in g.initializer if t.data_type in floats})
        for node in g.node:
            value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
            if value is not None and value.data_type in floats:
                sizes[node.output[0]] = int(np.prod(value.dims))
            elif node.op_type != "Constant":
                nodes.append(node)
    names = {u.name for u in quantized}
    held, done = 0, set()
    float_by_op: dict[str, int] = {}
    for node in sorted(nodes, key=lambda n: n.name not in names):  # quantized first: a weight shared counts there
        for name in (i for i in node.input if i in sizes and i not in done):
            done.add(name)
            if node.name in names:
                held += sizes[name]
            else:
                float_by_op[node.op_type] = float_by_op.get(node.op_type, 0) + sizes[name]
    # A weight no node reads is not in the model that is written: the dynamic builder's prepared copy
    # keeps a Gemm's B beside the MatMul's transposed copy, and it read "12.6 M of 21.9 M weights
    # quantized (58 %) …; float: unused 8.4 M" on ddddocr's recognizer, whose every Gemm was quantized.
    total = held + sum(float_by_op.values())
    return {"total": total, "quantized": held, "share": round(held / total, 4) if total else None,
            "float_by_op": dict(sorted(float_by_op.items(), key=lambda kv: -kv[1]))}


def share_text(shares: dict, quantized: int, quantizable: int) -> str:
    """``1.2 M of 2.3 M weights quantized (52%) in 71 of 71 quantizable nodes; float: LSTM 1.1 M``."""
    total = shares["total"]
    text = (f"{_count(shares['quantized'])} of {_count(total)} weights quantized"
            + (f" ({shares['quantized'] / total:.0%})" if total else "")
            + f" in {quantized} of {quantizable} quantizable nodes")
    big = [(op, n) for op, n in shares["float_by_op"].items() if n >= 0.01 * total]
    if big:
        text += "; float: " + ", ".join(f"{op} {_count(n)}" for op, n in big[:3]) + (" …" if len(big) > 3 else "")
    return text


def _count(n: int) -> str:
    """``1.2 M``, ``53.1 k``, ``950``: weight counts as people read them."""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e4 else f"{n:,}"


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
    """``cosine 0.999 (worst slice: output0[1][12] 0.93)`` for the summary line, with the centered and residual
    cosines the budget bounds too (``budget.Score.strict``) where the figures have them."""
    text = f"cosine {fid['cosine']}"
    worst = fid.get("worst_slice")
    if worst:
        text += f" (worst slice {worst['output']}[axis {worst['axis']}][{worst['index']}] cosine {worst['cosine']})"
    also = [f"{key.split('_')[0]} {fid[key]}" for key in ("centered_cosine", "residual_cosine") if fid.get(key) is not None]
    return text + (f", {', '.join(also)}" if also else "")


def _layer_weight_bytes(prepared: onnx.ModelProto, result: onnx.ModelProto, quantized) -> dict:
    """Weight tensors of the quantized compute layers: float bytes before, and after the bytes of what replaced
    them (``W_quantized``, ``W_scale``, ``W_zero_point``; ``W_Q4``, ``W_scales`` …)."""
    from onnx import numpy_helper

    from mcomp.passes.quantize.weights_aside import data_bytes

    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    weights = set()
    for u in (u for u in quantized if u.compute or u.op_type == "Gather"):
        node = nodes.get(u.name)
        index = 0 if u.op_type == "Gather" else 1
        if node is not None and len(node.input) > index and node.input[index] in inits:
            weights.add(node.input[index])
    before = sum(data_bytes(inits[w]) for w in weights)  # from dims and type: reading them copied every weight
    after = sum(numpy_helper.to_array(t).nbytes for t in result.graph.initializer
                if t.name not in inits and any(t.name.startswith(w + "_") for w in weights))
    return {"layers": len(weights), "before": before, "after": after,
            "ratio": round(before / after, 3) if after else None}
