"""What is inside a model: signature, opsets, ops, parameters, non-zeros, bytes by dtype, MACs.

Parameters are the element counts of the initializers (in every graph, subgraphs included)
and of floating-point ``Constant`` nodes, where some exporters keep every weight; integer
Constant nodes (shapes, axes) are counted apart as ``constant_elements``.
MACs count Conv, ConvTranspose, Gemm and MatMul, with shapes from onnx shape inference on
concrete input shapes (``--input-shape``, else every dynamic dim set to 1).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from mcomp.model import onnx_opset, to_proto
from mcomp.session import input_specs, output_specs

MAC_OPS = ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "QGemm",
           "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits")


@dataclass
class TensorCounts:
    parameters: int = 0
    nonzero: int = 0
    bytes: int = 0


def all_graphs(graph: ir.Graph):
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from all_graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    yield from all_graphs(sub)


def all_nodes(model: ir.Model):
    for graph in all_graphs(model.graph):
        yield from graph


def node_count(model: ir.Model) -> int:
    """Nodes in every graph, subgraphs included (a fair count for models with If/Loop)."""
    return sum(1 for _ in all_nodes(model))


def op_histogram(model: ir.Model) -> dict[str, int]:
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


def tensor_counts(model: ir.Model) -> tuple[TensorCounts, dict[str, int], int]:
    """Totals over the parameters, bytes by dtype, and elements of non-float constants.

    Parameters are the initializers plus the floating-point tensors of Constant nodes;
    integer/boolean Constant nodes (shapes, axes, indices) are counted apart.
    """
    totals = TensorCounts()
    by_dtype: dict[str, int] = collections.Counter()
    other_constants = 0
    for tensor, is_initializer in weight_tensors(model):
        size = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
        if not is_initializer and not tensor.dtype.is_floating_point():
            other_constants += size
            continue
        totals.parameters += size
        totals.bytes += tensor.nbytes
        by_dtype[tensor.dtype.name.lower()] += tensor.nbytes
        totals.nonzero += _nonzero(tensor)
    return totals, dict(by_dtype), other_constants


def _nonzero(tensor) -> int:
    try:
        return int(np.count_nonzero(tensor.numpy()))
    except Exception:  # dtypes numpy cannot hold (some packed types): count them all
        return int(np.prod(tensor.shape.numpy()))


def nonzero_parameters(model: ir.Model) -> int:
    return tensor_counts(model)[0].nonzero


def macs(model: ir.Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[int, list[str]]:
    """Multiply-accumulates of the compute-heavy ops, and the nodes whose shapes stayed unknown.

    onnx shape inference first; where shapes computed at run time (Shape → Concat → Reshape)
    leave nodes unknown, the count is taken again on a constant-folded copy.
    """
    proto = _shape_inferred(model, input_shapes)
    total, unknown = _count(proto)
    if unknown:
        try:
            from onnxscript import optimizer

            folded = ir.serde.deserialize_model(proto)
            optimizer.optimize(folded, num_iterations=2)
            total_folded, unknown_folded = _count(to_proto(folded))
            if len(unknown_folded) < len(unknown):
                return total_folded, unknown_folded
        except Exception:  # an odd graph the folder cannot handle: keep the first count
            pass
    return total, unknown


def _shape_inferred(model: ir.Model, input_shapes) -> onnx.ModelProto:
    """The graph with inferred shapes at concrete input shapes, without the weights' data.

    onnx-ir's C-API helper serializes the model with every initializer above 1 KB turned into
    a typed graph input, so MACs of a 100 MB model cost a few MB, not copies of the weights.
    (A private helper, pinned with onnx-ir in constraints.txt; the public ShapeInferencePass
    uses it the same way.)
    """
    from onnx_ir.passes.common import _c_api_utils

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto = _with_concrete_inputs(proto, input_shapes)
        try:
            return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        except Exception:
            return proto  # count what shapes are known; the rest is listed as unknown

    return _c_api_utils.call_onnx_api(infer, model)


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


def _count(proto: onnx.ModelProto) -> tuple[int, list[str]]:
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:
        pass  # count what shapes are known; the rest is listed as unknown
    shapes: dict[str, list[int]] = {}
    _collect_shapes(proto.graph, shapes)
    unknown: list[str] = []
    return _graph_macs(proto.graph, shapes, unknown), unknown


def _collect_shapes(graph: onnx.GraphProto, shapes: dict[str, list[int]]) -> None:
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_shapes(attr.g, shapes)


def _graph_macs(graph: onnx.GraphProto, shapes: dict[str, list[int]], unknown: list[str]) -> int:
    """Sums a graph's MACs; an If counts its costlier branch, a loop body counts once."""
    total = 0
    for node in graph.node:
        branches = [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
        if branches:
            total += max(_graph_macs(g, shapes, unknown) for g in branches)
        if node.op_type not in MAC_OPS or node.domain not in MAC_DOMAINS:
            continue
        count = _node_macs(node, shapes)
        if count is None:
            unknown.append(node.name or node.op_type)
        else:
            total += count
    return total


# op -> index of its weight input; quantized and onnxruntime-fused forms count like their float op
CONV_LIKE = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1}
GEMM_LIKE = {"Gemm": 1, "FusedGemm": 1, "QGemm": 3}
MATMUL_LIKE = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1}
MAC_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    ins = [shapes.get(name) for name in node.input]
    out = shapes.get(node.output[0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in CONV_LIKE:
        w = ins[CONV_LIKE[op]] if len(ins) > CONV_LIKE[op] else None  # [M, C/group, k...]
        return None if out is None or w is None else int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        if ins[0] is None or ins[1] is None:
            return None
        return int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))  # w: [C, M/group, k...]
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
    if op == "MatMulNBits" and ins[0] is not None:
        return int(np.prod(ins[0][:-1])) * int(attrs["K"]) * int(attrs["N"])
    return None


def describe(model: ir.Model, *, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """The ``mcomp inspect`` record (also the model entries of the report)."""
    counts, by_dtype, constants = tensor_counts(model)
    total_macs, unknown = macs(model, input_shapes)
    return {
        "inputs": [s.describe() | {"dynamic_dims": s.dynamic_dims} for s in input_specs(model)],
        "outputs": [s.describe() | {"dynamic_dims": s.dynamic_dims} for s in output_specs(model)],
        "opset": onnx_opset(model),
        "opsets": {domain or "ai.onnx": v for domain, v in sorted(model.opset_imports.items())},
        "ir_version": model.ir_version,
        "producer": " ".join(filter(None, [model.producer_name, model.producer_version])) or None,
        "nodes": node_count(model),
        "ops": op_histogram(model),
        "parameters": counts.parameters,
        "nonzero_parameters": counts.nonzero,
        "sparsity": round(1 - counts.nonzero / counts.parameters, 6) if counts.parameters else 0.0,
        "parameter_bytes": counts.bytes,
        "bytes_by_dtype": by_dtype,
        "constant_elements": constants,
        "macs": total_macs,
        "macs_unknown_nodes": unknown,
        "macs_input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()} or "dynamic dims = 1",
    }
