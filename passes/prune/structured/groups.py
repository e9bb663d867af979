"""What is coupled: channel groups found on the ONNX graph.

A group starts at a producer's output channels (a Conv's weight axis 0, a Gemm/MatMul's output
features, a ConvTranspose's weight axis 1) and follows them through every op that keeps them
apart (``ops.relate``), forwards to the consumers that read them as input channels and
backwards to every other producer whose channels must match (a residual ``Add``, the expand
Conv of a squeeze-and-excitation block). All of it is cut together, or not at all::

    >>> for g in find_groups(model): print(g.chain, g.reason or "")
    conv1.out => bn1 => relu1 => conv2.in

A group that reaches a graph input or output, an op without a rule, a Reshape it cannot map or
a node inside a subgraph is kept whole, and says why.

Channels that one tensor carries at the same position are tied (``ChannelGroup.units``) and cut
together: the channels of an attention head after its head-split Reshape, and GPT-2's Q, K and V
columns of one fused projection, met again through ``Q·Kᵀ`` (``attention``). Such a group is one
layer's attention (``label``), cut in whole heads.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mcomp.kernels.importance import rounded_keep
from mcomp.passes.prune.structured.hidden import is_hidden, relate_hidden
from mcomp.passes.prune.structured.ops import Member, Space, name_of, relate
from mcomp.passes.prune.structured.paths import HeadStep, WindowStep, covered, map_path, offset_of, path_key
from mcomp.passes.prune.structured.prepare import prepare
from mcomp.passes.prune.structured.producers import ProducerSpec, producer_spec

__all__ = ["ChannelGroup", "Member", "find_groups"]


@dataclass(eq=False)
class ChannelGroup:
    id: int
    channels: int
    members: list[Member] = field(default_factory=list)
    spaces: list[Space] = field(default_factory=list)
    prunable: bool = True
    reason: str | None = None  # why the group is kept whole (the first obstacle met)
    head_size: int | None = None  # channels per attention head, when the group crosses a head split
    label: str | None = None  # e.g. "layer 0 attention", printed before the chain
    parent: np.ndarray | None = field(default=None, repr=False)  # ties between channels (union-find)

    def tie(self, a: int, b: int) -> None:
        """Channels ``a`` and ``b`` land on the same position of some tensor: cut both or neither."""
        if self.parent is None:
            self.parent = np.arange(self.channels)
        ra, rb = self._root(a), self._root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = int(self.parent[i])
        return i

    @property
    def units(self) -> list[np.ndarray] | None:
        """The channel sets that are cut whole (an attention head of Q, K and V together), in order
        of their first channel; None when every channel stands alone."""
        if self.parent is None:
            return None
        roots = np.array([self._root(i) for i in range(self.channels)])
        return [np.flatnonzero(roots == r) for r in np.unique(roots)]

    @property
    def producers(self) -> list[ir.Node]:
        return _unique(m.node for m in self.members if m.role == "producer")

    @property
    def consumers(self) -> list[ir.Node]:
        return _unique(m.node for m in self.members if m.role == "consumer")

    @property
    def chain(self) -> str:
        """``conv1.out => bn1 => relu1 => conv2.in``: the group's nodes in the order they were met."""
        labels: list[str] = []
        for m in self.members:
            label = _label(m)
            if label not in labels:
                labels.append(label)
        chain = " => ".join(labels)
        return f"{self.label}: {chain}" if self.label else chain

    @property
    def key(self) -> str:
        """The group's stable name for ``group_rates``: its first producer's weight tensor (e.g.
        ``conv1.weight``). Integer ids follow graph order, which a re-export may change; weight
        names usually survive it, and a user can read them in any model viewer."""
        for m in self.members:
            if m.role == "producer" and m.tensor:
                return m.tensor
        producers = self.producers
        return name_of(producers[0]) if producers else f"group{self.id}"

    def units_kept(self, rate: float, round_to: int) -> int:
        """How many of ``units`` are kept at ``rate``: attention heads are not rounded (a head is
        already coarse); other tied units are rounded so that the channels stay near ``round_to``."""
        units = self.units or []
        step = 1 if self.head_size else max(1, round_to // max(1, self.channels // max(1, len(units))))
        return rounded_keep(len(units), rate, step)

    def kept(self, rate: float, round_to: int) -> int:
        """Channels ``driver.select`` keeps at ``rate``: whole units, or each segment's share rounded
        to ``round_to``."""
        units = self.units
        if units is not None:
            return sum(len(u) for u in units[:self.units_kept(rate, round_to)])
        return sum(rounded_keep(hi - lo, rate, round_to) for lo, hi in self.segments)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """Ranges of channels that Split/Slice hand to different tensors; each is cut by the same share."""
        bounds = {0, self.channels}
        for path in [s.path for s in self.spaces] + [m.path for m in self.members]:
            if any(isinstance(step, WindowStep) for step in path):
                lo, hi = covered(path, self.channels)
                bounds.update((lo, hi))
        edges = sorted(b for b in bounds if 0 <= b <= self.channels)
        return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]

    def block(self, reason: str) -> None:
        if self.prunable:
            self.prunable, self.reason = False, reason

    def describe(self) -> dict:
        return {"id": self.id, "channels": self.channels, "chain": self.chain, "prunable": self.prunable,
                "reason": self.reason}

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"whole: {self.reason}"
        return f"ChannelGroup(#{self.id}, {self.channels} ch, {self.chain} [{state}])"


