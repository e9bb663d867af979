"""Which nodes create channels, and how: the ends of every channel group.

Apart from the rules of ``ops`` (what each op does to channels that pass through it) because it
answers another question, asked of every node before any search: does this node make the channels
(a Conv's output channels are its weight's axis 0; a Gemm's and a MatMul's, an axis of its constant
weight) and can they be cut (not where the weight or the bias is computed, or the Conv is grouped)?
The group search (``groups``) starts from the producers found here; the rules end a search there.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from mcomp.passes.prune.structured.prepare import attr, const, rank

__all__ = ["ProducerSpec", "is_depthwise", "producer_spec"]


@dataclass
class ProducerSpec:
    out_axis: int  # channel axis of the output activation
    channels: int
    weight_axis: int
    bias_index: int | None = None


def producer_spec(node: ir.Node) -> ProducerSpec | str | None:
    """How ``node`` creates channels (a spec), why it cannot be cut (a reason), or None: not a producer."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    w = const(node.inputs[1])
    if op == "Conv":
        if w is None:
            return "Conv with computed weights"
        group = attr(node, "group", 1)
        if group != 1:
            return None if is_depthwise(node) else f"grouped Conv (group={group})"
        return _with_bias(node, ProducerSpec(1, w.shape[0], 0, 2))
    if op == "ConvTranspose":
        if w is None:
            return "ConvTranspose with computed weights"
        if attr(node, "group", 1) != 1:
            return f"grouped ConvTranspose (group={attr(node, 'group', 1)})"
        return _with_bias(node, ProducerSpec(1, w.shape[1], 1, 2))
    if op == "Gemm":
        if w is None or w.ndim != 2:
            return "Gemm with computed weights"
        if attr(node, "transA", 0):
            return "Gemm with transA"
        trans_b = attr(node, "transB", 0)
        return ProducerSpec(1, w.shape[0] if trans_b else w.shape[1], 0 if trans_b else 1, None)
    # MatMul: activations @ constant [K, N]
    if w is None:
        return None  # attention's Q·Kᵀ and P·V: no weights, channels pass (attention.batched_matmul)
    if w.ndim != 2:
        return "MatMul with a batched weight"
    r = rank(node.inputs[0])
    if r is None or r < 2:
        return "MatMul with an input of unknown rank"
    return ProducerSpec(r - 1, w.shape[1], 1, None)


def _with_bias(node: ir.Node, spec: ProducerSpec) -> ProducerSpec | str:
    index = spec.bias_index
    if index is not None and index < len(node.inputs) and node.inputs[index] is not None:
        if const(node.inputs[index]) is None:
            return f"{node.op_type} with a computed bias"
        return spec
    spec.bias_index = None
    return spec


def is_depthwise(node: ir.Node) -> bool:
    w = const(node.inputs[1])
    group = attr(node, "group", 1)
    return w is not None and group > 1 and w.shape[1] == 1 and w.shape[0] == group
