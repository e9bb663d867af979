"""Cutting a group: every tensor of it shrinks, so the pruned model is really smaller.

``remove_channels(model, group, keep)`` keeps the group's channels ``keep`` (indices into its
``channels``) and removes the others from every member: producer weights and biases (axis 0),
BatchNorm parameters, per-channel constants, depthwise weights and their ``group`` attribute,
consumer weights on their input axis, Concat offsets (implicitly, by the widths before them),
Split sizes, Slice bounds, Reshape targets and Resize sizes. Everything is planned on the graph
as it is before any change, then applied; shapes are recomputed at the end. Graph inputs and
outputs are never touched (a group that reaches them is not prunable).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from mcomp.passes.prune.structured.groups import ChannelGroup
from mcomp.passes.prune.structured.paths import (map_path, slice_axis_index, slice_params, slice_window,
                                                  split_sizes)
from mcomp.passes.prune.structured.prepare import attr, const, dim, infer_shapes

TENSOR_ROLES = frozenset({"producer", "consumer", "depthwise", "param", "table"})


def remove_channels(model: ir.Model, group: ChannelGroup, keep: np.ndarray, *, infer: bool = True) -> int:
    """Keeps channels ``keep`` of ``group`` and removes the rest, in place; returns how many went."""
    if not group.prunable:
        raise ValueError(f"group {group.id} is not prunable: {group.reason}")
    keep = np.unique(np.asarray(keep, dtype=np.int64))
    if keep.size == 0 or keep[0] < 0 or keep[-1] >= group.channels:
        raise ValueError(f"group {group.id}: keep must be 1..{group.channels} indices in [0, {group.channels})")
    removed = np.setdiff1d(np.arange(group.channels), keep)
    if removed.size == 0:
        return 0
    plan = _Plan(model)
    for member in group.members:
        plan.add(member, map_path(member.path, removed)[1])
    widths: dict[tuple[int, int], tuple[ir.Value, int, set[int]]] = {}
    for s in group.spaces:  # a tensor met on two paths (tied channels) shrinks once
        widths.setdefault((id(s.value), s.axis), (s.value, s.axis, set()))[2].update(
            map_path(s.path, removed)[1].tolist())
    plan.apply()
    for value, axis, gone in widths.values():
        _shrink_dim(value, axis, len(gone))
    group.channels = int(keep.size)
    if infer:
        infer_shapes(model)
    return int(removed.size)


class _Plan:
    """Every change, computed before the first one is made (offsets and sizes read the old graph)."""

    def __init__(self, model: ir.Model):
        self.model = model
        graph = model.graph
        self.names = {v.name for n in graph for v in n.outputs} | set(graph.initializers) | {v.name for v in graph.inputs}
        self.cuts: dict[tuple[int, int, int], tuple[ir.Node, int, int, set[int]]] = {}
        self.entries: dict[tuple[int, int], tuple[ir.Node, int, dict[int, int]]] = {}
        self.entry_cuts: dict[tuple[int, int, int], tuple[ir.Node, int, int, int, set[int]]] = {}
        self.splits: dict[int, tuple[ir.Node, int, set[int]]] = {}
        self.edits: list = []

    def add(self, member, positions: np.ndarray) -> None:
        node, role = member.node, member.role
        if role in TENSOR_ROLES:
            key = (id(node), member.input_index, member.axis)  # x + conv(x): one weight, cut on both axes
            cut = self.cuts.setdefault(key, (node, member.input_index, member.axis, set()))
            cut[3].update(int(p) for p in positions)
            if role == "depthwise" and member.input_index == 1:
                groups = attr(node, "group", 1) - len(positions)
                self.edits.append(lambda n=node, g=groups: n.attributes.__setitem__("group", ir.AttrInt64("group", g)))
        elif role == "split":  # one Split met on several paths: its sizes are set once, from all of them
            self.splits.setdefault(id(node), (node, member.extra["axis"], set()))[2].update(positions.tolist())
        elif role == "slice":
            self._slice(node, member.extra["axis"], positions)
        elif role == "reshape" and member.extra.get("entry") is not None:
            user, index, element = member.extra["entry"]
            self._entry_cut(user, index, element, member.extra.get("factor", 1), positions)
        elif role == "resize":
            self._entry_cut(node, member.input_index, member.extra["position"], 1, positions)

    def _entry_cut(self, node: ir.Node, index: int, element: int, factor: int, positions: np.ndarray) -> None:
        """A shape entry loses ``factor`` per removed position; positions met on several paths (the
        heads of a Reshape that K reaches from Q·Kᵀ and from its projection) count once."""
        key = (id(node), index, element)
        self.entry_cuts.setdefault(key, (node, index, element, factor, set()))[4].update(positions.tolist())

    def _entry(self, node: ir.Node, index: int, element: int, delta: int) -> None:
        _, _, deltas = self.entries.setdefault((id(node), index), (node, index, defaultdict(int)))
        deltas[element] += delta

    def _split(self, node: ir.Node, axis: int, positions: np.ndarray) -> None:
        sizes = split_sizes(node, axis)
        starts = np.cumsum([0, *sizes])
        new = [int(size - np.count_nonzero((positions >= lo) & (positions < lo + size)))
               for size, lo in zip(sizes, starts)]
        self.edits.append(lambda: _set_split(self.model, node, new, self.names))

    def _slice(self, node: ir.Node, axis: int, positions: np.ndarray) -> None:
        start, stop = slice_window(node, axis)
        i = slice_axis_index(node, axis)
        self._set_element(node, 1, i, start - int(np.count_nonzero(positions < start)))
        if slice_params(node, axis)[1] < dim(node.inputs[0], axis):  # "to the end" stays "to the end"
            self._set_element(node, 2, i, stop - int(np.count_nonzero(positions < stop)))

    def _set_element(self, node: ir.Node, index: int, element: int, value: int) -> None:
        old = int(const(node.inputs[index]).reshape(-1)[element])
        self._entry(node, index, element, value - old)

    def apply(self) -> None:
        for node, index, element, factor, positions in self.entry_cuts.values():
            self._entry(node, index, element, -len(positions) * factor)
        for node, axis, positions in self.splits.values():
            self._split(node, axis, np.array(sorted(positions), dtype=np.int64))
        for node, index, axis, positions in self.cuts.values():
            array = const(node.inputs[index])
            set_input(self.model, node, index, without(array, positions, axis), self.names)
        for node, index, deltas in self.entries.values():
            array = const(node.inputs[index]).copy()
            flat = array.reshape(-1)
            for element, delta in deltas.items():
                flat[element] += delta
            set_input(self.model, node, index, flat.reshape(array.shape), self.names)
        for edit in self.edits:
            edit()


def without(array: np.ndarray, positions, axis: int) -> np.ndarray:
    """``array`` without the slices at ``positions`` along ``axis``, C-contiguous. Not ``np.delete``: along
    any axis but the first it returns a Fortran-ordered array, slowly (an 8192×8192 float weight's columns:
    0.6 s, then 0.6 s more to make it C-ordered for the tensor); taking the kept slices is 0.04 s."""
    kept = np.ones(array.shape[axis], dtype=bool)
    kept[np.asarray(sorted(positions), dtype=np.int64)] = False
    return np.take(array, np.flatnonzero(kept), axis=axis)


def set_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray, names: set[str] | None = None) -> None:
    """Gives ``node`` a new constant at input ``index``; edited in place when nothing else reads it."""
    graph = model.graph
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    old = node.inputs[index]
    array = np.ascontiguousarray(array)
    base = old.name if old is not None and old.name else f"{node.name or node.op_type}_{index}"
    # a table cut alike for each of its readers (GPT-2's embedding and tied LM head) stays one tensor
    twin = _pruned_twin(graph, base, array)
    if twin is None and old is not None and old.is_initializer() and len(old.uses()) == 1 \
            and not old.is_graph_output():
        old.const_value = ir.tensor(array, name=old.name)
        old.shape = ir.Shape(array.shape)
        return
    if twin is not None:
        node.replace_input_with(index, twin)
        _drop_if_unused(graph, old)
        return
    if names is None:
        names = {v.name for n in graph for v in n.outputs} | set(graph.initializers) | {v.name for v in graph.inputs}
    name = _fresh(names, f"{base}_pruned")
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    node.replace_input_with(index, value)
    _drop_if_unused(graph, old)


def _pruned_twin(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value | None:
    """An earlier cut of the same shared constant to the same values (exporters share one all-zero
    bias among many layers; each would otherwise get its own pruned copy)."""
    for name, value in graph.initializers.items():
        if name.startswith(f"{base}_pruned") and value.const_value is not None \
                and tuple(value.const_value.shape) == array.shape and value.const_value.dtype == ir.DataType.from_numpy(array.dtype) \
                and np.array_equal(value.const_value.numpy(), array):
            return value
    return None


def _drop_if_unused(graph: ir.Graph, old: ir.Value | None) -> None:
    if old is not None and old.is_initializer() and not old.uses() and not old.is_graph_output() \
            and not old.is_graph_input():
        graph.initializers.pop(old.name)


def _fresh(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def _set_split(model: ir.Model, node: ir.Node, sizes: list[int], names: set[str]) -> None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        set_input(model, node, 1, np.array(sizes, dtype=np.int64), names)
    elif "split" in node.attributes or _opset(model) < 13:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)
    else:
        node.attributes.pop("num_outputs", None)
        set_input(model, node, 1, np.array(sizes, dtype=np.int64), names)


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 21))


def _shrink_dim(value: ir.Value, axis: int, gone: int) -> None:
    shape = value.shape
    if shape is None or gone == 0 or axis >= len(shape):
        return
    dims = list(shape)
    if isinstance(dims[axis], int):
        dims[axis] -= gone
        value.shape = ir.Shape(dims)
