"""What a channel looks like without data: the evidence the similarity merge works from.

- ``foldability``: whether every op between the group's producers and consumers commutes with a
  positive scale (ReLU, pooling, reshapes, residual sums), so that ``a_j ≈ s·a_i`` survives to
  the consumer; and whether a negative ``s`` would too (no nonlinearity at all).
- ``effective_vectors``: each channel's response as a vector. After a BatchNorm with measured
  statistics the channel is ``γ·w·(x − m)/σ + β`` (the running mean absorbs the input mean
  ``m``), so with a unit-variance input the vector is ``(γ·w/‖w‖, β)``: the filter's direction
  at the channel's real scale, and its real mean. Otherwise: filter and bias, through the
  BatchNorm/constant affine ops that follow.
- ``consumer_columns``: the consumer weights that read each channel.
- ``channel_means``: each tensor's per-channel expected value, from BatchNorm statistics carried
  through ReLU (Gaussian rectification) and residual sums.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mcomp.passes.prune.structured.groups import ChannelGroup
from mcomp.passes.prune.structured.paths import map_path
from mcomp.passes.prune.structured.prepare import attr, const

_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "MaxPool", "GlobalMaxPool"})
_LINEAR = frozenset({"AveragePool", "GlobalAveragePool", "Resize", "Upsample", "Pad", "Transpose", "Reshape",
                     "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Split", "Slice",
                     "ReduceMean", "ReduceSum"})
_AFFINE = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div"})


# --------------------------------------------------------------------------- can the group fold?


def foldability(group: ChannelGroup) -> tuple[str | None, bool]:
    """(why folding is not exact here, or None; whether a negative scale may fold too)."""
    if group.units is not None:
        return "tied channels (attention heads) are cut whole, not merged", False
    nodes = {id(m.node): m.node for m in group.members if m.role not in ("producer", "consumer")}
    if any(m.role == "depthwise" for m in group.members):
        return "a depthwise Conv gives each channel its own filter", False
    values = {id(s.value) for s in group.spaces}
    post: set[int] = set()  # tensors some path reaches through a nonlinearity
    nonlinear = False
    graph = group.producers[0].graph if group.producers else None
    for node in graph or []:
        if id(node) not in nodes:
            continue
        op = node.op_type
        ins = [v for v in node.inputs if v is not None and id(v) in values]
        after = any(id(v) in post for v in ins)
        if op in _HOMOGENEOUS:
            nonlinear = after = True
        elif op in _AFFINE:
            computed = [v for v in node.inputs if v is not None and const(v) is None]
            if op in ("Mul", "Div") and len(computed) > 1:
                return f"{op} of two computed tensors ({node.name})", False
            if len(computed) == 1 and after and not _uniform(node):
                return f"per-channel {op} after the activation ({node.name})", False
        elif op not in _LINEAR:
            return f"{op} does not commute with a scale ({node.name})", False
        if after:
            post.update(id(o) for o in node.outputs)
    return None, not nonlinear


def _uniform(node: ir.Node) -> bool:
    """An affine op whose constants are the same for every channel (a scalar)."""
    if node.op_type == "BatchNormalization":
        return False
    return all(const(v) is None or const(v).size == 1 for v in node.inputs if v is not None)


# --------------------------------------------------------------------------- vectors


def effective_vectors(group: ChannelGroup) -> np.ndarray:
    """Per channel, every producer's response as a vector (see the module docstring), side by side."""
    blocks = []
    channels = np.arange(group.channels)
    for m in group.members:
        if m.role != "producer" or m.input_index != 1:
            continue
        node = m.node
        w = const(node.inputs[1]).astype(np.float64)
        rows = np.moveaxis(w, m.axis, 0).reshape(w.shape[m.axis], -1)
        norm = _following_norm(node.outputs[0])
        if norm is not None:
            gamma, beta = norm
            lengths = np.linalg.norm(rows, axis=1)
            rows = np.hstack([rows * (gamma / np.where(lengths > 0, lengths, 1.0))[:, None], beta[:, None]])
        else:
            bias = _bias(group, node, rows.shape[0])
            scale, shift = _affine_after(node.outputs[0], rows.shape[0])
            rows = np.hstack([rows * scale[:, None], (bias * scale + shift)[:, None]])
        g, pos = map_path(m.path, channels)
        block = np.zeros((group.channels, rows.shape[1]))
        block[g] = rows[pos]
        blocks.append(block)
    return np.hstack(blocks) if blocks else np.zeros((group.channels, 1))


