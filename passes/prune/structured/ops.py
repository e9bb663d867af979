"""What each op does to a channel axis: the rules the group search follows.

``relate(node, space, port)`` answers, for a tensor of a group entering ``node`` at ``port``
(``("in", i)`` or ``("out", i)``) with its channels on ``space.axis``: which other tensors of
the node carry the same channels (and on which axis), which of the node's tensors must be
sliced with them (members), or why the channels cannot be followed (``block``). Producers and
consumers end a search: a Conv's output channels are its weight's axis 0, its input channels
its weight's axis 1, and nothing crosses the Conv (which nodes produce channels: ``producers``).
"""

from __future__ import annotations

import onnx_ir as ir

from mcomp.passes.prune.structured import attention, layout
from mcomp.passes.prune.structured.layout import norm_axis
from mcomp.passes.prune.structured.paths import ConcatStep, Path
from mcomp.passes.prune.structured.prepare import attr, const, dim, ints_input, rank, same_dim
from mcomp.passes.prune.structured.producers import ProducerSpec, is_depthwise, producer_spec
from mcomp.passes.prune.structured.spaces import (Member, Relation, Space, blocked, name_of, pass_through,
                                                   tensor_member, unary)

__all__ = ["Member", "Relation", "Space", "name_of", "relate"]


# --------------------------------------------------------------------------- the rules


def relate(node: ir.Node, space: Space, port: tuple[str, int]) -> Relation:
    if node.domain not in ("", "ai.onnx"):
        return blocked(f"custom op {node.domain}::{node.op_type}")
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return blocked(f"used by {node.op_type} (subgraph)")
    rule = _RULES.get(node.op_type)
    if rule is None:
        if node.op_type in _UNARY:
            return unary(node, space, port)
        return blocked(f"unsupported op {node.op_type}")
    return rule(node, space, port)


_UNARY = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Shrink", "Identity", "Cast", "Clip", "Dropout",
    "Not", "IsNaN", "IsInf", "Relu6",
})

_SPATIAL_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})


def _pool(node, space, port):
    if space.axis != 1:
        return blocked(f"{node.op_type} over the channel axis {space.axis}")
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return blocked("MaxPool indices are used")
    return unary(node, space, port)


def _batchnorm(node, space, port, params=(1, 2, 3, 4)):
    if space.axis != 1:
        return blocked(f"{node.op_type} on axis {space.axis}")
    if port[0] == "in" and port[1] != 0:
        return blocked(f"channel tensor used as a {node.op_type} parameter")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return blocked(f"training-mode {node.op_type} (statistics outputs used)")
    members = []
    for i in params:
        if i < len(node.inputs) and node.inputs[i] is not None:
            if const(node.inputs[i]) is None:
                return blocked(f"{node.op_type} with computed parameters")
            members.append(tensor_member(node, "param", i, 0, space.path))
    rel = pass_through(node, space, port)
    rel.members += members
    return rel


def _instancenorm(node, space, port):
    return _batchnorm(node, space, port, params=(1, 2))


def _layernorm(node, space, port):
    r = rank(node.inputs[0])
    axis = attr(node, "axis", -1)
    axis = axis + r if (r is not None and axis < 0) else axis
    if r is None or space.axis >= axis:
        return blocked("LayerNormalization normalizes over the channels")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return blocked("LayerNormalization statistics are used")
    if port[0] == "in" and port[1] != 0:
        return blocked("channel tensor used as a LayerNormalization parameter")
    return pass_through(node, space, port)


def _conv(node, space, port):
    kind, index = port
    w = const(node.inputs[1])
    if w is None:
        return blocked("Conv with computed weights")
    if kind == "in" and index != 0:
        return blocked("channel tensor used as Conv weights")
    if space.axis != 1:
        return blocked(f"Conv reads axis {space.axis} as channels")
    if is_depthwise(node):
        members = [tensor_member(node, "depthwise", 1, 0, space.path)]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if const(node.inputs[2]) is None:
                return blocked("depthwise Conv with a computed bias")
            members.append(tensor_member(node, "depthwise", 2, 0, space.path))
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, 1, space.path, space.width)], members)
    spec = producer_spec(node)
    if isinstance(spec, str):
        return blocked(spec)
    if kind == "in":
        return Relation([], [tensor_member(node, "consumer", 1, 1, space.path)])
    return _producer_members(node, spec, space.path)


