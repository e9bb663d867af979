"""Transformer layouts: features on the last axis through batch/sequence reshapes, and attention heads.

Exporters write a linear layer of a ``[batch, seq, hidden]`` tensor either as a MatMul with a
2-D weight or, as GPT-2's Conv1D does, as ``Reshape([-1, hidden]) → Gemm → Reshape([b, s, n])``.
Such a Reshape only merges or splits the leading (batch, sequence) axes: when the last axis has
the same size on both sides, element ``(…, c)`` stays at ``(…', c)``, so the channels are the
last axis of both tensors whatever the leading sizes are (``reshape_last_axis``).

Multi-head attention splits a projection ``[b, s, H·d]`` into heads ``[b, s, H, d]``, moves the
heads to a batch axis of the score (``Q·Kᵀ``) and context (``P·V``) MatMuls, and merges them back
into ``[b, s, H·d]`` before the output projection. A group crossing the split carries its channels
on the heads axis through a ``HeadStep`` (channel ``c`` is in head ``c // d``); the batched MatMuls
pass the heads axis to their other operand (so Q, K and V join one group) and to their output; the
merge drops the step again. Only whole heads can be cut (``ChannelGroup.units``), and the Reshape
constants that spell the head count or the merged width are rewritten by the surgery.
"""

from __future__ import annotations

import onnx_ir as ir

from mcomp.passes.prune.structured.paths import HeadStep
from mcomp.passes.prune.structured.prepare import const, dim, rank
from mcomp.passes.prune.structured.spaces import Member, Relation, Space, blocked


def _const(entry, value: int | None = None) -> bool:
    return entry[0] == "const" and (value is None or entry[1] == value)


def _entry_member(node: ir.Node, entry, path) -> Member:
    """The Reshape (or the shape constant it reads) is rewritten only where the entry is a constant
    other than -1 (an inferred entry follows by itself)."""
    if _const(entry) and entry[1] != -1:
        return Member(node, "reshape", path=path, extra={"entry": entry[2], "factor": 1})
    return Member(node, "through", path=path)


def reshape_forward(node: ir.Node, space: Space, entries: list[tuple]) -> Relation | None:
    """Channels entering a Reshape on its data input: merged heads, kept last axis, or a head
    split; None when none of these applies (the caller's own rules decide)."""
    data, out = node.inputs[0], node.outputs[0]
    r_in, a = rank(data), space.axis
    if r_in is None or not entries:
        return None
    if space.path and isinstance(space.path[-1], HeadStep):
        return _merge_heads(node, space, entries)
    if a != r_in - 1 or space.width is None:
        return None
    last = entries[-1]
    if _const(last, space.width) or last == ("copy", a, None):
        return Relation([Space(out, len(entries) - 1, space.path, space.width)],
                        [_entry_member(node, last, space.path)])
    # head split: [..., H·d] → [..., H, d]
    if len(entries) >= 2 and _const(last) and 1 < last[1] < space.width and space.width % last[1] == 0:
        d, heads = last[1], space.width // last[1]
        entry = entries[-2]
        if not (_const(entry, heads) or _const(entry, -1)):
            return None
        step = HeadStep(node, d)
        path = space.path + (step,)
        return Relation([Space(out, len(entries) - 2, path, heads)], [_entry_member(node, entry, path)])
    return None


def _merge_heads(node: ir.Node, space: Space, entries: list[tuple]) -> Relation:
    """``[..., H, d] → [..., H·d]``: the heads axis and the ``d`` after it become the last axis."""
    data, out = node.inputs[0], node.outputs[0]
    step, a = space.path[-1], space.axis
    r_in = rank(data)
    if a != r_in - 2 or dim(data, r_in - 1) != step.size or space.width is None:
        return blocked("Reshape of attention heads that does not merge them into the last axis")
    width = space.width * step.size
    last = entries[-1]
    if not (_const(last, width) or (_const(last, -1) and len(entries) == a + 1)):
        return blocked("Reshape of attention heads that does not merge them into the last axis")
    path = space.path[:-1]
    return Relation([Space(out, len(entries) - 1, path, width)], [_entry_member(node, last, path)])


def reshape_backward(node: ir.Node, space: Space, entries: list[tuple]) -> Relation | None:
    """Channels reaching a Reshape from its output: the kept last axis, or the heads of a split
    (K and V met from the score and context MatMuls)."""
    data, out = node.inputs[0], node.outputs[0]
    r_in, r_out, a = rank(data), rank(out) or len(entries), space.axis
    if r_in is None or space.width is None or len(entries) != r_out:
        return None
    last = entries[-1]
    if a == r_out - 1 and not (space.path and isinstance(space.path[-1], HeadStep)):
        if dim(data, r_in - 1) == space.width and (_const(last, space.width) or last == ("copy", r_in - 1, None)):
            return Relation([Space(data, r_in - 1, space.path, space.width)], [_entry_member(node, last, space.path)])
        return None
    if a == r_out - 2 and space.path and isinstance(space.path[-1], HeadStep):
        d = space.path[-1].size
        width = space.width * d
        if _const(last, d) and dim(data, r_in - 1) == width:
            return Relation([Space(data, r_in - 1, space.path[:-1], width)],
                            [_entry_member(node, entries[-2], space.path)])
    return None


def batched_matmul(node: ir.Node, space: Space, port: tuple[str, int]) -> Relation:
    """``A @ B`` of two computed tensors (attention scores ``Q·Kᵀ``, context ``P·V``): a batch axis
    (the heads) is shared by both operands and the output; A's rows and B's columns pass to the
    output; the contracted axis cannot lose channels."""
    kind, index = port
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ro = rank(a), rank(b), rank(out)
    if const(a) is not None or const(b) is not None:
        return blocked("MatMul with a constant first operand")
    if ra is None or rb is None or ro is None or min(ra, rb) < 2:
        return blocked("MatMul of two computed tensors of unknown rank")
    if kind == "in":
        r = ra if index == 0 else rb
        if (index == 0 and space.axis == r - 1) or (index == 1 and space.axis == r - 2):
            return blocked("MatMul of two computed tensors contracts over the channels")
        oax = space.axis + (ro - r)
    else:
        oax = space.axis
    rel = Relation([], [Member(node, "through", path=space.path)])
    if kind == "in":
        rel.spaces.append(Space(out, oax, space.path, space.width))
    if oax < ro - 2:
        for j, (value, r) in enumerate(((a, ra), (b, rb))):
            ax = oax - (ro - r)
            if (kind == "in" and j == index) or ax < 0 or dim(value, ax) == 1:
                continue
            rel.spaces.append(Space(value, ax, space.path, space.width))
    elif oax == ro - 2 and not (kind == "in" and index == 0):
        rel.spaces.append(Space(a, ra - 2, space.path, space.width))
    elif oax == ro - 1 and not (kind == "in" and index == 1):
        rel.spaces.append(Space(b, rb - 1, space.path, space.width))
    return rel
