"""Graph walking, weight tensors, MACs and copying: the one home of what every part of mcomp
asks of a graph's structure (``inspect``, the report, pruning targets, quantization ranking).

Walkers come in two kinds, one of each: ``all_graphs``/``all_nodes`` for ``onnx_ir`` models (the
in-memory form, design §2) and ``proto_graphs``/``proto_nodes`` for ``onnx.ModelProto`` (what
validation and shape inference see). Both enter If/Loop/Scan bodies.

MACs count Conv, ConvTranspose, Gemm and MatMul (and their quantized and onnxruntime-fused forms)
with shapes from onnx shape inference on concrete input shapes (given, else every dynamic dim 1).
A node whose shapes stay unknown is not counted, and the count says which and why.
"""

from __future__ import annotations

import collections
from typing import Iterator, NamedTuple

import numpy as np
import onnx
import onnx_ir as ir

from mcomp.errors import short

# op -> index of its weight input; quantized and onnxruntime-fused forms count like their float op
CONV_LIKE = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1}
GEMM_LIKE = {"Gemm": 1, "FusedGemm": 1, "QGemm": 3}
MATMUL_LIKE = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1}
MAC_OPS = (*CONV_LIKE, "ConvTranspose", *GEMM_LIKE, *MATMUL_LIKE, "MatMulNBits")
MAC_DOMAINS = ("", "ai.onnx", "com.microsoft")
# What onnx shape inference raises on a graph it cannot type (its C++ errors arrive as these).
SHAPE_ERRORS = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError)


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """``graph`` and every subgraph in it (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from all_graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    yield from all_graphs(sub)


def all_nodes(model: ir.Model | ir.Graph) -> Iterator[ir.Node]:
    """Every node of every graph, subgraphs included."""
    for graph in all_graphs(model.graph if isinstance(model, ir.Model) else model):
        yield from graph


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it, for protobuf models."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from proto_graphs(sub)


def proto_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a protobuf graph and of its subgraphs."""
    for g in proto_graphs(graph):
        yield from g.node


def node_count(model: ir.Model) -> int:
    """Nodes in every graph, subgraphs included (a fair count for models with If/Loop)."""
    return sum(1 for _ in all_nodes(model))


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Op counts over every graph, most common first; ops of other domains as ``domain::Op``."""
    counts = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in all_nodes(model))
    return dict(counts.most_common())


def weight_tensors(model: ir.Model):
    """Every stored tensor: initializers, and the tensors held by Constant nodes (exporters such
    as paddle2onnx keep all weights there), each as (tensor, is_initializer)."""
    seen: set[int] = set()
    for graph in all_graphs(model.graph):
        for value in graph.initializers.values():
            if value.const_value is not None and id(value.const_value) not in seen:
                seen.add(id(value.const_value))
                yield value.const_value, True
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = node.attributes.get("value")
                if attr is not None and attr.type == ir.AttributeType.TENSOR:
                    yield attr.value, False


def copy(model: ir.Model) -> ir.Model:
    """A deep copy, so that a pass that fails part-way leaves the caller's model alone."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


class MacCount(NamedTuple):
    """MACs of the nodes whose shapes are known; ``unknown`` names the others and ``reason`` says why
    they could not be counted (None when every compute node was counted)."""

    total: int
    unknown: list[str]
    reason: str | None = None


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    """Multiply-accumulates of one compute node from its tensors' shapes; None when a shape it needs
    is unknown (or the op is not a compute op). Gemm: ``Y[M,N] = A[M,K]·B[K,N]`` (A stored [K,M]
    under transA, B stored [N,K] under transB) costs M·K·N."""
    ins = [shapes.get(name) for name in node.input]
    out = shapes.get(node.output[0]) if node.output else None
    op = node.op_type
    if op in CONV_LIKE:
        w = ins[CONV_LIKE[op]] if len(ins) > CONV_LIKE[op] else None  # [M, C/group, k...]
        return None if out is None or w is None else int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        if ins[0] is None or len(ins) < 2 or ins[1] is None:
            return None
        return int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))  # w: [C, M/group, k...]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op in GEMM_LIKE:
        a, b = ins[0], ins[GEMM_LIKE[op]] if len(ins) > GEMM_LIKE[op] else None
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * k * n
    if op in MATMUL_LIKE:
        a, b = ins[0], ins[MATMUL_LIKE[op]] if len(ins) > MATMUL_LIKE[op] else None
        if a is None:
            return None
        if out is not None:
            return int(np.prod(out)) * a[-1]
        return None if b is None else int(np.prod(a[:-1])) * a[-1] * b[-1]
    if op == "MatMulNBits" and ins and ins[0] is not None:
        return int(np.prod(ins[0][:-1])) * int(attrs["K"]) * int(attrs["N"])
    return None