def _unique(items):
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def _label(m: Member) -> str:
    name = name_of(m.node)
    if m.role == "producer":
        return f"{name}.out"
    if m.role == "consumer":
        return f"{name}.in"
    if m.role == "concat":
        off = offset_of(m.path)
        return f"{name}[+{off}]" if off else name
    if m.role == "reshape" and m.extra.get("factor", 1) > 1:
        return f"{name}(×{m.extra['factor']})"
    return name


def find_groups(model: ir.Model, *, prepared: bool = False, hidden: bool = False) -> list[ChannelGroup]:
    """Every channel group of the main graph, in graph order.

    Prepares the model in place first (``prepare``: constant weights become initializers,
    constant subgraphs are folded, shapes inferred) unless ``prepared``. With ``hidden`` the
    residual width of a transformer is one group too (``hidden``: through LayerNorm, embeddings,
    a tied LM head), labelled ``hidden``.
    """
    if not prepared:
        prepare(model)
    claimed: dict[int, ChannelGroup] = {}
    groups: list[ChannelGroup] = []
    for node in model.graph:
        spec = producer_spec(node)
        if spec is None or id(node) in claimed:
            continue
        if isinstance(spec, str):
            group = ChannelGroup(len(groups), _out_channels(node), [Member(node, "producer")])
            group.block(f"{name_of(node)}: {spec}")
        else:
            group = _explore(model, node, spec, len(groups), claimed, hidden)
        claimed[id(node)] = group
        groups.append(group)
    for layer, group in enumerate(g for g in groups if g.head_size):
        group.label = f"layer {layer} attention"
    for group in groups:
        if hidden and is_hidden(group):
            group.label = "hidden"
    return groups


def _out_channels(node: ir.Node) -> int:
    shape = node.outputs[0].shape
    d = shape[1] if shape is not None and len(shape) > 1 else None
    return d if isinstance(d, int) else 0


