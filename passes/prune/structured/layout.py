"""Ops that move, join, split or reshape the channel axis without computing on it.

Transpose/Squeeze/Unsqueeze/reductions move the axis; Concat, Split and Slice along it put the
group's channels at an offset or hand on a sub-range (``paths``); Reshape and Flatten either
keep it (``x.reshape(N, C, -1)``) or spread each channel over a block of features in front of
a fully-connected layer; a ``Shape`` read is followed to see whether the channel count it
exposes is used for anything but reshaping the same tensor.
"""

from __future__ import annotations

import onnx_ir as ir

from mcomp.passes.prune.structured import attention
from mcomp.passes.prune.structured.paths import (ConcatStep, FlattenStep, HeadStep, WindowStep, slice_params,
                                                  split_sizes)
from mcomp.passes.prune.structured.prepare import attr, const, dim, ints_input, rank
from mcomp.passes.prune.structured.spaces import Member, Relation, Space, blocked, pass_through, tensor_member

def norm_axis(axis: int, r: int) -> int:
    return axis + r if axis < 0 else axis


def transpose_rule(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return blocked("Transpose of unknown rank")
    perm = list(attr(node, "perm", list(range(r))[::-1]))
    if port[0] == "in":
        return pass_through(node, space, port, axis_out=perm.index(space.axis))
    return pass_through(node, space, port, axis_in=perm[space.axis])


def _axes_of(node: ir.Node, r: int | None) -> list[int] | None:
    axes = ints_input(node, 1, "axes")
    if axes is None or r is None:
        return None
    return sorted(norm_axis(a, r) for a in axes)


def squeeze_rule(node, space, port):
    r_in = rank(node.inputs[0])
    axes = _axes_of(node, r_in)
    if axes is None:
        if len(node.inputs) > 1 and node.inputs[1] is not None or r_in is None or node.inputs[0].shape is None:
            return blocked("Squeeze with unknown axes")
        axes = [i for i, d in enumerate(node.inputs[0].shape) if d == 1]
    kept = [i for i in range(r_in) if i not in axes]
    if port[0] == "in":
        if space.axis in axes:
            return blocked("Squeeze removes the channel axis")
        return pass_through(node, space, port, axis_out=kept.index(space.axis))
    return pass_through(node, space, port, axis_in=kept[space.axis])


def unsqueeze_rule(node, space, port):
    r_out = rank(node.outputs[0])
    axes = _axes_of(node, r_out)
    if axes is None:
        return blocked("Unsqueeze with unknown axes")
    kept = [i for i in range(r_out) if i not in axes]
    if port[0] == "in":
        return pass_through(node, space, port, axis_out=kept[space.axis])
    if space.axis in axes:
        return blocked("channels on an unsqueezed axis")
    return pass_through(node, space, port, axis_in=kept.index(space.axis))


def reduce_rule(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return blocked(f"{node.op_type} of unknown rank")
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [norm_axis(attr(node, "axis", 0), r)]
    else:
        axes = _axes_of(node, r)
        given = (len(node.inputs) > 1 and node.inputs[1] is not None) or "axes" in node.attributes
        if axes is None:
            if given:
                return blocked(f"{node.op_type} with computed axes")
            if attr(node, "noop_with_empty_axes", 0):
                return pass_through(node, space, port)
            axes = list(range(r))
    if space.axis in axes:
        return blocked(f"{node.op_type} reduces over the channels")
    if attr(node, "keepdims", 1):
        return pass_through(node, space, port)
    kept = [i for i in range(r) if i not in axes]
    if port[0] == "in":
        return pass_through(node, space, port, axis_out=kept.index(space.axis))
    return pass_through(node, space, port, axis_in=kept[space.axis])


# --------------------------------------------------------------------------- concat / split / slice


def concat_rule(node, space, port):
    r = rank(node.outputs[0]) or rank(space.value)
    axis = norm_axis(attr(node, "axis", 0), r)
    kind, index = port
    if axis == space.axis:
        if kind == "out":
            return blocked("reaches a Concat from its output")
        if any(dim(u, axis) is None for u in node.inputs):
            return blocked("Concat of inputs with dynamic widths")
        step = ConcatStep(node, index, axis)
        return Relation([Space(node.outputs[0], axis, space.path + (step,), dim(node.outputs[0], axis))],
                        [Member(node, "concat", path=space.path + (step,))])
    rel = Relation([], [Member(node, "through", path=space.path)])
    for j, u in enumerate(node.inputs):
        if kind == "in" and j == index:
            continue
        if const(u) is not None:
            if dim(u, space.axis) != space.width:
                return blocked("Concat with a constant of another width")
            rel.members.append(tensor_member(node, "param", j, space.axis, space.path))
        else:
            rel.spaces.append(Space(u, space.axis, space.path, space.width))
    if kind == "in":
        rel.spaces.append(Space(node.outputs[0], space.axis, space.path, space.width))
    return rel


def split_rule(node, space, port):
    kind, index = port
    r = rank(node.inputs[0])
    if r is None:
        return blocked("Split of unknown rank")
    axis = norm_axis(attr(node, "axis", 0), r)
    if kind == "in" and index != 0:
        return blocked("channel tensor used as Split sizes")
    if axis != space.axis:
        others = [node.inputs[0]] + list(node.outputs)
        spaces = [Space(o, space.axis, space.path, space.width) for o in others if o is not space.value]
        return Relation(spaces, [Member(node, "through", path=space.path)])
    if kind == "out":
        return blocked("reaches a Split from its output")
    try:
        split_sizes(node, axis)
    except ValueError as exc:
        return blocked(str(exc))
    spaces = [Space(o, axis, space.path + (WindowStep(node, j, axis),), dim(o, axis)) for j, o in enumerate(node.outputs)]
    return Relation(spaces, [Member(node, "split", path=space.path, extra={"axis": axis})])


def slice_rule(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return blocked("channel tensor used as Slice bounds")
    try:
        params = slice_params(node, space.axis)
    except ValueError as exc:
        return blocked(str(exc))
    if params is None:
        other = node.outputs[0] if kind == "in" else node.inputs[0]
        return Relation([Space(other, space.axis, space.path, space.width)], [Member(node, "through", path=space.path)])
    if kind == "out":
        return blocked("reaches a Slice of the channels from its output")
    if params[2] != 1:
        return blocked("strided Slice of the channels")
    if space.width is None:
        return blocked("Slice of channels of unknown width")
    step = WindowStep(node, 0, space.axis)
    return Relation([Space(node.outputs[0], space.axis, space.path + (step,), dim(node.outputs[0], space.axis))],
                    [Member(node, "slice", path=space.path, extra={"axis": space.axis})])


# --------------------------------------------------------------------------- reshape / flatten


def flatten_rule(node, space, port):
    if port[0] == "out":
        return blocked("reaches a Flatten from its output")
    r = rank(node.inputs[0])
    axis = norm_axis(attr(node, "axis", 1), r) if r is not None else None
    if axis is None or axis > space.axis:
        return blocked("Flatten merges the channels with other axes")
    factor = _static_product(node.inputs[0], space.axis + 1)
    if factor is None:
        return blocked("Flatten of a dynamic spatial size")
    if axis == space.axis:
        return _flattened(node, space, 1, factor)
    outer = _static_product(node.inputs[0], axis, stop=space.axis)
    if outer is None or space.width is None:
        return blocked("Flatten of a dynamic spatial size, or of channels of unknown width")
    return _flattened(node, space, 1, factor, outer=outer)


def _flattened(node, space, out_axis, factor, entry=None, outer=1):
    """Each channel becomes ``factor`` features; ``entry`` locates the target-shape constant to rewrite.
    With ``outer`` > 1 the channels come after the first axis flattened (channels-last, then flattened
    whole: Keras' and TensorFlow's layout): every one of the ``outer`` leading positions holds all of
    them, so a channel cut removes ``factor × outer`` features."""
    step = FlattenStep(node, factor, outer, space.width or 0)
    path = space.path + (step,) if factor * outer != 1 else space.path
    width = None if space.width is None else space.width * factor * outer
    member = Member(node, "reshape", path=space.path, extra={"entry": entry, "factor": factor * outer})
    return Relation([Space(node.outputs[0], out_axis, path, width)], [member])


def _static_product(value: ir.Value, start: int, stop: int | None = None) -> int | None:
    r = rank(value)
    total = 1
    for i in range(start, (r or 0) if stop is None else stop):
        d = dim(value, i)
        if d is None:
            return None
        total *= d
    return total


def reshape_rule(node, space, port):
    kind, index = port
    if kind == "in" and index != 0:
        return _shape_tensor_use(node)
    data, out = node.inputs[0], node.outputs[0]
    entries = shape_entries(node.inputs[1], data, (node, 1))
    if entries is None:
        return blocked("Reshape to a shape computed at run time")
    a = space.axis
    allowzero = attr(node, "allowzero", 0)
    entries = [("copy", i, None) if (e[0] == "const" and e[1] == 0 and not allowzero) else e for i, e in enumerate(entries)]
    if kind == "out":
        rel = _reshape_backward(node, space, entries)
        return (attention.reshape_backward(node, space, entries) or rel) if rel.block else rel
    if space.path and isinstance(space.path[-1], HeadStep):
        return attention.reshape_forward(node, space, entries)
    width = space.width
    if width is None or a >= len(entries):  # unknown width, or the channels merged with axes before them
        flat = _reshape_flat_after(node, space, entries) if width is not None else None
        return flat or attention.reshape_forward(node, space, entries) or blocked(
            "Reshape of channels of unknown width" if width is None else "Reshape that moves the channels (cannot map)")
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
    return attention.reshape_forward(node, space, entries) or blocked("Reshape that moves the channels (cannot map)")


def _reshape_flat_after(node, space, entries) -> Relation | None:
    """A Reshape that flattens channels-last data from an axis before the channels to the last into one
    feature axis (``[N, H, W, C] → [N, H·W·C]``, or ``[0, -1]``), as ``_flattened`` with ``outer``;
    None otherwise."""
    data, a, k = node.inputs[0], space.axis, len(entries) - 1
    outer = _static_product(data, k, stop=a) if 0 <= k < a else None
    trailing = _static_product(data, a + 1)
    if outer is None or trailing is None or not all(_keeps(e, i, data) for i, e in enumerate(entries[:k])):
        return None
    last = entries[k]
    if last[0] != "const" or last[1] not in (-1, space.width * trailing * outer):
        return None
    return _flattened(node, space, k, trailing, entry=last[2] if last[1] != -1 else None, outer=outer)


def _reshape_backward(node, space, entries):
    a = space.axis
    data = node.inputs[0]
    if a < len(entries) and all(_keeps(e, i, data) for i, e in enumerate(entries[:a])) \
            and ((entries[a][0] == "copy" and entries[a][1] == a) or
                 (entries[a][0] == "const" and entries[a][1] == space.width and dim(data, a) == space.width)):
        extra = {"entry": entries[a][2], "factor": 1} if entries[a][0] == "const" else {}
        role = "reshape" if extra else "through"
        return Relation([Space(data, a, space.path, space.width)], [Member(node, role, path=space.path, extra=extra)])
    return blocked("reaches a Reshape from its output")


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
    return blocked(f"channel tensor used as the shape of {node.op_type}")


# --------------------------------------------------------------------------- Shape reads


def shape_rule(node, space, port):
    """A Shape read is safe when the channel count it exposes goes nowhere, or only back into a
    Reshape of the same tensor at the same position (``x.reshape(x.shape[0], x.shape[1], -1)``)."""
    r = rank(node.inputs[0])
    if r is None:
        return blocked("Shape of a tensor of unknown rank")
    idx = list(range(r))[slice(attr(node, "start", 0), attr(node, "end", r))]
    if space.axis not in idx:
        return Relation()
    reason = _follow_shape(node.outputs[0], idx.index(space.axis), space, 0)
    return blocked(reason) if reason else Relation()


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
