"""Graph walking, weight tensors, MACs and copying: the one home of what every part of mcomp
asks of a graph's structure (``inspect``, the report, pruning targets, quantization ranking).

Walkers come in two kinds, one of each: ``all_graphs``/``all_nodes`` for ``onnx_ir`` models (the
in-memory form, design §2) and ``proto_graphs``/``proto_nodes`` for ``onnx.ModelProto`` (what
validation and shape inference see). Both enter If/Loop/Scan bodies.

MACs count Conv, ConvTranspose, Gemm and MatMul (and their quantized and onnxruntime-fused forms,
MatMuls of two computed tensors such as attention's Q·Kᵀ included), the fused attention ops and
scikit-learn's linear models (``ai.onnx.ml`` LinearClassifier/LinearRegressor; trees and SVMs are
not multiply-accumulates and are not counted),
with shapes inferred at concrete input shapes (given, else every dynamic dim 1) by
``mcomp.value_shapes``. A node whose shapes stay unknown is not counted, and the count says which
and why.
"""

from __future__ import annotations

import collections
from typing import Iterator, NamedTuple

import numpy as np
import onnx
import onnx_ir as ir

from mcomp import value_shapes
from mcomp.value_shapes import SHAPE_ERRORS, with_concrete_inputs

# op -> index of its weight input; quantized and onnxruntime-fused forms count like their float op
CONV_LIKE = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1}
GEMM_LIKE = {"Gemm": 1, "FusedGemm": 1, "QGemm": 3}
MATMUL_LIKE = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1}
# recurrent ops -> their gates: each time step multiplies the input and the hidden state into every gate
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}
MAC_OPS = (*CONV_LIKE, "ConvTranspose", *GEMM_LIKE, *MATMUL_LIKE, "MatMulNBits", *RECURRENT_GATES)
MAC_DOMAINS = ("", "ai.onnx", "com.microsoft", "com.microsoft.nchwc")  # nchwc: onnxruntime's blocked-layout Conv
# attention ops (onnxruntime's fusions, opset 23) -> the domains they come from
ATTENTION_OPS = {"Attention": ("", "ai.onnx", "com.microsoft"), "MultiHeadAttention": ("com.microsoft",)}
# scikit-learn's linear models (skl2onnx): the weights are the ``coefficients`` attribute, one per class and
# feature, each multiplied once per example (a LogisticRegression read "MACs 0")
LINEAR_ML_OPS = frozenset({"LinearClassifier", "LinearRegressor"})


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
    """A copy to change without touching ``model``, so that a pass that fails part-way leaves the
    caller's model alone. Nodes and values are new; tensors that cannot be written in place
    (memory-mapped external data, tensors read from a protobuf) are shared, so copying a big model
    costs no copy of its weights (it used to cost two: a protobuf and its parse); in-memory arrays,
    which a pass could change in place, are copied."""
    clone = model.clone()
    for graph in all_graphs(clone.graph):
        for value in graph.initializers.values():
            if _writable(value.const_value):
                value.const_value = _copied(value.const_value)
        for node in graph:
            attr = node.attributes.get("value") if node.op_type == "Constant" else None
            if attr is not None and attr.type == ir.AttributeType.TENSOR and _writable(attr.value):
                node.attributes["value"] = ir.AttrTensor("value", _copied(attr.value))
    return clone


def _writable(tensor) -> bool:
    if not isinstance(tensor, ir.Tensor):  # ExternalTensor, TensorProtoTensor, lazy tensors: read-only
        return False
    raw = tensor.raw
    return not isinstance(raw, np.ndarray) or raw.flags.writeable


def _copied(tensor: ir.Tensor) -> ir.Tensor:
    return ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)