def _is_mac_node(node: onnx.NodeProto) -> bool:
    return node.op_type in MAC_OPS and node.domain in MAC_DOMAINS


def macs(model: ir.Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> MacCount:
    """Multiply-accumulates of the compute-heavy ops, the nodes whose shapes stayed unknown, and why.

    onnx shape inference first; where shapes computed at run time (Shape → Concat → Reshape)
    leave nodes unknown, the count is taken again on a constant-folded copy.
    """
    proto, reason = _shape_inferred(model, input_shapes)
    first = _count(proto, reason)
    if not first.unknown:
        return first
    from onnxscript import optimizer

    try:  # the third-party folder on an odd graph: keep the first count, and say so
        folded = ir.serde.deserialize_model(proto)
        optimizer.optimize(folded, num_iterations=2)
    except Exception as exc:  # noqa: BLE001 - only onnx-ir/onnxscript code runs in this block
        return first._replace(reason=_joined(first.reason, f"constant folding failed ({short(exc, 160)})"))
    second = _count(ir.serde.serialize_model(folded), None)
    return second if len(second.unknown) < len(first.unknown) else first


def macs_by_node(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, int | None]:
    """Each compute node's MACs at ``input_shapes`` (e.g. a feed's shapes), by node name, subgraphs
    included; None for a node whose shapes stayed unknown. Shapes are inferred afresh (the proto's
    own value_info, possibly from other input shapes, is dropped)."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    del work.graph.value_info[:]
    work, _ = _inferred(_with_concrete_inputs(work, input_shapes))
    shapes = _shapes(work.graph)
    return {node.name: node_macs(node, shapes) for node in proto_nodes(work.graph) if _is_mac_node(node)}


def _shape_inferred(model: ir.Model, input_shapes) -> tuple[onnx.ModelProto, str | None]:
    """The graph with inferred shapes at concrete input shapes, without the weights' data, and
    why inference failed (None when it ran).

    onnx-ir's C-API helper serializes the model with every initializer above 1 KB turned into
    a typed graph input, so MACs of a 100 MB model cost a few MB, not copies of the weights.
    (A private helper, pinned with onnx-ir in constraints.txt; the public ShapeInferencePass
    uses it the same way.)
    """
    from onnx_ir.passes.common import _c_api_utils

    reasons: list[str | None] = []

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto, reason = _inferred(_with_concrete_inputs(proto, input_shapes))
        reasons.append(reason)
        return proto

    proto = _c_api_utils.call_onnx_api(infer, model)
    return proto, reasons[0] if reasons else None


def _inferred(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnx shape inference, or the proto as it was and why inference failed."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True), None
    except SHAPE_ERRORS as exc:
        return proto, f"onnx shape inference failed ({short(exc, 160)})"


def _with_concrete_inputs(proto: onnx.ModelProto, input_shapes) -> onnx.ModelProto:
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        wanted = (input_shapes or {}).get(inp.name)
        for i, dim in enumerate(dims):
            if wanted is not None and i < len(wanted):
                dim.ClearField("dim_param")
                dim.dim_value = int(wanted[i])
            elif not dim.HasField("dim_value") or dim.dim_value < 0:
                dim.ClearField("dim_param")
                dim.dim_value = 1
    return proto


def _count(proto: onnx.ModelProto, reason: str | None) -> MacCount:
    proto, again = _inferred(proto)
    unknown: list[str] = []
    total = _graph_macs(proto.graph, _shapes(proto.graph), unknown)
    if not unknown:
        return MacCount(total, unknown)
    why = reason or again or "their shapes are computed at run time (onnx shape inference left them unknown)"
    return MacCount(total, unknown, f"{len(unknown)} compute node(s) not counted: {why}")


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Fully known shapes of the tensors of ``graph`` and its subgraphs."""
    shapes: dict[str, list[int]] = {}
    for g in proto_graphs(graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = [d.dim_value for d in t.shape.dim]
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
    return shapes


def _graph_macs(graph: onnx.GraphProto, shapes: dict[str, list[int]], unknown: list[str]) -> int:
    """Sums a graph's MACs; an If counts its costlier branch, a loop body counts once."""
    total = 0
    for node in graph.node:
        branches = [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
        if branches:
            total += max(_graph_macs(g, shapes, unknown) for g in branches)
        if not _is_mac_node(node):
            continue
        count = node_macs(node, shapes)
        if count is None:
            unknown.append(node.name or node.op_type)
        else:
            total += count
    return total


def _joined(*reasons: str | None) -> str | None:
    return "; ".join(r for r in reasons if r) or None


__all__ = ["all_graphs", "all_nodes", "proto_graphs", "proto_nodes", "node_count", "op_histogram", "weight_tensors",
           "copy", "MacCount", "node_macs", "macs", "macs_by_node", "MAC_OPS"]