class _Search:
    def __init__(self, model: ir.Model, group: ChannelGroup, claimed: dict[int, ChannelGroup], hidden: bool = False):
        self.model, self.group, self.claimed, self.hidden = model, group, claimed, hidden
        self.spaces: dict[int, list[tuple[Space, set[int]]]] = {}
        self.ports: set = set()
        self.member_keys: set = set()
        self.queue: deque[Space] = deque()

    def add_space(self, space: Space) -> None:
        """A tensor may carry the group's channels more than once (a Concat of two Split pieces of
        it), at disjoint positions of one axis; overlapping positions would tie channels together."""
        known = self.spaces.setdefault(id(space.value), [])
        key = path_key(space.path)
        if any(path_key(s.path) == key and s.axis == space.axis for s, _ in known):
            return
        try:
            g, p = map_path(space.path, np.arange(self.group.channels))
        except ValueError as exc:
            self.group.block(str(exc))
            return
        positions = set(p.tolist())
        if any(s.axis != space.axis for s, _ in known):
            self.group.block(f"{space.value.name} carries the channels on two axes")
            return
        heads = [step for step in space.path if isinstance(step, HeadStep)]
        if heads:
            self.group.head_size = heads[-1].size
        taken = set().union(*(t for _, t in known))
        if positions & taken or len(positions) < len(p):
            self._tie([s for s, _ in known], g, p)
        if space.width is None:
            space.width = _width(space)
        known.append((space, positions))
        self.group.spaces.append(space)
        if not positions <= taken:  # a tensor met again on another path adds ties, nothing to explore
            self.queue.append(space)

    def _tie(self, known: list[Space], g: np.ndarray, p: np.ndarray) -> None:
        """Channels that one tensor carries at the same position (the channels of one head, or
        GPT-2's Q, K and V columns of a fused projection met again through Q·Kᵀ) are tied."""
        first: dict[int, int] = {}
        pairs = [map_path(s.path, np.arange(self.group.channels)) for s in known] + [(g, p)]
        for gs, ps in pairs:
            for gi, pi in zip(gs.tolist(), ps.tolist()):
                self.group.tie(gi, first.setdefault(pi, gi))

    def add_member(self, member: Member) -> None:
        key = (id(member.node), member.role, member.input_index, path_key(member.path))
        if key in self.member_keys:
            return
        self.member_keys.add(key)
        self.group.members.append(member)
        if member.role == "producer":
            other = self.claimed.get(id(member.node))
            if other is not None and other is not self.group:
                self.group.block(f"{name_of(member.node)} is also cut by group {other.id}")
                other.block(f"{name_of(member.node)} is also cut by group {self.group.id}")
            self.claimed[id(member.node)] = self.group

    def visit(self, space: Space) -> None:
        value = space.value
        if value.is_graph_output():
            self.group.block(f"reaches graph output {value.name}")
        if value.is_graph_input():
            self.group.block(f"reaches graph input {value.name}")
            return
        ports = []
        producer = value.producer()
        if producer is not None:
            ports.append((producer, ("out", value.index())))
        ports += [(node, ("in", i)) for node, i in value.uses()]
        for node, port in ports:
            key = (id(node), port, path_key(space.path))
            if key in self.ports:
                continue
            self.ports.add(key)
            if node.graph is not self.model.graph:
                self.group.block(f"{value.name} is used inside a subgraph ({name_of(node)})")
                continue
            relation = (relate_hidden(node, space, port) if self.hidden else None) or relate(node, space, port)
            if relation.block:
                self.group.block(f"{name_of(node)}: {relation.block}")
                continue
            for member in relation.members:
                self.add_member(member)
            for other in relation.spaces:
                self._mark_ports(node, other)
                self.add_space(other)

    def _mark_ports(self, node: ir.Node, space: Space) -> None:
        """The node has been related from ``space``'s side too: do not enter it again from there."""
        key = path_key(space.path)
        for j, value in enumerate(node.inputs):
            if value is space.value:
                self.ports.add((id(node), ("in", j), key))
        for j, value in enumerate(node.outputs):
            if value is space.value:
                self.ports.add((id(node), ("out", j), key))


def _width(space: Space) -> int | None:
    shape = space.value.shape
    if shape is None or space.axis >= len(shape):
        return None
    d = shape[space.axis]
    return d if isinstance(d, int) else None


def _explore(model: ir.Model, root: ir.Node, spec: ProducerSpec, gid: int,
             claimed: dict[int, ChannelGroup], hidden: bool = False) -> ChannelGroup:
    group = ChannelGroup(gid, spec.channels)
    search = _Search(model, group, claimed, hidden)
    search.add_space(Space(root.outputs[0], spec.out_axis, (), spec.channels))
    while search.queue:
        search.visit(search.queue.popleft())
    if group.channels <= 1:
        group.block("a single channel")
    elif not group.consumers and group.prunable:
        group.block("no consumer reads these channels")
    return group