class MacCount(NamedTuple):
    """MACs of the nodes whose shapes are known; ``unknown`` names the others and ``reason`` says why
    they could not be counted (None when every compute node was counted)."""

    total: int
    unknown: list[str]
    reason: str | None = None
    in_loop_bodies: int = 0  # of ``total``: the MACs of Loop/Scan bodies, each counted for one iteration


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    """Multiply-accumulates of one compute node from its tensors' shapes; None when a shape it needs
    is unknown (or the op is not a compute op). Gemm: ``Y[M,N] = A[M,K]·B[K,N]`` (A stored [K,M]
    under transA, B stored [N,K] under transB) costs M·K·N; MatMul broadcasts its batch dims as
    numpy does; attention ops count their products (see :func:`_attention_macs`)."""
    ins = [_counted(shapes.get(name)) for name in node.input]
    out = _counted(shapes.get(node.output[0])) if node.output else None
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
        if b is None:
            return None
        if a is None:  # Y[M,N] and B give it too (a Gemm on a Concat in a Loop body: SLANet optimized)
            n, k = (b[0], b[1]) if attrs.get("transB", 0) else (b[1], b[0])
            return out[0] * n * k if out is not None and len(out) == 2 and out[1] == n else None
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * k * n
    if op in MATMUL_LIKE:
        b = ins[MATMUL_LIKE[op]] if len(ins) > MATMUL_LIKE[op] else None
        return _matmul_macs(ins[0], b, out, attrs.get("transA", 0), attrs.get("transB", 0))
    if op == "MatMulNBits" and ins and ins[0] is not None:
        return int(np.prod(ins[0][:-1])) * int(attrs["K"]) * int(attrs["N"])
    if op in ATTENTION_OPS:
        return _attention_macs(node, ins, out, attrs)
    if op in RECURRENT_GATES:
        return _recurrent_macs(ins[0] if ins else None, RECURRENT_GATES[op], attrs)
    if op in LINEAR_ML_OPS and node.domain == "ai.onnx.ml":
        examples = int(np.prod(ins[0][:-1])) if ins and ins[0] else None  # X: [N, features]
        return None if examples is None else examples * len(attrs.get("coefficients") or ())
    return None


def _recurrent_macs(x: list[int] | None, gates: int, attrs: dict) -> int | None:
    """An LSTM/GRU/RNN over ``X`` ([seq, batch, input]; [batch, seq, input] under ``layout`` 1): per step,
    direction and example, each gate's ``hidden × (input + hidden)`` products (the input and the
    recurrent weights). Silero VAD's LSTM was 4.2 M of its 23.9 M MACs, and had been left out."""
    if x is None or len(x) != 3 or not attrs.get("hidden_size"):
        return None
    hidden, directions = int(attrs["hidden_size"]), 2 if attrs.get("direction", b"forward") in (b"bidirectional",
                                                                                               "bidirectional") else 1
    steps, batch = (x[1], x[0]) if attrs.get("layout", 0) else (x[0], x[1])
    return steps * batch * directions * gates * hidden * (x[2] + hidden)


def _counted(shape: list[int] | None) -> list[int] | None:
    """``shape``, or None where inference gave it a negative dim: an input assumed too small for the
    model (openWakeWord's mel front end at an assumed 32 samples, shorter than its STFT window) made
    the output length negative, and ``inspect`` printed "MACs -542,784"."""
    return None if shape is None or any(int(d) < 0 for d in shape) else shape


def _matmul_macs(a, b, out, trans_a: int = 0, trans_b: int = 0) -> int | None:
    """``A·B`` with numpy's rules: 1-D operands promoted, batch dims broadcast (``[1,s,k]·[B,k,n]``
    costs B·s·k·n), each output element K MACs. FusedMatMul's transA/transB swap the last two dims."""
    if a is None:  # the output and B give it too: each output element is K MACs, K from B
        if out is None or b is None or (len(b) > 1 and (not out or out[-1] != (b[-2] if trans_b else b[-1]))):
            return None  # an output that does not end in B's N is not this product's (an untyped graph output)
        return int(np.prod(out)) * (b[0] if len(b) == 1 else b[-1] if trans_b else b[-2])
    k = a[-2] if trans_a and len(a) > 1 else a[-1]
    if out is not None:
        return int(np.prod(out)) * k
    if b is None:
        return None
    m = [] if len(a) == 1 else [a[-1] if trans_a else a[-2]]
    n = [] if len(b) == 1 else [b[-2] if trans_b else b[-1]]
    try:
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    except ValueError:  # shapes that cannot broadcast: the graph is invalid there, count nothing
        return None
    return int(np.prod(batch)) * int(np.prod(m)) * k * int(np.prod(n))