def _following_norm(value: ir.Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(γ, β) of the BatchNorm that alone reads ``value``, with its statistics, else None."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    node, index = uses[0]
    if node.op_type != "BatchNormalization" or index != 0 or not calibrated(node):
        return None
    gamma, beta = const(node.inputs[1]), const(node.inputs[2])
    return gamma.astype(np.float64), beta.astype(np.float64)


def calibrated(bn: ir.Node) -> bool:
    """Whether a BatchNorm's running statistics were measured (not the initial mean 0, variance 1)."""
    params = [const(bn.inputs[i]) for i in range(1, 5)]
    if any(p is None for p in params):
        return False
    mean, var = params[2], params[3]
    return not (np.all(mean == 0) and np.all(var == 1))


def _bias(group: ChannelGroup, node: ir.Node, n: int) -> np.ndarray:
    for m in group.members:
        if m.node is node and m.role == "producer" and m.input_index != 1:
            return const(node.inputs[m.input_index]).astype(np.float64).reshape(-1)[:n]
    return np.zeros(n)


def _affine_after(value: ir.Value, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``x·scale + shift`` of the BatchNorm and constant ops following ``value`` in a chain."""
    scale, shift = np.ones(n), np.zeros(n)
    while len(value.uses()) == 1 and not value.is_graph_output():
        node, index = value.uses()[0]
        op = node.op_type
        if op == "BatchNormalization" and index == 0:
            gamma, beta, mean, var = (const(node.inputs[i]) for i in range(1, 5))
            if any(a is None for a in (gamma, beta, mean, var)):
                break
            s = gamma / np.sqrt(var.astype(np.float64) + attr(node, "epsilon", 1e-5))
            scale, shift = scale * s, shift * s + (beta - mean * s)
        elif op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
            c = const(node.inputs[1 - index])
            c = None if c is None else _per_channel(c, n)
            if c is None:
                break
            if op == "Add":
                shift = shift + c
            elif op == "Sub":
                scale, shift = (scale, shift - c) if index == 0 else (-scale, c - shift)
            elif op == "Mul":
                scale, shift = scale * c, shift * c
            elif index == 0:
                scale, shift = scale / c, shift / c
            else:
                break
        else:
            break
        value = node.outputs[0]
    return scale, shift


def _per_channel(c: np.ndarray, n: int) -> np.ndarray | None:
    if c.size == 1:
        return np.full(n, float(c.reshape(-1)[0]))
    return c.astype(np.float64).reshape(-1) if c.size == n else None


def consumer_columns(group: ChannelGroup) -> np.ndarray:
    """Per channel: every consumer weight that reads it, flattened and concatenated."""
    blocks = []
    channels = np.arange(group.channels)
    for m in group.members:
        if m.role != "consumer":
            continue
        w = const(m.node.inputs[m.input_index]).astype(np.float64)
        moved = np.moveaxis(w, m.axis, 0)
        g, pos = map_path(m.path, channels)
        k = max(1, len(pos) // max(1, len(np.unique(g))))
        block = np.zeros((group.channels, k * int(np.prod(moved.shape[1:]))))
        for c in np.unique(g):
            block[c] = moved[pos[g == c]].reshape(-1)
        blocks.append(block)
    return np.hstack(blocks) if blocks else np.ones((group.channels, 1))


def channel_means(group: ChannelGroup) -> dict[int, np.ndarray]:
    """Each tensor's per-channel expected value, where BatchNorm statistics tell it.

    A BatchNorm right after a producer outputs ``N(β, γ²)`` per channel; the moments are carried
    through ReLU (Gaussian rectification), residual sums (independent terms), constant affine ops
    and ops that keep values (pooling, reshapes); anything else leaves them unknown.
    Keyed by ``id`` of the tensor (consumers look up their input).
    """
    graph = group.producers[0].graph if group.producers else None
    in_group = {id(s.value) for s in group.spaces}
    producer_outputs = {id(n.outputs[0]) for n in group.producers}
    moments: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    members = {id(m.node) for m in group.members if m.role not in ("producer", "consumer")}
    for node in graph or []:
        if id(node) not in members or not node.outputs or id(node.outputs[0]) not in in_group:
            continue
        result = _moments(node, moments, producer_outputs, group)
        if result is not None:
            moments[id(node.outputs[0])] = result
    return {key: mean for key, (mean, _) in moments.items()}


def _moments(node: ir.Node, moments, producer_outputs, group):
    op = node.op_type
    x = node.inputs[0]
    if op == "BatchNormalization" and id(x) in producer_outputs:
        if not calibrated(node):
            return None
        gamma, beta = (const(node.inputs[i]).astype(np.float64) for i in (1, 2))
        return _in_group_order(group, x, beta), _in_group_order(group, x, gamma ** 2)
    known = [moments.get(id(v)) for v in node.inputs if v is not None and const(v) is None]
    if not known or any(k is None for k in known):
        return None
    if op == "Relu":
        return _relu_moments(*known[0])
    if op == "Add" and len(known) == 2:
        return known[0][0] + known[1][0], known[0][1] + known[1][1]
    if op in _LINEAR or op in ("MaxPool", "GlobalMaxPool"):
        return known[0]
    return None


def _in_group_order(group: ChannelGroup, value: ir.Value, per_output: np.ndarray) -> np.ndarray:
    """A producer's per-output-channel array, renumbered as the group's channels."""
    out = np.zeros(group.channels)
    for m in group.members:
        if m.role == "producer" and m.input_index == 1 and m.node.outputs[0] is value:
            g, pos = map_path(m.path, np.arange(group.channels))
            out[g] = per_output[pos]
    return out


def _relu_moments(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``max(y, 0)`` for ``y ~ N(mean, var)``."""
    from math import erf, sqrt

    std = np.sqrt(np.maximum(var, 1e-12))
    z = mean / std
    cdf = 0.5 * (1 + np.vectorize(erf)(z / sqrt(2)))
    pdf = np.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi)
    first = mean * cdf + std * pdf
    second = (mean ** 2 + var) * cdf + mean * std * pdf
    return first, np.maximum(second - first ** 2, 0.0)
