"""The hidden (residual) width of a transformer: one group through every layer, opt-in.

A transformer's residual stream carries the same ``hidden`` channels from the embeddings to the
head: every residual ``Add`` ties the layers together, and every block normalizes it with a
``LayerNormalization`` over exactly those channels. The usual rules stop there (a LayerNorm over
the channels computes its mean and variance from all of them), so the width cannot change. With
``find_groups(model, hidden=True)`` these rules come first:

- ``LayerNormalization`` over the channel axis alone lets them through, its scale and bias
  sliced. The mean and variance are then taken over the kept channels only, so **the outputs
  change even for the kept channels** (the ``hidden`` group's note says so);
- ``Gather`` of a constant table ``[rows, hidden]`` (word, position and token-type embeddings)
  slices the table's columns (member role ``table``); a Gather of a computed tensor along another
  axis (ViT's class token ``x[:, 0]``) passes the channels on;
- ``MatMul`` whose weight is ``Transpose(table)``: GPT-2's LM head tied to its embedding reads
  the same initializer as the Gather, so both slice it along the hidden axis (``table`` too);
- ``Reshape`` that merges the axes after the channels with the batch inferred (ViT's patches
  ``[b, hidden, 8, 8] → [-1, hidden, 64]``) keeps them on their axis, its ``hidden`` entry rewritten;
- ``Expand`` of a constant (ViT's class token ``[1, 1, hidden]`` expanded over the batch) slices
  the constant, where the expanded shape keeps the channel axis as it is.

A group that reaches a graph output stays whole (BERT's ``last_hidden_state``: the model's output
would change shape); one read by a classifier or LM head is cut.
"""

from __future__ import annotations

import onnx_ir as ir

from mcomp.passes.prune.structured.layout import norm_axis, shape_entries
from mcomp.passes.prune.structured.paths import HeadStep
from mcomp.passes.prune.structured.prepare import attr, const, dim, rank
from mcomp.passes.prune.structured.spaces import Member, Relation, Space, blocked, pass_through, tensor_member

NOTE = ("hidden width cut: LayerNormalization now takes its mean and variance over the kept channels only, "
        "so its outputs change even for the channels that stay (fine-tune or distill afterwards)")


def relate_hidden(node: ir.Node, space: Space, port: tuple[str, int]) -> Relation | None:
    """The rule of hidden mode for ``node``, or None where the usual rule (``ops.relate``) decides."""
    if node.domain not in ("", "ai.onnx"):
        return None
    rule = _RULES.get(node.op_type)
    return rule(node, space, port) if rule is not None else None


def is_hidden(group) -> bool:
    """A group that crosses a LayerNormalization over its channels: the residual width."""
    return any(m.node.op_type == "LayerNormalization" and m.role == "param" for m in group.members)


def _layernorm(node, space, port):
    r = rank(node.inputs[0])
    if r is None:
        return blocked("LayerNormalization of unknown rank")
    axis = norm_axis(attr(node, "axis", -1), r)
    if axis != r - 1 or space.axis != axis:
        return None  # not over the channels alone: the usual rule says why
    if port[0] == "in" and port[1] != 0:
        return blocked("channel tensor used as a LayerNormalization parameter")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return blocked("LayerNormalization statistics are used")
    rel = pass_through(node, space, port)
    for i in (1, 2):
        if i < len(node.inputs) and node.inputs[i] is not None:
            param = const(node.inputs[i])
            if param is None:
                return blocked("LayerNormalization with computed scale or bias")
            if param.ndim == 0 or param.shape[-1] == 1:
                continue  # broadcast over the channels: nothing to slice
            rel.members.append(tensor_member(node, "param", i, param.ndim - 1, space.path))
    return rel


def _gather(node, space, port):
    kind, index = port
    data, indices = node.inputs[0], node.inputs[1]
    if kind == "in" and index == 1:
        return blocked("channel tensor used as Gather indices")
    r_data, r_idx = rank(data), rank(indices)
    if r_data is None or r_idx is None:
        return blocked("Gather of unknown rank")
    axis = norm_axis(attr(node, "axis", 0), r_data)
    table = const(data)
    if table is not None:
        if kind != "out" or table.ndim != 2 or axis != 0 or space.axis != r_idx:
            return blocked("Gather of a constant along its channels")
        return Relation([], [tensor_member(node, "table", 0, 1, space.path)])
    if kind == "in":
        if space.axis == axis:
            return blocked("Gather picks channels")
        out_axis = space.axis if space.axis < axis else space.axis - 1 + r_idx
        return pass_through(node, space, port, axis_out=out_axis)
    if axis <= space.axis < axis + r_idx:
        return blocked("Gather's indices carry the channels")
    in_axis = space.axis if space.axis < axis else space.axis + 1 - r_idx
    return pass_through(node, space, port, axis_in=in_axis)