def _attention_macs(node: onnx.NodeProto, ins: list, out, attrs: dict) -> int | None:
    """The two products of attention (Q·Kᵀ and scores·V) over every head, ``(|Q| + |Y|)·L`` for key
    length L (past keys included), plus com.microsoft Attention's packed QKV projection
    ``|X|·W_cols``. The forms onnxruntime's transformer fusions and opset 23 write:

    - com.microsoft Attention: X [B,S,in], W [in, q+k+v], past [2,B,N,P,H] (input 4);
    - com.microsoft MultiHeadAttention: Q [B,S,D] or packed [B,S,N,3,H]; K [B,L,D], [B,N,L,H] or
      packed [B,L,N,2,H]; past_key [B,N,P,H] (input 6);
    - ai.onnx Attention: Q [B,S,D] or [B,N,S,H]; K [B,L,D] or [B,N,L,H]; past_key [B,N,P,H] (input 4).
    """
    def given(i):  # None when absent; False when named but of unknown shape
        return None if len(node.input) <= i or not node.input[i] else (ins[i] or False)

    if node.domain == "com.microsoft" and node.op_type == "Attention":
        x, w, past = given(0), given(1), given(4)
        if not x or not w or past is False or len(x) != 3:
            return None
        q, _, v = attrs.get("qkv_hidden_sizes") or [w[-1] // 3] * 3
        kv_len = x[1] + (past[3] if past else 0)
        return int(np.prod(x)) * w[-1] + x[0] * x[1] * kv_len * (q + v)
    q, k, past = given(0), given(1), given(6 if node.domain == "com.microsoft" else 4)
    if not q or out is None or k is False or past is False:
        return None
    q_elems = int(np.prod(q)) // (3 if len(q) == 5 else 1)  # packed Q, K, V: one third is Q
    key = k or q  # packed QKV: keys as long as the queries
    kv_len = (key[1] if len(key) in (3, 5) else key[2]) + (past[2] if past else 0)
    return (q_elems + int(np.prod(out))) * kv_len


def _is_mac_node(node: onnx.NodeProto) -> bool:
    if node.op_type in ATTENTION_OPS:
        return node.domain in ATTENTION_OPS[node.op_type]
    if node.op_type in LINEAR_ML_OPS:
        return node.domain == "ai.onnx.ml"
    return node.op_type in MAC_OPS and node.domain in MAC_DOMAINS


def macs(model: ir.Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> MacCount:
    """Multiply-accumulates of the compute-heavy ops, the nodes whose shapes stayed unknown, and why.

    Shapes come from the inferences of ``mcomp.value_shapes`` in turn (onnx, onnxruntime's symbolic
    inference, constant folding), each tried only while compute nodes are left unknown; the count
    with the fewest unknown nodes is kept.
    """
    given = len(model.graph.inputs)
    return _c_api_utils().call_onnx_api(
        lambda proto: _best_count(with_concrete_inputs(_bare(proto, given), input_shapes)), model)


def _bare(proto: onnx.ModelProto, given: int | None = None) -> onnx.ModelProto:
    """``proto`` (a copy made for the count) without its stored value_info: shapes an exporter or
    onnxruntime wrote there for other input shapes (``['batch', 256]``) would override the ones
    inferred at the shapes counted, and leave the nodes after them uncounted.

    ``given``: the model's own input count. onnx-ir's ``call_onnx_api`` lists every initializer as a
    graph input after them (the big ones without their data); those that kept their data are taken
    off the inputs again, or constant folding treats them as values fed at run time: a pruned PP-OCR
    classifier's Reshape to ``[batch, 96]`` was not folded, and its FC not counted."""
    del proto.graph.value_info[:]
    if given is not None:
        with_data = {t.name for t in proto.graph.initializer}
        kept = [v for i, v in enumerate(proto.graph.input) if i < given or v.name not in with_data]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    return proto


def macs_by_node(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, int | None]:
    """Each compute node's MACs at ``input_shapes`` (e.g. a feed's shapes), by node name, subgraphs
    included; None for a node whose shapes stayed unknown. Shapes are inferred afresh (the proto's
    own value_info, possibly from other input shapes, is dropped), by the inferences ``macs`` uses.
    The nodes are ``proto``'s: the folded graph (whose folder may fuse and rename nodes) only fills
    in, by name, the counts the others left unknown."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    del work.graph.value_info[:]
    counts: dict[str, int | None] | None = None
    for stage in value_shapes.stages(with_concrete_inputs(work, input_shapes)):
        found = {node.name: node_macs(node, stage.shapes) for node in proto_nodes(stage.proto.graph) if _is_mac_node(node)}
        counts = found if counts is None else {n: found.get(n) if c is None else c for n, c in counts.items()}
        if all(c is not None for c in counts.values()):
            break
    return counts or {}


def _c_api_utils():
    """onnx-ir's C-API helper: it serializes the model with every initializer above 1 KB turned into
    a typed graph input, so MACs of a 100 MB model cost a few MB, not copies of the weights.
    (A private helper, pinned with onnx-ir in constraints.txt; the public ShapeInferencePass uses
    it the same way.)"""
    from onnx_ir.passes.common import _c_api_utils

    return _c_api_utils


def _best_count(proto: onnx.ModelProto) -> MacCount:
    best, failures = None, []
    for stage in value_shapes.stages(proto):
        failures.append(stage.failure)
        unknown: list[str] = []
        total, looped = _graph_macs(stage.proto.graph, stage.shapes, unknown)
        if best is None or len(unknown) < len(best.unknown):
            best = MacCount(total, unknown, in_loop_bodies=looped)
        if not best.unknown:
            return best
    negative = any(d < 0 for shape in stage.shapes.values() if shape for d in shape)
    why = _joined(*failures, "the shapes inferred have negative dims: an input is too small for the model at the "
                  "shapes counted" if negative else None) \
        or "their shapes are computed at run time (no shape inference could resolve them)"
    return best._replace(reason=f"{len(best.unknown)} compute node(s) not counted: {why}")


# Ops whose body graph runs once per iteration: the count takes one iteration, since how many run is
# decided at run time (SLANet's decoder Loop: a trip-count bound of 1024, a condition that stops at 501).
LOOP_OPS = frozenset({"Loop", "Scan"})


def _graph_macs(graph: onnx.GraphProto, shapes: dict[str, list[int]], unknown: list[str]) -> tuple[int, int]:
    """A graph's MACs, and how many of them are in loop bodies. An If counts its costlier branch; a
    loop body counts once (one iteration)."""
    total = looped = 0
    for node in graph.node:
        branches = [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
        if branches:
            body, body_looped = max(_graph_macs(g, shapes, unknown) for g in branches)
            total += body
            looped += body if node.op_type in LOOP_OPS else body_looped
        if not _is_mac_node(node):
            continue
        count = node_macs(node, shapes)
        if count is None:
            unknown.append(node.name or node.op_type)
        else:
            total += count
    return total, looped


def _joined(*reasons: str | None) -> str | None:
    return "; ".join(r for r in reasons if r) or None


__all__ = ["all_graphs", "all_nodes", "proto_graphs", "proto_nodes", "node_count", "op_histogram", "weight_tensors",
           "copy", "MacCount", "node_macs", "macs", "macs_by_node", "MAC_OPS", "ATTENTION_OPS", "SHAPE_ERRORS"]
