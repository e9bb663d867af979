"""How a group's channel index reaches a tensor that is not the group's own channel axis.

A group has ``C`` channels, numbered as its producers' output channels. Most tensors of the
group carry exactly those channels on one axis; some see them through a window:

- ``Concat`` along the channels puts them at an offset in a wider tensor;
- ``Split``/``Slice`` along the channels passes on a sub-range of them;
- ``Flatten``/``Reshape`` into a fully-connected layer spreads channel ``c`` over the block
  ``[c·k, (c+1)·k)`` of features (``k`` = the static spatial size).

A path is the tuple of these steps from the group to a tensor. ``map_path`` turns group channel
indices into (group index, position) pairs on that tensor, reading offsets and sizes from the
graph as it is *now*, so that groups cut one after another stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp.passes.prune.structured.prepare import attr, const, dim


@dataclass(frozen=True, eq=False)
class ConcatStep:
    """Input ``index`` of a Concat along ``axis``: positions move by the widths of the inputs before it."""

    node: ir.Node
    index: int
    axis: int

    def offset(self) -> int:
        total = 0
        for value in self.node.inputs[: self.index]:
            width = dim(value, self.axis)
            if width is None:
                raise ValueError(f"{self.node.name}: Concat input {value.name} has no static width")
            total += width
        return total

    def map(self, g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return g, p + self.offset()

    def key(self):
        return ("concat", id(self.node), self.index)


@dataclass(frozen=True, eq=False)
class WindowStep:
    """Output ``index`` of a Split (or the output of a Slice) along ``axis``: a sub-range."""

    node: ir.Node
    index: int
    axis: int

    def window(self) -> tuple[int, int]:
        if self.node.op_type == "Split":
            sizes = split_sizes(self.node, self.axis)
            start = int(sum(sizes[: self.index]))
            return start, start + int(sizes[self.index])
        return slice_window(self.node, self.axis)

    def map(self, g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.window()
        keep = (p >= start) & (p < stop)
        return g[keep], p[keep] - start

    def key(self):
        return ("window", id(self.node), self.index)


@dataclass(frozen=True, eq=False)
class FlattenStep:
    """Channels flattened into a feature axis, ``factor`` trailing positions each; with ``outer`` > 1 the
    channels are not the first axis flattened (a channels-last ``[N, H, W, C]`` flattened whole, as
    Keras and TensorFlow exports do), and channel ``c`` of the ``width`` lands at ``o·width·factor + c·factor + i``
    for every leading position ``o``."""

    node: ir.Node
    factor: int
    outer: int = 1
    width: int = 0  # the channels' axis size: the stride of the leading positions (``outer`` > 1 only)

    def map(self, g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.factor
        g, p = np.repeat(g, k), (p[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        if self.outer == 1:
            return g, p
        leading = np.arange(self.outer)[:, None] * (self.width * k)
        return np.tile(g, self.outer), (leading + p[None, :]).reshape(-1)

    def key(self):
        return ("flatten", id(self.node), self.factor, self.outer)


@dataclass(frozen=True, eq=False)
class HeadStep:
    """A head-split Reshape (``[b, s, H·d] → [b, s, H, d]``): channel ``c`` lands in head ``c // d``.

    Many channels share one position, so a group that crosses it can only cut whole heads: the
    group ties every channel of a head together (``ChannelGroup.units``)."""

    node: ir.Node
    size: int

    def map(self, g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return g, p // self.size

    def key(self):
        return ("head", id(self.node), self.size)


Step = ConcatStep | WindowStep | FlattenStep | HeadStep
Path = tuple[Step, ...]


def map_path(path: Path, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group index, position) pairs, in order, for the group ``indices`` seen through ``path``."""
    g = np.asarray(indices, dtype=np.int64)
    p = g.copy()
    for step in path:
        g, p = step.map(g, p)
    return g, p


def path_key(path: Path) -> tuple:
    return tuple(step.key() for step in path)


def covered(path: Path, channels: int) -> tuple[int, int]:
    """The range of group channels that reach the end of ``path`` (all of them without windows)."""
    g, _ = map_path(path, np.arange(channels))
    return (int(g.min()), int(g.max()) + 1) if g.size else (0, 0)


def offset_of(path: Path) -> int | None:
    """The Concat offset where a path enters a wider tensor (None when it has no Concat)."""
    steps = [s for s in path if isinstance(s, ConcatStep)]
    if not steps:
        return None
    try:
        return sum(s.offset() for s in steps)
    except ValueError:
        return None


# --------------------------------------------------------------------------- split / slice geometry


def split_sizes(node: ir.Node, axis: int) -> list[int]:
    """The sizes of a Split's outputs, from its input, its attribute, or an even division."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const(node.inputs[1])
        if arr is None:
            raise ValueError(f"{node.name}: Split sizes are computed at run time")
        return [int(x) for x in arr.reshape(-1)]
    if "split" in node.attributes:
        return [int(x) for x in attr(node, "split")]
    total = dim(node.inputs[0], axis)
    parts = len(node.outputs)
    if total is None:
        raise ValueError(f"{node.name}: Split of a dynamic width")
    base = -(-total // parts)  # ceil, as in opset 18's num_outputs rule
    sizes = [base] * (parts - 1) + [total - base * (parts - 1)]
    return sizes


def slice_params(node: ir.Node, axis: int) -> tuple[int, int, int] | None:
    """(start, end, step) of a Slice on ``axis`` (as written, not clamped), None when it does not slice it."""
    rank_in = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    starts, ends = const(node.inputs[1]), const(node.inputs[2])
    axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) \
            or (len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
        raise ValueError(f"{node.name}: Slice bounds are computed at run time")
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes.reshape(-1)]
    if rank_in is not None:
        axes = [a + rank_in if a < 0 else a for a in axes]
    if axis not in axes:
        return None
    i = axes.index(axis)
    step = 1 if steps is None else int(steps.reshape(-1)[i])
    return int(starts.reshape(-1)[i]), int(ends.reshape(-1)[i]), step


def slice_axis_index(node: ir.Node, axis: int) -> int:
    """Which entry of a Slice's starts/ends is about ``axis``."""
    n = len(const(node.inputs[1]).reshape(-1))
    axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if axes is None:
        return list(range(n)).index(axis)
    rank_in = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    return [a + rank_in if a < 0 else a for a in axes.reshape(-1).tolist()].index(axis)


def slice_window(node: ir.Node, axis: int) -> tuple[int, int]:
    params = slice_params(node, axis)
    width = dim(node.inputs[0], axis)
    if width is None:
        raise ValueError(f"{node.name}: Slice of a dynamic width")
    if params is None:
        return 0, width
    start, end, step = params
    if step != 1:
        raise ValueError(f"{node.name}: strided Slice of the channels")
    start, stop, _ = slice(start, end).indices(width)
    return start, max(start, stop)
