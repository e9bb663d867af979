"""What each op does to a channel axis: the rules the group search follows.

``relate(node, space, port)`` answers, for a tensor of a group entering ``node`` at ``port``
(``("in", i)`` or ``("out", i)``) with its channels on ``space.axis``: which other tensors of
the node carry the same channels (and on which axis), which of the node's tensors must be
sliced with them (members), or why the channels cannot be followed (``block``). Producers and
consumers end a search: a Conv's output channels are its weight's axis 0, its input channels
its weight's axis 1, and nothing crosses the Conv.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mcomp.passes.prune.structured.paths import (ConcatStep, FlattenStep, Path, WindowStep, slice_params,
                                                  split_sizes)
from mcomp.passes.prune.structured.prepare import attr, const, dim, ints_input, rank


@dataclass(eq=False)
class Space:
    """One tensor of a group: ``value`` carries the group's channels on ``axis``, seen through ``path``."""

    value: ir.Value
    axis: int
    path: Path = ()
    width: int | None = None  # the tensor's size on ``axis`` (None when unknown)


@dataclass(eq=False)
class Member:
    """One node of a group, and the tensor of it that is cut with the group's channels.

    role: ``producer`` (weight axis 0 of a Conv: output channels), ``consumer`` (weight axis
    1: input channels), ``depthwise`` (a depthwise Conv, channels in = out), ``param`` (a
    per-channel constant: BatchNorm parameters, a bias added with ``Add``), ``through`` (an
    op the channels pass unchanged), ``concat``/``split``/``slice``/``reshape``/``resize`` (an op
    whose sizes or offsets are rewritten).
    """

    node: ir.Node
    role: str
    tensor: str | None = None  # the ONNX name of the sliced tensor, None when nothing is sliced
    axis: int | None = None  # its axis that holds the channels
    input_index: int | None = None
    path: Path = ()
    extra: dict = field(default_factory=dict)


@dataclass
class Relation:
    spaces: list[Space] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    block: str | None = None


def _blocked(reason: str) -> Relation:
    return Relation(block=reason)


def name_of(node: ir.Node) -> str:
    return node.name or f"{node.op_type}"


# --------------------------------------------------------------------------- producers


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
            return None if _is_depthwise(node) else f"grouped Conv (group={group})"
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
    if w is None or w.ndim != 2:
        return "MatMul of two computed tensors" if w is None else "MatMul with a batched weight"
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


def _is_depthwise(node: ir.Node) -> bool:
    w = const(node.inputs[1])
    group = attr(node, "group", 1)
    return w is not None and group > 1 and w.shape[1] == 1 and w.shape[0] == group


def _tensor_member(node: ir.Node, role: str, index: int, axis: int, path: Path, **extra) -> Member:
    return Member(node, role, node.inputs[index].name, axis, index, path, dict(extra))


# --------------------------------------------------------------------------- the rules


def relate(node: ir.Node, space: Space, port: tuple[str, int]) -> Relation:
    if node.domain not in ("", "ai.onnx"):
        return _blocked(f"custom op {node.domain}::{node.op_type}")
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return _blocked(f"used by {node.op_type} (subgraph)")
    rule = _RULES.get(node.op_type)
    if rule is None:
        if node.op_type in _UNARY:
            return _through(node, space, port)
        return _blocked(f"unsupported op {node.op_type}")
    return rule(node, space, port)


def _pass(node: ir.Node, space: Space, port, *, axis_in=None, axis_out=None) -> Relation:
    """Input 0 and output 0 carry the same channels (on ``axis_in`` / ``axis_out`` when they move)."""
    if port[0] == "in":
        other = Space(node.outputs[0], space.axis if axis_out is None else axis_out, space.path, space.width)
    else:
        other = Space(node.inputs[0], space.axis if axis_in is None else axis_in, space.path, space.width)
    return Relation([other], [Member(node, "through", path=space.path)])