def _producer_members(node: ir.Node, spec: ProducerSpec, path: Path) -> Relation:
    members = [tensor_member(node, "producer", 1, spec.weight_axis, path)]
    if spec.bias_index is not None:
        members.append(tensor_member(node, "producer", spec.bias_index, 0, path))
    return Relation([], members)


def _conv_transpose(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return blocked("channel tensor used as ConvTranspose weights")
    if space.axis != 1:
        return blocked(f"ConvTranspose reads axis {space.axis} as channels")
    spec = producer_spec(node)
    if isinstance(spec, str):
        return blocked(spec)
    if kind == "in":
        return Relation([], [tensor_member(node, "consumer", 1, 0, space.path)])
    return _producer_members(node, spec, space.path)


def _gemm(node, space, port):
    kind, index = port
    spec = producer_spec(node)
    if isinstance(spec, str):
        return blocked(spec)
    if kind == "in" and index != 0:
        return blocked(f"channel tensor used as Gemm input {index}")
    if space.axis == 0:
        return blocked("Gemm rows carry the channels")
    trans_b = attr(node, "transB", 0)
    if kind == "in":
        return Relation([], [tensor_member(node, "consumer", 1, 1 if trans_b else 0, space.path)])
    rel = _producer_members(node, spec, space.path)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = const(node.inputs[2])
        if c is None:
            return blocked("Gemm with a computed bias")
        if c.ndim >= 1 and c.shape[-1] == spec.channels and spec.channels > 1:
            if c.ndim == 2 and c.shape[0] != 1:
                return blocked("Gemm with a per-row bias")
            rel.members.append(tensor_member(node, "producer", 2, c.ndim - 1, space.path))
    return rel


def _matmul(node, space, port):
    kind, index = port
    spec = producer_spec(node)
    if spec is None:
        return attention.batched_matmul(node, space, port)
    if isinstance(spec, str):
        return blocked(spec)
    if kind == "in" and index != 0:
        return blocked("channel tensor used as MatMul weights")
    r = rank(node.inputs[0])
    if space.axis != r - 1:  # a batch or row axis: carried through to the output unchanged
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, space.axis, space.path, space.width)], [Member(node, "through", path=space.path)])
    if kind == "in":
        return Relation([], [tensor_member(node, "consumer", 1, 0, space.path)])
    return _producer_members(node, spec, space.path)


# --------------------------------------------------------------------------- elementwise


def _elementwise(node, space, port):
    """Add/Sub/Mul/Div/…: numpy broadcasting aligns the trailing axes; per-channel constants are
    sliced, computed operands with the same channels join the group (a residual Add)."""
    kind, index = port
    out = node.outputs[0]
    ranks = [rank(u) for u in node.inputs if u is not None]
    if any(r is None for r in ranks):
        return blocked(f"{node.op_type} with an operand of unknown rank")
    r_out = max(ranks)
    v = space.value
    out_axis = space.axis + r_out - rank(v) if kind == "in" else space.axis
    rel = Relation()
    if kind == "in":
        rel.spaces.append(Space(out, out_axis, space.path, space.width))
        rel.members.append(Member(node, "through", path=space.path))
    has_concat = any(isinstance(s, ConcatStep) for s in space.path)
    for j, u in enumerate(node.inputs):
        if u is None or u is v:
            continue
        au = out_axis - (r_out - rank(u))
        if au < 0:
            continue
        du = dim(u, au)
        if du == 1:
            continue
        if const(u) is not None:
            if space.width is None or du != space.width:
                return blocked(f"{node.op_type} with a constant of width {du} on the channel axis")
            rel.members.append(tensor_member(node, "param", j, au, space.path))
            continue
        if du is None and same_dim(u, au, v, space.axis):  # one symbolic size: attention scores + mask
            du = space.width
        if du is None or space.width is None:
            return blocked(f"{node.op_type}: width of {u.name} on the channel axis is unknown")
        if du != space.width:
            return blocked(f"{node.op_type}: {u.name} has width {du}, expected {space.width}")
        if has_concat:
            return blocked(f"{node.op_type} joins a concatenated tensor with another")
        rel.spaces.append(Space(u, au, space.path, space.width))
    if kind == "out":
        rel.members.append(Member(node, "through", path=space.path))
    return rel


