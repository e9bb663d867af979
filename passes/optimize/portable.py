"""What onnxruntime's offline optimizer writes, made honest about the opsets it needs.

onnxruntime's ``optimized_model_filepath`` output declares an opset import for every domain the
runtime knows (``com.microsoft``, ``com.microsoft.nchwc``, ``org.pytorch.aten`` …) whether or not
a node uses it; a model written at level ``basic`` (portable ONNX) then looks as if it needed
onnxruntime, and strict runtimes refuse the unknown domains. The imports no node uses are
dropped at every level; at level ``basic`` a node of a non-standard domain that the optimizer
added (one the input already held is the input's business) means the result is not portable,
and the stage is rejected with the reason; so is a result grown by copies of Q/DQ nodes (``_qdq_copies``).
Dropping the unused imports is
``mcomp.opset.drop_unused_opsets``, shared with the quantize pass, whose builders write the same imports.
"""

from __future__ import annotations

import onnx_ir as ir

from mcomp.graph import all_nodes
from mcomp.opset import drop_unused_opsets

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})  # the domains every ONNX runtime implements


class StageRejected(Exception):
    """A stage's result is not acceptable for a reason other than its outputs: the stage is dropped
    with this message as its reason (the run goes on, unlike an error in mcomp's own code)."""


def foreign_ops(model: ir.Model) -> dict[str, int]:
    """``domain::Op`` → count of the nodes outside the standard domains and the model's own functions."""
    local = {f.domain for f in model.functions.values()}
    found: dict[str, int] = {}
    for node in all_nodes(model):
        if node.domain not in STANDARD_DOMAINS and node.domain not in local:
            key = f"{node.domain}::{node.op_type}"
            found[key] = found.get(key, 0) + 1
    return found


QDQ = ("QuantizeLinear", "DequantizeLinear")


def after_onnxruntime(model: ir.Model, level: str, before: ir.Model) -> ir.Model:
    """The offline optimizer's result (``model``, from ``before``) with only the opsets it uses; at level
    ``basic``, no more non-standard ops than ``before`` held; and not a bigger graph made of Q/DQ copies
    (``_qdq_copies``)."""
    drop_unused_opsets(model)
    grown = _qdq_copies(model, before)
    if grown:
        raise StageRejected(grown)
    held = foreign_ops(before)
    added = {op: n - held.get(op, 0) for op, n in foreign_ops(model).items() if n > held.get(op, 0)}
    if level == "basic" and added:
        ops = ", ".join(f"{op} ×{n}" for op, n in sorted(added.items()))
        raise StageRejected(f"level basic must write portable ONNX, but onnxruntime's result holds non-standard "
                            f"ops ({ops})")
    return model


def onnxruntime_stage(model: ir.Model, level: str, providers: list[str]) -> ir.Model:
    """onnxruntime's offline optimizer at ``level`` (``after_onnxruntime``), without growing the weights
    (``offline.offline_optimized_no_bigger``: a tied table folded twice); rejected where they grow anyway."""
    from mcomp import offline

    try:
        optimized, _ = offline.offline_optimized_no_bigger(model, level, providers)
    except offline.WeightsGrew as exc:
        raise StageRejected(f"{exc}, even without its constant folding") from None
    return after_onnxruntime(optimized, level, model)


def _qdq_copies(model: ir.Model, before: ir.Model) -> str | None:
    """Why the result is refused where it has more nodes than its input and Q/DQ nodes are what it added:
    onnxruntime gives each consumer of a shared DequantizeLinear its own copy, and moves Q/DQ pairs around
    Transpose and Reshape, to prepare its integer fusions; it does that again whenever it loads the model,
    so written out it is only a bigger graph (pipecat's smart-turn v3.2, a QDQ Whisper encoder: 406 → 487
    nodes at level basic, DequantizeLinear 114 → 163, QuantizeLinear 78 → 110, latency unchanged)."""
    from mcomp.graph import node_count

    def counts(m: ir.Model) -> dict[str, int]:
        found = dict.fromkeys(QDQ, 0)
        for node in all_nodes(m):
            if node.op_type in QDQ and node.domain in STANDARD_DOMAINS:
                found[node.op_type] += 1
        return found

    nodes, was = node_count(model), node_count(before)
    after, held = counts(model), counts(before)
    if nodes <= was or all(after[op] <= held[op] for op in QDQ):
        return None
    added = ", ".join(f"{op} {held[op]} → {after[op]}" for op in QDQ if after[op] != held[op])
    return (f"onnxruntime's result has more nodes than its input ({was} → {nodes}: {added}): copies of shared "
            "Q/DQ nodes for its integer fusions, which it makes again when it loads the model")