def _through(node: ir.Node, space: Space, port, *, axis_in=None, axis_out=None) -> Relation:
    """Channels pass from input 0 to output 0 unchanged (the other inputs must be scalars)."""
    kind, index = port
    for j, u in enumerate(node.inputs[1:], start=1):
        if u is not None and rank(u) not in (0, None) and not _all_ones(u):
            if const(u) is None or u.const_value.size != 1:
                return _blocked(f"{node.op_type} with a non-scalar input {j}")
    if kind == "in" and index != 0:
        return _blocked(f"channel tensor used as input {index} of {node.op_type}")
    extra_outputs = [o for o in node.outputs[1:] if o.uses() or o.is_graph_output()]
    if extra_outputs and node.op_type not in ("Dropout",):
        return _blocked(f"{node.op_type} output {extra_outputs[0].name} is used")
    if kind == "out" and index != 0:
        return _blocked(f"{node.op_type} output {index}")
    return _pass(node, space, port, axis_in=axis_in, axis_out=axis_out)


def _all_ones(value: ir.Value) -> bool:
    shape = value.const_value.shape if value.const_value is not None else value.shape
    return shape is not None and all(d == 1 for d in shape)


_UNARY = frozenset({
    "Relu", "LeakyRelu", "PRelu_", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Shrink", "Identity", "Cast", "Clip", "Dropout",
    "Not", "IsNaN", "IsInf", "Relu6",
})

_SPATIAL_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})


def _pool(node, space, port):
    if space.axis != 1:
        return _blocked(f"{node.op_type} over the channel axis {space.axis}")
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return _blocked("MaxPool indices are used")
    return _through(node, space, port)


def _batchnorm(node, space, port, params=(1, 2, 3, 4)):
    if space.axis != 1:
        return _blocked(f"{node.op_type} on axis {space.axis}")
    if port[0] == "in" and port[1] != 0:
        return _blocked(f"channel tensor used as a {node.op_type} parameter")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return _blocked(f"training-mode {node.op_type} (statistics outputs used)")
    members = []
    for i in params:
        if i < len(node.inputs) and node.inputs[i] is not None:
            if const(node.inputs[i]) is None:
                return _blocked(f"{node.op_type} with computed parameters")
            members.append(_tensor_member(node, "param", i, 0, space.path))
    rel = _pass(node, space, port)
    rel.members += members
    return rel


def _instancenorm(node, space, port):
    return _batchnorm(node, space, port, params=(1, 2))


def _layernorm(node, space, port):
    r = rank(node.inputs[0])
    axis = attr(node, "axis", -1)
    axis = axis + r if (r is not None and axis < 0) else axis
    if r is None or space.axis >= axis:
        return _blocked("LayerNormalization normalizes over the channels")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return _blocked("LayerNormalization statistics are used")
    if port[0] == "in" and port[1] != 0:
        return _blocked("channel tensor used as a LayerNormalization parameter")
    return _pass(node, space, port)


def _conv(node, space, port):
    kind, index = port
    w = const(node.inputs[1])
    if w is None:
        return _blocked("Conv with computed weights")
    if kind == "in" and index != 0:
        return _blocked("channel tensor used as Conv weights")
    if space.axis != 1:
        return _blocked(f"Conv reads axis {space.axis} as channels")
    if _is_depthwise(node):
        members = [_tensor_member(node, "depthwise", 1, 0, space.path)]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if const(node.inputs[2]) is None:
                return _blocked("depthwise Conv with a computed bias")
            members.append(_tensor_member(node, "depthwise", 2, 0, space.path))
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, 1, space.path, space.width)], members)
    spec = producer_spec(node)
    if isinstance(spec, str):
        return _blocked(spec)
    if kind == "in":
        return Relation([], [_tensor_member(node, "consumer", 1, 1, space.path)])
    return _producer_members(node, spec, space.path)


def _producer_members(node: ir.Node, spec: ProducerSpec, path: Path) -> Relation:
    members = [_tensor_member(node, "producer", 1, spec.weight_axis, path)]
    if spec.bias_index is not None:
        members.append(_tensor_member(node, "producer", spec.bias_index, 0, path))
    return Relation([], members)