def _tied_matmul(node, space, port):
    """``x @ Transpose(table)``: a linear layer whose weight is an embedding table read transposed."""
    weight = node.inputs[1]
    source = weight.producer() if weight is not None else None
    if source is None or source.op_type != "Transpose" or const(source.inputs[0]) is None:
        return None
    table = const(source.inputs[0])
    if table.ndim != 2 or list(attr(source, "perm", [1, 0])) != [1, 0]:
        return None
    if port != ("in", 0) or space.axis != (rank(node.inputs[0]) or 0) - 1:
        return blocked("MatMul with a transposed table carries the channels elsewhere")
    if len(weight.uses()) != 1:
        return blocked("transposed table read by several nodes")
    return Relation([], [Member(node, "through", path=space.path),
                         tensor_member(source, "table", 0, 1, space.path)])


def _reshape(node, space, port):
    """``[b, C, h, w] → [-1, C, h·w]``: the prefix is inferred (one -1), the channel entry is the
    width, the entries after it multiply to the input's trailing size; None: the usual rule."""
    kind, index = port
    data, out = node.inputs[0], node.outputs[0]
    if (kind == "in" and index != 0) or (space.path and isinstance(space.path[-1], HeadStep)):
        return None
    entries = shape_entries(node.inputs[1], data, (node, 1))
    a, width = space.axis, space.width
    if entries is None or width is None or a >= len(entries) or rank(data) is None or a >= rank(data):
        return None
    if not all(e[0] == "const" for e in entries) or [e[1] for e in entries[:a]].count(-1) != 1 \
            or any(e[1] < 0 for e in entries[a:]) or entries[a][1] != width or dim(data, a) != width:
        return None
    trailing = [dim(data, i) for i in range(a + 1, rank(data))]
    if any(d is None for d in trailing) or _product(trailing) != _product(e[1] for e in entries[a + 1:]):
        return None
    if any(e[1] != dim(data, i) for i, e in enumerate(entries[:a]) if e[1] != -1):
        return None
    other = Space(out if kind == "in" else data, a, space.path, width)
    return Relation([other], [Member(node, "reshape", path=space.path, extra={"entry": entries[a][2], "factor": 1})])


def _product(values) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _expand(node, space, port):
    kind, index = port
    data, out = node.inputs[0], node.outputs[0]
    if kind == "in" and index != 0:
        return blocked("channel tensor used as an Expand shape")
    r_data, r_out = rank(data), rank(out)
    if r_data is None or r_out is None:
        return blocked("Expand of unknown rank")
    out_axis = space.axis if kind == "out" else space.axis + r_out - r_data
    data_axis = out_axis - (r_out - r_data)
    if data_axis < 0 or dim(data, data_axis) != space.width:
        return blocked("Expand broadcasts the channels")
    if _shape_entry(node, out_axis) != 1:
        return blocked("Expand with a shape that names the channel count")
    rel = Relation([], [Member(node, "through", path=space.path)])
    if kind == "in":
        rel.spaces.append(Space(out, out_axis, space.path, space.width))
    elif const(data) is not None:
        rel.members.append(tensor_member(node, "param", 0, data_axis, space.path))
    else:
        rel.spaces.append(Space(data, data_axis, space.path, space.width))
    return rel


def _shape_entry(node: ir.Node, out_axis: int) -> int | None:
    """Expand's target entry for ``out_axis`` (1 keeps the input's size), from a constant shape or a
    Concat of constant pieces; None when it is computed."""
    shape = node.inputs[1]
    array = const(shape)
    if array is not None:
        flat = array.reshape(-1)
        i = out_axis - ((rank(node.outputs[0]) or len(flat)) - len(flat))
        return int(flat[i]) if 0 <= i < len(flat) else 1
    source = shape.producer()
    if source is None or source.op_type != "Concat":
        return None
    pieces = []
    for value in source.inputs:
        width = dim(value, 0)
        if width is None:
            return None
        piece = const(value)
        pieces += [None] * width if piece is None else [int(x) for x in piece.reshape(-1)]
    i = out_axis - ((rank(node.outputs[0]) or len(pieces)) - len(pieces))
    return pieces[i] if 0 <= i < len(pieces) else 1


_RULES = {
    "LayerNormalization": _layernorm,
    "Gather": _gather,
    "MatMul": _tied_matmul,
    "Expand": _expand,
    "Reshape": _reshape,
}
