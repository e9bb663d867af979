"""How much, per group: rates allocated from measured sensitivity instead of one uniform rate.

NetAdapt and AMC showed that layers differ in what a cut costs in accuracy and saves in compute:
a uniform rate over-cuts the sensitive groups and under-cuts the cheap ones. Here each prunable
group's sensitivity is measured (``sensitivity.probe``: the fidelity or accuracy lost when that
group alone is cut, at a few rates), its cost contribution is counted exactly (``CostModel``:
MACs or parameters as a function of every group's kept share) or measured (the per-node kernel
times of ``node_times``, with ``allocation_cost: latency``), and a greedy allocation repeatedly
takes one ``round_to`` step of channels from the group whose next step loses the least per unit
of cost removed, until the cut removes what the uniform rate (or the ``--target``) would.

Groups are named by ``ChannelGroup.key`` (the first producer's weight tensor), so the rates a
run chose (its ``changes.group_rates``) can be written back and replayed without measuring again::

    - prune: {method: structured, rate: 0.5, allocation: sensitivity}     # measures, then cuts
    - prune: {method: structured, group_rates: {features.0.weight: 0.3125, features.3.weight: 0.375}}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp.errors import ConfigError
from mcomp.passes.prune.structured.groups import ChannelGroup

_LISTED = 10  # valid keys named in the error for an unknown one


def resolve_keys(group_rates: dict[str, float], groups: list[ChannelGroup], free: list[ChannelGroup]) -> dict[int, float]:
    """``group_rates`` by key → by group id; a key that names no group that can be cut is a
    ConfigError that lists the valid keys (at most ``_LISTED``) or says why that group stays whole."""
    by_key = {g.key: g for g in groups}
    cuttable = {g.key for g in free}
    rates = {}
    for key, rate in group_rates.items():
        group = by_key.get(key)
        if group is None:
            valid = sorted(cuttable)
            shown = ", ".join(valid[:_LISTED]) + (f" … ({len(valid)} in all)" if len(valid) > _LISTED else "")
            raise ConfigError(f"prune: group_rates key {key!r} matches no channel group; valid keys: {shown or 'none'}")
        if key not in cuttable:
            raise ConfigError(f"prune: group_rates key {key!r} names a group that is kept whole "
                              f"({group.reason or 'excluded'})")
        rates[group.id] = rate
    return rates


def levels(group: ChannelGroup, round_to: int, max_rate: float) -> list[tuple[float, int]]:
    """(rate, channels kept) for each distinct cut of ``group`` from none up to ``max_rate``, the
    smallest rate that reaches each count. Rates are rounded to 6 decimals and still give the
    count, so a recorded rate replays the same cut."""
    out = [(0.0, group.channels)]
    for k in range(group.channels - 1, 0, -1):
        rate = round(1 - k / group.channels, 6)
        if rate > max_rate + 1e-9:
            break
        kept = group.kept(rate, round_to)
        if kept < out[-1][1] and 1 - kept / group.channels <= max_rate + 1e-9:
            out.append((rate, kept))
    return out


class CostModel:
    """MACs (or parameters) of the model as a function of each group's kept share: a sum of terms
    ``base · Π share[g]`` over the groups that cut that node's channels (a Conv's MACs scale with
    its input and its output channels, so two adjacent cuts interact; an additive count would
    overstate what cutting both removes). Evaluated with numpy: the allocation tries many states."""

    def __init__(self, terms: list[tuple[float, tuple[int, ...]]]):
        self.terms = terms
        width = max((len(ids) for _, ids in terms), default=0)
        self.base = np.array([b for b, _ in terms], dtype=np.float64)
        self.size = 1 + max((g for _, ids in terms for g in ids), default=-1)
        # group ids per term, padded with ``size``: the slot of a share that is always 1
        self.index = np.full((len(terms), max(width, 1)), self.size, dtype=np.int64)
        for i, (_, ids) in enumerate(terms):
            self.index[i, : len(ids)] = ids

    @property
    def total(self) -> float:
        return float(self.base.sum())

    def vector(self, shares: dict[int, float]) -> np.ndarray:
        out = np.ones(self.size + 1)
        for g, share in shares.items():
            if g < self.size:
                out[g] = share
        return out

    def removed(self, shares: dict[int, float] | np.ndarray) -> float:
        vec = shares if isinstance(shares, np.ndarray) else self.vector(shares)
        return self.total - float(self.base @ vec[self.index].prod(axis=1))


def _named(model: ir.Model) -> tuple[list, ir.Model]:
    """The model's nodes and a copy whose nodes are named ``mcomp_alloc_<index>``: unique names, so
    that a per-node count or time maps back to its node."""
    named = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    for i, node in enumerate(named.graph):
        node.name = f"mcomp_alloc_{i}"
    return list(model.graph), named


def _terms(nodes: list, groups: list[ChannelGroup], per_node: dict[str, float | None]) -> list:
    """(cost, ids of the groups that cut that node's input or output channels) per named node."""
    touching: dict[int, set[int]] = {}
    for g in groups:
        for m in g.members:
            if m.role in ("producer", "consumer", "depthwise"):
                touching.setdefault(id(m.node), set()).add(g.id)
    terms = []
    for name, count in per_node.items():
        if not count:
            continue
        suffix = name[len("mcomp_alloc_"):] if name.startswith("mcomp_alloc_") else ""
        index = int(suffix) if suffix.isdigit() else None  # else a name the profile made: no group's node
        node = nodes[index] if index is not None and index < len(nodes) else None
        terms.append((float(count), tuple(sorted(touching.get(id(node), ())))))
    return terms


def mac_model(model: ir.Model, groups: list[ChannelGroup], shapes) -> CostModel:
    """Per-node MACs (``mcomp.graph.macs_by_node`` at ``shapes``, as the report counts them), each
    scaled by the groups that cut that node's input or output channels. Shapes computed at run time
    (Shape → Concat → Reshape) need no fallback here: ``macs_by_node`` already fills the counts its
    first inferences left unknown from a constant-folded copy, by node name."""
    from mcomp.graph import macs_by_node

    nodes, named = _named(model)
    counts = macs_by_node(ir.serde.serialize_model(named), shapes)
    return CostModel(_terms(nodes, groups, counts))


def latency_model(model: ir.Model, groups: list[ChannelGroup], feed: dict, providers: list[str],
                  threads: int | None) -> tuple[CostModel, dict]:
    """Per-node kernel times on the target provider (``node_times.profile``, one session), each
    scaled by the groups that cut that node's channels, and what was timed: the time that maps to
    no node of the graph (fused away, copies) is left out of the model and reported."""
    from mcomp.passes.prune.structured import node_times

    from mcomp.sources import runnable

    nodes, named = _named(model)
    with runnable(named) as source:  # bytes, or a file beside its data for a big or memory-mapped model
        timed = node_times.profile(source, feed, providers, threads)
    producers = {out.name: node for node in named.graph for out in node.outputs}
    mapped: dict[str, float] = {}
    unmapped = 0.0
    for kernel, t in timed.per_node.items():
        node = node_times.graph_node(kernel, producers)
        if node is not None and node.startswith("mcomp_alloc_"):
            mapped[node] = mapped.get(node, 0.0) + t
        else:
            unmapped += t
    info = {"provider": timed.provider, "runs": timed.runs,
            "feed_shapes": {k: list(np.shape(v)) for k, v in feed.items()},
            "timed_ms": round(sum(mapped.values()) / 1e3, 4), "unmapped_ms": round(unmapped / 1e3, 4)}
    return CostModel(_terms(nodes, groups, mapped)), info


def param_model(model: ir.Model, groups: list[ChannelGroup]) -> CostModel:
    """Initializer sizes, each scaled by the groups that slice that tensor."""
    slicing: dict[str, set[int]] = {}
    for g in groups:
        for m in g.members:
            if m.tensor:
                slicing.setdefault(m.tensor, set()).add(g.id)
    terms = [(float(np.prod(v.shape.dims)) if v.shape is not None else 0.0, tuple(sorted(slicing.get(name, ()))))
             for name, v in model.graph.initializers.items()]
    return CostModel([t for t in terms if t[0]])


@dataclass
class Curve:
    """A group's measured sensitivity at some rates: piecewise linear through (origin, 0) and the
    probes, non-decreasing, extended past the last probe with the steepest slope seen (cutting more
    never hurts less per channel than it did: sensitivity grows at least linearly). ``origin``: the
    rate the group was already cut at when it was probed (a later stage measures from there)."""

    points: list[tuple[float, float]]
    origin: float = 0.0

    def __call__(self, rate: float) -> float:
        xs, ys = [self.origin], [0.0]
        for x, y in sorted(self.points):
            if x > xs[-1]:
                xs.append(x)
                ys.append(max(ys[-1], y))
        if rate <= xs[-1]:
            return float(np.interp(rate, xs, ys))
        slope = max((ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)) if len(xs) > 1 else 0.0
        return ys[-1] + slope * (rate - xs[-1])


@dataclass
class Stacked:
    """A group's curves measured in stages: each counts from its origin up to the next one's, so the
    sum is the loss of a cut reached through the cuts of the earlier stages."""

    curves: list[Curve]

    def __call__(self, rate: float) -> float:
        ends = [c.origin for c in self.curves[1:]] + [None]
        return sum(c(rate if end is None else min(rate, end)) for c, end in zip(self.curves, ends))


# Sensitivities of zero (a probe that changed nothing measurable) would make every step of that
# group free, and the greedy would cut it to max_layer_rate: a small convex floor keeps the
# cheapest groups ordered by cost and stops any one of them from being emptied on a tie.
_FLOOR = 1e-4
_SWAPS = 200  # bound on the exchange rounds after the greedy (each tries every pair of groups)


class Greedy:
    """Level index per free group, chosen to reach ``target`` removed at the least summed sensitivity.

    1. add: from none cut, one step at a time, the step with the least sensitivity added per unit
       of cost removed, until ``target`` is reached (NetAdapt's loop, on measured curves);
    2. trim: a step can overshoot (one ``round_to`` step of a wide early conv is several points of
       MACs), so steps are given back, most sensitive first, while the target still holds;
    3. exchange: one step given back in a group and one taken in another, where that lowers the
       summed sensitivity and keeps the target; then trim again.
    ``fixed`` holds the kept shares of the groups whose rates were given; ``start`` the levels an
    earlier stage chose, where the steps begin (trim and exchange may still undo them)."""

    def __init__(self, cost: CostModel, free: dict[int, list[tuple[float, int]]], channels: dict[int, int],
                 curves: dict[int, Curve], fixed: dict[int, float], start: dict[int, int] | None = None):
        self.cost, self.free, self.channels, self.curves = cost, free, channels, curves
        self.start = dict(start) if start else dict.fromkeys(free, 0)
        self.shares = cost.vector({**fixed, **{g: self.share(g, level) for g, level in self.start.items()}})

    def sens(self, g: int, level: int) -> float:
        rate = self.free[g][level][0]
        return self.curves[g](rate) + _FLOOR * rate * rate

    def share(self, g: int, level: int) -> float:
        return self.free[g][level][1] / self.channels[g]

    def removed_with(self, moves: dict[int, int]) -> float:
        vec = self.shares.copy()
        for g, level in moves.items():
            vec[g] = self.share(g, level)
        return self.cost.removed(vec)

    def run(self, target: float) -> dict[int, int]:
        state = dict(self.start)
        self._add(state, target)
        self._trim(state, target)
        for _ in range(_SWAPS):
            if not self._exchange(state, target):
                break
            self._trim(state, target)
        return state

    def _set(self, state, g, level):
        state[g] = level
        self.shares[g] = self.share(g, level)

    def _add(self, state, target):
        removed = self.cost.removed(self.shares)
        while removed < target:
            best = None
            for g, level in state.items():
                if level + 1 >= len(self.free[g]):
                    continue
                after = self.removed_with({g: level + 1})
                if after <= removed:
                    continue
                ratio = (self.sens(g, level + 1) - self.sens(g, level)) / (after - removed)
                if best is None or ratio < best[0]:
                    best = (ratio, g, after)
            if best is None:
                return
            self._set(state, best[1], state[best[1]] + 1)
            removed = best[2]

    def _trim(self, state, target):
        while True:
            best = None
            for g, level in state.items():
                if level and self.removed_with({g: level - 1}) >= target:
                    saved = self.sens(g, level) - self.sens(g, level - 1)
                    if best is None or saved > best[0]:
                        best = (saved, g)
            if best is None:
                return
            self._set(state, best[1], state[best[1]] - 1)

    def _exchange(self, state, target) -> bool:
        best = None
        for g, lg in state.items():
            if not lg:
                continue
            for h, lh in state.items():
                if h == g or lh + 1 >= len(self.free[h]):
                    continue
                delta = (self.sens(g, lg - 1) - self.sens(g, lg)) + (self.sens(h, lh + 1) - self.sens(h, lh))
                if delta < -1e-9 and (best is None or delta < best[0]) \
                        and self.removed_with({g: lg - 1, h: lh + 1}) >= target:
                    best = (delta, g, h)
        if best is None:
            return False
        self._set(state, best[1], state[best[1]] - 1)
        self._set(state, best[2], state[best[2]] + 1)
        return True