def _conv_transpose(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return _blocked("channel tensor used as ConvTranspose weights")
    if space.axis != 1:
        return _blocked(f"ConvTranspose reads axis {space.axis} as channels")
    spec = producer_spec(node)
    if isinstance(spec, str):
        return _blocked(spec)
    if kind == "in":
        return Relation([], [_tensor_member(node, "consumer", 1, 0, space.path)])
    return _producer_members(node, spec, space.path)


def _gemm(node, space, port):
    kind, index = port
    spec = producer_spec(node)
    if isinstance(spec, str):
        return _blocked(spec)
    if kind == "in" and index != 0:
        return _blocked(f"channel tensor used as Gemm input {index}")
    if space.axis == 0:
        return _blocked("Gemm rows carry the channels")
    trans_b = attr(node, "transB", 0)
    if kind == "in":
        return Relation([], [_tensor_member(node, "consumer", 1, 1 if trans_b else 0, space.path)])
    rel = _producer_members(node, spec, space.path)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = const(node.inputs[2])
        if c is None:
            return _blocked("Gemm with a computed bias")
        if c.ndim >= 1 and c.shape[-1] == spec.channels and spec.channels > 1:
            if c.ndim == 2 and c.shape[0] != 1:
                return _blocked("Gemm with a per-row bias")
            rel.members.append(_tensor_member(node, "producer", 2, c.ndim - 1, space.path))
    return rel


def _matmul(node, space, port):
    kind, index = port
    spec = producer_spec(node)
    if isinstance(spec, str):
        return _blocked(spec)
    if kind == "in" and index != 0:
        return _blocked("channel tensor used as MatMul weights")
    r = rank(node.inputs[0])
    if space.axis != r - 1:  # a batch or row axis: carried through to the output unchanged
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, space.axis, space.path, space.width)], [Member(node, "through", path=space.path)])
    if kind == "in":
        return Relation([], [_tensor_member(node, "consumer", 1, 0, space.path)])
    return _producer_members(node, spec, space.path)


# --------------------------------------------------------------------------- elementwise


def _elementwise(node, space, port):
    """Add/Sub/Mul/Div/…: numpy broadcasting aligns the trailing axes; per-channel constants are
    sliced, computed operands with the same channels join the group (a residual Add)."""
    kind, index = port
    out = node.outputs[0]
    ranks = [rank(u) for u in node.inputs if u is not None]
    if any(r is None for r in ranks):
        return _blocked(f"{node.op_type} with an operand of unknown rank")
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
                return _blocked(f"{node.op_type} with a constant of width {du} on the channel axis")
            rel.members.append(_tensor_member(node, "param", j, au, space.path))
            continue
        if du is None or space.width is None:
            return _blocked(f"{node.op_type}: width of {u.name} on the channel axis is unknown")
        if du != space.width:
            return _blocked(f"{node.op_type}: {u.name} has width {du}, expected {space.width}")
        if has_concat:
            return _blocked(f"{node.op_type} joins a concatenated tensor with another")
        rel.spaces.append(Space(u, au, space.path, space.width))
    if kind == "out":
        rel.members.append(Member(node, "through", path=space.path))
    return rel


