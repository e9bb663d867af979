"""The vocabulary of the group search: tensors of a group, the nodes cut with it, and what a rule answers."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from mcomp.passes.prune.structured.paths import Path, offset_of
from mcomp.passes.prune.structured.prepare import const, rank


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
    per-channel constant: BatchNorm parameters, a bias added with ``Add``), ``table`` (a constant
    read on its columns by ``Gather`` or through ``Transpose``: an embedding, a tied LM head, in
    ``hidden``), ``through`` (an
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

    @property
    def offset(self) -> int | None:
        """Where the group's channels start in this member's tensor, when a Concat put them at an offset."""
        return offset_of(self.path)


@dataclass
class Relation:
    spaces: list[Space] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    block: str | None = None


def blocked(reason: str) -> Relation:
    return Relation(block=reason)


def name_of(node: ir.Node) -> str:
    return node.name or f"{node.op_type}"


def tensor_member(node: ir.Node, role: str, index: int, axis: int, path: Path, **extra) -> Member:
    return Member(node, role, node.inputs[index].name, axis, index, path, dict(extra))


def pass_through(node: ir.Node, space: Space, port, *, axis_in=None, axis_out=None) -> Relation:
    """Input 0 and output 0 carry the same channels (on ``axis_in`` / ``axis_out`` when they move)."""
    if port[0] == "in":
        other = Space(node.outputs[0], space.axis if axis_out is None else axis_out, space.path, space.width)
    else:
        other = Space(node.inputs[0], space.axis if axis_in is None else axis_in, space.path, space.width)
    return Relation([other], [Member(node, "through", path=space.path)])


def unary(node: ir.Node, space: Space, port, *, axis_in=None, axis_out=None) -> Relation:
    """Channels pass from input 0 to output 0 unchanged (the other inputs must be scalars)."""
    kind, index = port
    for j, u in enumerate(node.inputs[1:], start=1):
        if u is not None and rank(u) not in (0, None) and not _all_ones(u):
            if const(u) is None or u.const_value.size != 1:
                return blocked(f"{node.op_type} with a non-scalar input {j}")
    if kind == "in" and index != 0:
        return blocked(f"channel tensor used as input {index} of {node.op_type}")
    extra_outputs = [o for o in node.outputs[1:] if o.uses() or o.is_graph_output()]
    if extra_outputs and node.op_type not in ("Dropout",):
        return blocked(f"{node.op_type} output {extra_outputs[0].name} is used")
    if kind == "out" and index != 0:
        return blocked(f"{node.op_type} output {index}")
    return pass_through(node, space, port, axis_in=axis_in, axis_out=axis_out)


def _all_ones(value: ir.Value) -> bool:
    shape = value.const_value.shape if value.const_value is not None else value.shape
    return shape is not None and all(d == 1 for d in shape)