def _prelu(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return blocked("channel tensor used as PRelu slope")
    return _elementwise(node, space, port)


def _opset(node: ir.Node) -> int:
    graph = node.graph
    opsets = graph.opset_imports if graph is not None else {}
    return node.version or opsets.get("", opsets.get("ai.onnx", 21))


def _softmax(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return blocked(f"{node.op_type} of unknown rank")
    old = _opset(node) < 13
    axis = norm_axis(attr(node, "axis", 1 if old else -1), r)
    if space.axis == axis or (old and space.axis >= axis):
        return blocked(f"{node.op_type} over the channels")
    return unary(node, space, port)


def _resize(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return blocked(f"channel tensor used as {node.op_type} parameter")
    r = rank(node.inputs[0])
    if r is None:
        return blocked(f"{node.op_type} of unknown rank")
    axes = [norm_axis(a, r) for a in attr(node, "axes", list(range(r)))]
    rel = pass_through(node, space, port)
    if space.axis not in axes:
        return rel
    pos = axes.index(space.axis)
    scales_index, sizes_index = (1, None) if len(node.inputs) == 2 else (2, 3)
    sizes_value = node.inputs[sizes_index] if sizes_index is not None and len(node.inputs) > sizes_index else None
    if sizes_value is not None and (const(sizes_value) is None or const(sizes_value).size):
        sizes = const(sizes_value)
        if sizes is None:
            return blocked(f"{node.op_type} with computed sizes")
        if space.width is None or int(sizes.reshape(-1)[pos]) != space.width:
            return blocked(f"{node.op_type} resizes the channels")
        rel.members.append(Member(node, "resize", sizes_value.name, None, sizes_index, space.path, {"position": pos}))
        return rel
    scales_value = node.inputs[scales_index] if scales_index < len(node.inputs) else None
    if scales_value is not None:
        scales = const(scales_value)
        if scales is None:
            return blocked(f"{node.op_type} with computed scales")
        if scales.size and float(scales.reshape(-1)[pos]) != 1.0:
            return blocked(f"{node.op_type} scales the channel axis")
    elif "scales" in node.attributes and float(attr(node, "scales")[pos]) != 1.0:
        return blocked(f"{node.op_type} scales the channel axis")
    return rel


def _pad(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return blocked("channel tensor used as Pad parameter")
    r = rank(node.inputs[0])
    pads = ints_input(node, 1, "pads")
    if pads is None or r is None:
        return blocked("Pad with computed pads")
    axes = ints_input(node, 3) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(r))
    if axes is None:
        return blocked("Pad with computed axes")
    axes = [norm_axis(a, r) for a in axes]
    if space.axis in axes:
        i = axes.index(space.axis)
        if pads[i] or pads[i + len(axes)]:
            return blocked("Pad adds channels")
    return pass_through(node, space, port)


def _blocked_op(reason):
    return lambda node, space, port: blocked(reason.format(op=node.op_type))


_RULES = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm,
    "LayerNormalization": _layernorm,
    "Add": _elementwise, "Sub": _elementwise, "Mul": _elementwise, "Div": _elementwise, "Pow": _elementwise,
    "Max": _elementwise, "Min": _elementwise, "Sum": _elementwise, "Mean": _elementwise, "Where": _elementwise,
    "PRelu": _prelu,
    **{op: _pool for op in _SPATIAL_POOLS},
    "Resize": _resize, "Upsample": _resize,
    "Pad": _pad,
    "Transpose": layout.transpose_rule,
    "Squeeze": layout.squeeze_rule, "Unsqueeze": layout.unsqueeze_rule,
    **{op: layout.reduce_rule for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "Concat": layout.concat_rule,
    "Split": layout.split_rule,
    "Slice": layout.slice_rule,
    "Flatten": layout.flatten_rule,
    "Reshape": layout.reshape_rule,
    "Shape": layout.shape_rule,
    "Size": _blocked_op("channel count read by Size"),
    "Expand": _blocked_op("Expand of a channel tensor"),
    "Gather": _blocked_op("Gather of a channel tensor"),
    "LRN": _blocked_op("LRN mixes neighbouring channels"),
    "GroupNormalization": _blocked_op("GroupNormalization mixes the channels of a group"),
    "SpaceToDepth": _blocked_op("{op} moves channels"),
    "DepthToSpace": _blocked_op("{op} moves channels"),
}