def _prelu(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return _blocked("channel tensor used as PRelu slope")
    return _elementwise(node, space, port)


# --------------------------------------------------------------------------- shape-preserving movers


def _norm(axis: int, r: int) -> int:
    return axis + r if axis < 0 else axis


def _transpose(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return _blocked("Transpose of unknown rank")
    perm = list(attr(node, "perm", list(range(r))[::-1]))
    if port[0] == "in":
        return _pass(node, space, port, axis_out=perm.index(space.axis))
    return _pass(node, space, port, axis_in=perm[space.axis])


def _axes_of(node: ir.Node, r: int | None) -> list[int] | None:
    axes = ints_input(node, 1, "axes")
    if axes is None or r is None:
        return None
    return sorted(_norm(a, r) for a in axes)


def _squeeze(node, space, port):
    r_in = rank(node.inputs[0])
    axes = _axes_of(node, r_in)
    if axes is None:
        if len(node.inputs) > 1 and node.inputs[1] is not None or r_in is None or node.inputs[0].shape is None:
            return _blocked("Squeeze with unknown axes")
        axes = [i for i, d in enumerate(node.inputs[0].shape) if d == 1]
    kept = [i for i in range(r_in) if i not in axes]
    if port[0] == "in":
        if space.axis in axes:
            return _blocked("Squeeze removes the channel axis")
        return _pass(node, space, port, axis_out=kept.index(space.axis))
    return _pass(node, space, port, axis_in=kept[space.axis])


def _unsqueeze(node, space, port):
    r_out = rank(node.outputs[0])
    axes = _axes_of(node, r_out)
    if axes is None:
        return _blocked("Unsqueeze with unknown axes")
    kept = [i for i in range(r_out) if i not in axes]
    if port[0] == "in":
        return _pass(node, space, port, axis_out=kept[space.axis])
    if space.axis in axes:
        return _blocked("channels on an unsqueezed axis")
    return _pass(node, space, port, axis_in=kept.index(space.axis))


def _reduce(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return _blocked(f"{node.op_type} of unknown rank")
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [_norm(attr(node, "axis", 0), r)]
    else:
        axes = _axes_of(node, r)
        given = (len(node.inputs) > 1 and node.inputs[1] is not None) or "axes" in node.attributes
        if axes is None:
            if given:
                return _blocked(f"{node.op_type} with computed axes")
            if attr(node, "noop_with_empty_axes", 0):
                return _pass(node, space, port)
            axes = list(range(r))
    if space.axis in axes:
        return _blocked(f"{node.op_type} reduces over the channels")
    if attr(node, "keepdims", 1):
        return _pass(node, space, port)
    kept = [i for i in range(r) if i not in axes]
    if port[0] == "in":
        return _pass(node, space, port, axis_out=kept.index(space.axis))
    return _pass(node, space, port, axis_in=kept[space.axis])


def _opset(node: ir.Node) -> int:
    graph = node.graph
    opsets = graph.opset_imports if graph is not None else {}
    return node.version or opsets.get("", opsets.get("ai.onnx", 21))


def _softmax(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return _blocked(f"{node.op_type} of unknown rank")
    old = _opset(node) < 13
    axis = _norm(attr(node, "axis", 1 if old else -1), r)
    if space.axis == axis or (old and space.axis >= axis):
        return _blocked(f"{node.op_type} over the channels")
    return _through(node, space, port)


def _resize(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return _blocked(f"channel tensor used as {node.op_type} parameter")
    r = rank(node.inputs[0])
    if r is None:
        return _blocked(f"{node.op_type} of unknown rank")
    axes = [_norm(a, r) for a in attr(node, "axes", list(range(r)))]
    rel = _pass(node, space, port)
    if space.axis not in axes:
        return rel
    pos = axes.index(space.axis)
    scales_index, sizes_index = (1, None) if len(node.inputs) == 2 else (2, 3)
    sizes_value = node.inputs[sizes_index] if sizes_index is not None and len(node.inputs) > sizes_index else None
    if sizes_value is not None and (const(sizes_value) is None or const(sizes_value).size):
        sizes = const(sizes_value)
        if sizes is None:
            return _blocked(f"{node.op_type} with computed sizes")
        if space.width is None or int(sizes.reshape(-1)[pos]) != space.width:
            return _blocked(f"{node.op_type} resizes the channels")
        rel.members.append(Member(node, "resize", sizes_value.name, None, sizes_index, space.path, {"position": pos}))
        return rel
    scales_value = node.inputs[scales_index] if scales_index < len(node.inputs) else None
    if scales_value is not None:
        scales = const(scales_value)
        if scales is None:
            return _blocked(f"{node.op_type} with computed scales")
        if scales.size and float(scales.reshape(-1)[pos]) != 1.0:
            return _blocked(f"{node.op_type} scales the channel axis")
    elif "scales" in node.attributes and float(attr(node, "scales")[pos]) != 1.0:
        return _blocked(f"{node.op_type} scales the channel axis")
    return rel


def _pad(node, space, port):
    if port[0] == "in" and port[1] != 0:
        return _blocked("channel tensor used as Pad parameter")
    r = rank(node.inputs[0])
    pads = ints_input(node, 1, "pads")
    if pads is None or r is None:
        return _blocked("Pad with computed pads")
    axes = ints_input(node, 3) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(r))
    if axes is None:
        return _blocked("Pad with computed axes")
    axes = [_norm(a, r) for a in axes]
    if space.axis in axes:
        i = axes.index(space.axis)
        if pads[i] or pads[i + len(axes)]:
            return _blocked("Pad adds channels")
    return _pass(node, space, port)


# --------------------------------------------------------------------------- concat / split / slice


def _concat(node, space, port):
    r = rank(node.outputs[0]) or rank(space.value)
    axis = _norm(attr(node, "axis", 0), r)
    kind, index = port
    if axis == space.axis:
        if kind == "out":
            return _blocked("reaches a Concat from its output")
        if any(dim(u, axis) is None for u in node.inputs):
            return _blocked("Concat of inputs with dynamic widths")
        step = ConcatStep(node, index, axis)
        return Relation([Space(node.outputs[0], axis, space.path + (step,), dim(node.outputs[0], axis))],
                        [Member(node, "concat", path=space.path + (step,))])
    rel = Relation([], [Member(node, "through", path=space.path)])
    for j, u in enumerate(node.inputs):
        if kind == "in" and j == index:
            continue
        if const(u) is not None:
            if dim(u, space.axis) != space.width:
                return _blocked("Concat with a constant of another width")
            rel.members.append(_tensor_member(node, "param", j, space.axis, space.path))
        else:
            rel.spaces.append(Space(u, space.axis, space.path, space.width))
    if kind == "in":
        rel.spaces.append(Space(node.outputs[0], space.axis, space.path, space.width))
    return rel


def _split(node, space, port):
    kind, index = port
    r = rank(node.inputs[0])
    if r is None:
        return _blocked("Split of unknown rank")
    axis = _norm(attr(node, "axis", 0), r)
    if kind == "in" and index != 0:
        return _blocked("channel tensor used as Split sizes")
    if axis != space.axis:
        others = [node.inputs[0]] + list(node.outputs)
        spaces = [Space(o, space.axis, space.path, space.width) for o in others if o is not space.value]
        return Relation(spaces, [Member(node, "through", path=space.path)])
    if kind == "out":
        return _blocked("reaches a Split from its output")
    try:
        split_sizes(node, axis)
    except ValueError as exc:
        return _blocked(str(exc))
    spaces = [Space(o, axis, space.path + (WindowStep(node, j, axis),), dim(o, axis)) for j, o in enumerate(node.outputs)]
    return Relation(spaces, [Member(node, "split", path=space.path, extra={"axis": axis})])


def _slice(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return _blocked("channel tensor used as Slice bounds")
    try:
        params = slice_params(node, space.axis)
    except ValueError as exc:
        return _blocked(str(exc))
    if params is None:
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, space.axis, space.path, space.width)], [Member(node, "through", path=space.path)])
    if kind == "out":
        return _blocked("reaches a Slice of the channels from its output")
    if params[2] != 1:
        return _blocked("strided Slice of the channels")
    if space.width is None:
        return _blocked("Slice of channels of unknown width")
    step = WindowStep(node, 0, space.axis)
    return Relation([Space(node.outputs[0], space.axis, space.path + (step,), dim(node.outputs[0], space.axis))],
                    [Member(node, "slice", path=space.path, extra={"axis": space.axis})])


# --------------------------------------------------------------------------- reshape / flatten


def _flatten(node, space, port):
    if port[0] == "out":
        return _blocked("reaches a Flatten from its output")
    r = rank(node.inputs[0])
    axis = _norm(attr(node, "axis", 1), r) if r is not None else None
    if axis is None or axis != space.axis:
        return _blocked("Flatten merges the channels with other axes")
    factor = _static_product(node.inputs[0], axis + 1)
    if factor is None:
        return _blocked("Flatten of a dynamic spatial size")
    return _flattened(node, space, 1, factor)


def _flattened(node, space, out_axis, factor, entry=None):
    extra = {"entry": entry, "factor": factor} if entry is not None else {}
    step = FlattenStep(node, factor)
    path = space.path + (step,) if factor != 1 else space.path
    width = None if space.width is None else space.width * factor
    role = "reshape" if extra else "through"
    return Relation([Space(node.outputs[0], out_axis, path, width)], [Member(node, role, path=space.path, extra=extra)])


def _static_product(value: ir.Value, start: int) -> int | None:
    r = rank(value)
    total = 1
    for i in range(start, r or 0):
        d = dim(value, i)
        if d is None:
            return None
        total *= d
    return total


def _reshape(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return _shape_tensor_use(node)
    data, out = node.inputs[0], node.outputs[0]
    entries = shape_entries(node.inputs[1], data, (node, 1))
    if entries is None:
        return _blocked("Reshape to a shape computed at run time")
    a = space.axis
    allowzero = attr(node, "allowzero", 0)
    entries = [("copy", i, None) if (e[0] == "const" and e[1] == 0 and not allowzero) else e for i, e in enumerate(entries)]
    if kind == "out":
        return _reshape_backward(node, space, entries)
    width = space.width
    if width is None or a >= len(entries):
        return _blocked("Reshape of channels of unknown width")
    prefix_kept = all(_keeps(e, i, data) for i, e in enumerate(entries[:a]))
    entry = entries[a]
    # identity on the channels: leading dims and the channel dim are kept
    trailing = _static_product(data, a + 1)
    inferred = entry == ("const", -1, entry[2]) and dim(out, a) == width
    if prefix_kept and (entry[0] == "copy" and entry[1] == a or entry[0] == "const" and entry[1] == width or inferred):
        rel = Relation([Space(out, a, space.path, width)], [Member(node, "through", path=space.path)])
        if entry[0] == "const" and not inferred:
            rel.members[0] = Member(node, "reshape", path=space.path, extra={"entry": entry[2], "factor": 1})
        return rel
    # flatten: the channels and every axis after them become one feature axis
    if len(entries) == a + 1 and trailing is not None and (prefix_kept or a == 1):
        features = width * trailing
        if entry[0] == "const" and entry[1] == features:
            return _flattened(node, space, a, trailing, entry=entry[2])
        if entry[0] == "const" and entry[1] == -1 and prefix_kept:
            return _flattened(node, space, a, trailing)
    return _blocked("Reshape that moves the channels (cannot map)")


def _reshape_backward(node, space, entries):
    a = space.axis
    data = node.inputs[0]
    if a < len(entries) and all(_keeps(e, i, data) for i, e in enumerate(entries[:a])) \
            and ((entries[a][0] == "copy" and entries[a][1] == a) or
                 (entries[a][0] == "const" and entries[a][1] == space.width and dim(data, a) == space.width)):
        extra = {"entry": entries[a][2], "factor": 1} if entries[a][0] == "const" else {}
        role = "reshape" if extra else "through"
        return Relation([Space(data, a, space.path, space.width)], [Member(node, role, path=space.path, extra=extra)])
    return _blocked("reaches a Reshape from its output")


def _keeps(entry, i: int, data: ir.Value) -> bool:
    """Whether a target entry keeps input dim ``i`` (copied, or the same static size)."""
    if entry[0] == "copy":
        return entry[1] == i
    return entry[0] == "const" and entry[1] >= 0 and dim(data, i) == entry[1]


def shape_entries(value: ir.Value, data: ir.Value | None, user: tuple[ir.Node, int],
                  depth: int = 0) -> list[tuple] | None:
    """What each entry of a shape tensor is: ``("const", v, where)`` with ``where`` = (node, input
    index, element) of the constant to rewrite, ``("copy", i, None)`` for dim ``i`` of ``data``
    read at run time, ``("unknown", None, None)``; None when even the length is unknown."""
    if value is None or depth > 12:
        return None
    arr = const(value)
    if arr is not None:
        return [("const", int(x), (user[0], user[1], k)) for k, x in enumerate(arr.reshape(-1))]
    node = value.producer()
    if node is None:
        return _unknown(value)
    op = node.op_type
    if op in ("Cast", "Identity") or (op in ("Squeeze", "Unsqueeze", "Reshape") and _length(value) == 1):
        return shape_entries(node.inputs[0], data, (node, 0), depth + 1)
    if op == "Concat":
        parts = [shape_entries(u, data, (node, j), depth + 1) for j, u in enumerate(node.inputs)]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Shape":
        r = rank(node.inputs[0])
        if r is None:
            return None
        idx = range(r)[slice(attr(node, "start", 0), attr(node, "end", r))]
        if node.inputs[0] is data:
            return [("copy", i, None) for i in idx]
        return [("unknown", None, None) for _ in idx]
    if op in ("Slice", "Gather"):
        base = shape_entries(node.inputs[0], data, (node, 0), depth + 1)
        if base is None:
            return _unknown(value)
        if op == "Gather":
            ind = const(node.inputs[1])
            return _unknown(value) if ind is None else [base[int(i)] for i in ind.reshape(-1)]
        try:
            params = slice_params(node, 0)
        except ValueError:
            return _unknown(value)
        if params is None:
            return base
        start, end, step = params
        return base[slice(start, end, step)]
    return _unknown(value)


def _length(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None:
        return None
    if len(shape) == 0:
        return 1
    return shape[0] if len(shape) == 1 and isinstance(shape[0], int) else None


def _unknown(value: ir.Value):
    n = _length(value)
    return None if n is None else [("unknown", None, None)] * n


def _shape_tensor_use(node):
    return _blocked(f"channel tensor used as the shape of {node.op_type}")


# --------------------------------------------------------------------------- Shape reads


def _shape(node, space, port):
    """A Shape read is safe when the channel count it exposes goes nowhere, or only back into a
    Reshape of the same tensor at the same position (``x.reshape(x.shape[0], x.shape[1], -1)``)."""
    r = rank(node.inputs[0])
    if r is None:
        return _blocked("Shape of a tensor of unknown rank")
    idx = list(range(r))[slice(attr(node, "start", 0), attr(node, "end", r))]
    if space.axis not in idx:
        return Relation()
    reason = _follow_shape(node.outputs[0], idx.index(space.axis), space, 0)
    return _blocked(reason) if reason else Relation()


def _follow_shape(value: ir.Value, pos: int, space: Space, depth: int) -> str | None:
    if value.is_graph_output() or depth > 12:
        return "channel count read by Shape reaches a graph output"
    for node, i in value.uses():
        op = node.op_type
        if op in ("Cast", "Identity"):
            reason = _follow_shape(node.outputs[0], pos, space, depth + 1)
        elif op == "Slice" and i == 0:
            try:
                params = slice_params(node, 0)
            except ValueError:
                return "channel count read by Shape → Slice with computed bounds"
            if params is None:
                reason = _follow_shape(node.outputs[0], pos, space, depth + 1)
            else:
                start, end, step = params
                n = _length(value) or (pos + 1)
                picked = list(range(n))[slice(start, end, step)]
                reason = None if pos not in picked else _follow_shape(node.outputs[0], picked.index(pos), space, depth + 1)
        elif op == "Gather" and i == 0:
            ind = const(node.inputs[1])
            if ind is None:
                return "channel count read by Shape → Gather with computed indices"
            reason = None if pos not in [int(x) for x in ind.reshape(-1)] else "channel count read by Shape → Gather"
        elif op == "Concat":
            offset = 0
            for u in node.inputs[:i]:
                n = _length(u)
                if n is None:
                    return "channel count read by Shape → Concat of unknown lengths"
                offset += n
            reason = _follow_shape(node.outputs[0], pos + offset, space, depth + 1)
        elif op == "Reshape" and i == 1:
            reason = None if (node.inputs[0] is space.value and pos == space.axis) else \
                "channel count read by Shape → Reshape of another tensor"
        else:
            reason = f"channel count read by Shape → {op}"
        if reason:
            return reason
    return None


def _blocked_op(reason):
    return lambda node, space, port: _blocked(reason.format(op=node.op_type))


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
    "Transpose": _transpose,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    **{op: _reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Shape": _shape,
    "Size": _blocked_op("channel count read by Size"),
    "Expand": _blocked_op("Expand of a channel tensor"),
    "Gather": _blocked_op("Gather of a channel tensor"),
    "LRN": _blocked_op("LRN mixes neighbouring channels"),
    "GroupNormalization": _blocked_op("GroupNormalization mixes the channels of a group"),
    "SpaceToDepth": _blocked_op("{op} moves channels"),
    "DepthToSpace": _blocked_op("{op} moves channels"),
}
