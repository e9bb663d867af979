"""Similarity merge: remove a filter by folding it into its near-twin, not by dropping it.

When channel ``j`` of a group responds like ``s ·`` channel ``i`` (``similarity``: their
response vectors are parallel) and the ops between producer and consumer commute with the
scale, the consumer sees ``a_j ≈ s · a_i``. Adding ``s ·`` the consumer's input weights of ``j``
to those of ``i`` and removing ``j`` then changes the consumer's output by ``W_j (a_j − s·a_i)``,
instead of ``W_j a_j`` when ``j`` is simply dropped; the part of it that is constant on average
(``E[a_j] − s·E[a_i]``, where BatchNorm statistics tell) goes into the consumer's bias.

Pairs are taken greedily, the cheapest first: removing ``j`` into ``i`` costs
``‖W_j‖ · ‖v_j‖ · sin∠(v_i, v_j)`` and dropping ``j`` costs ``‖W_j‖ · ‖v_j‖``; so the most similar
pair goes first, and a small channel without a twin is dropped as magnitude pruning would. A
group whose channels cross an op that a scale does not commute with (sigmoid, hard-swish, a
depthwise conv, an affine op after the activation) is cut by L1 magnitude, and says so.

```yaml
steps:
  - prune: {method: merge, rate: 0.3}
```
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from mcomp.kernels.importance import rounded_keep
from mcomp.passes.prune.structured.driver import DEFAULT_ROUND_TO, measure, select
from mcomp.passes.prune.structured.groups import ChannelGroup, find_groups
from mcomp.passes.prune.structured.paths import map_path
from mcomp.passes.prune.structured.prepare import const, infer_shapes, prepare, reshare_shapes
from mcomp.passes.prune.structured.report import GroupRecord, StructuredReport
from mcomp.passes.prune.structured.scores import group_scores
from mcomp.passes.prune.structured.similarity import channel_means, consumer_columns, effective_vectors, foldability
from mcomp.passes.prune.structured.surgery import remove_channels, set_input


def merge_similar(model: ir.Model, *, rate: float, round_to: int = DEFAULT_ROUND_TO,
                  exclude: Callable[[ir.Node], bool] | None = None,
                  input_shapes: dict[str, tuple[int, ...]] | None = None) -> StructuredReport:
    """Removes ``rate`` of each prunable group's channels, folding each into its closest twin."""
    if not 0 <= rate < 1:
        raise ValueError("rate must be in [0, 1)")
    prepare(model)
    shapes = input_shapes or None  # the shapes the report counts MACs at (None: dynamic dims = 1)
    params0, macs0 = measure(model, shapes)
    report = StructuredReport("merge", rate, "similarity", round_to, parameters_before=params0, macs_before=macs0,
                              macs_input_shapes={k: list(v) for k, v in shapes.items()} if shapes else None)
    for group in find_groups(model, prepared=True):
        record = GroupRecord(group.id, group.chain, group.channels, group.channels, reason=group.reason)
        report.groups.append(record)
        if not group.prunable:
            continue
        hit = next((m.node.name or m.node.op_type for m in group.members if exclude and exclude(m.node)), None)
        if hit is not None:
            record.reason = f"excluded ({hit})"
            continue
        _merge_group(model, group, rate, round_to, record)
    reshare_shapes(model)
    infer_shapes(model)
    report.parameters_after, report.macs_after = measure(model, shapes)
    fallback = [g.id for g in report.groups if g.importance == "l1"]
    if fallback:
        report.notes.append(f"{len(fallback)} groups cut by L1 magnitude (no exact fold through their ops): "
                            f"groups {fallback[:12]}")
    return report


def _merge_group(model: ir.Model, group: ChannelGroup, rate: float, round_to: int, record: GroupRecord) -> None:
    obstacle, signed = foldability(group)
    if obstacle:
        scores, _ = group_scores(group, "l1")
        keep = select(group, scores, rate, round_to)
        record.importance, record.note = "l1", f"no exact fold: {obstacle}"
    else:
        vectors = effective_vectors(group)
        columns = consumer_columns(group)
        keep, folds = [], []
        for lo, hi in group.segments:
            alive, seg_folds = plan_merges(vectors[lo:hi], columns[lo:hi], rounded_keep(hi - lo, rate, round_to),
                                           signed)
            keep.append(lo + alive)
            folds += [(lo + j, None if i is None else lo + i, s) for j, i, s in seg_folds]
        keep = np.concatenate(keep)
        apply_folds(model, group, folds, channel_means(group))
        record.importance = "similarity"
        record.merged = sum(1 for _, i, _ in folds if i is not None)
    if keep.size < group.channels:
        remove_channels(model, group, keep, infer=False)
    record.channels_after = int(keep.size)


# --------------------------------------------------------------------------- the greedy plan


def plan_merges(vectors: np.ndarray, columns: np.ndarray, keep: int, signed: bool):
    """Channels kept (sorted indices) and folds ``(j, i, s)`` (``i`` None: dropped), cheapest first."""
    m = vectors.shape[0]
    norms = np.linalg.norm(vectors, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cos = (vectors @ vectors.T) / np.outer(safe, safe)
    np.fill_diagonal(cos, np.nan)
    allowed = np.ones_like(cos, dtype=bool) if signed else cos > 0
    sin = np.sqrt(np.clip(1.0 - cos ** 2, 0.0, 1.0))
    sin = np.where(allowed, sin, 1.0)
    np.fill_diagonal(sin, np.inf)
    cols = columns.copy()
    col_norms = np.linalg.norm(cols, axis=1)
    alive = np.ones(m, dtype=bool)
    folds = []
    for _ in range(m - keep):
        weight = col_norms * norms
        cost = weight[:, None] * sin  # cost[j, i]: remove j into i
        cost[~alive, :] = np.inf
        cost[:, ~alive] = np.inf
        drop = np.where(alive, weight, np.inf)
        j, i = np.unravel_index(np.argmin(cost), cost.shape)
        if not np.isfinite(cost[j, i]) or drop.min() <= cost[j, i]:
            j = int(np.argmin(drop))
            folds.append((j, None, 0.0))
        else:
            s = float(cos[j, i] * norms[j] / safe[i])
            cols[i] += s * cols[j]
            col_norms[i] = np.linalg.norm(cols[i])
            folds.append((int(j), int(i), s))
        alive[j] = False
    return np.flatnonzero(alive), folds


def apply_folds(model: ir.Model, group: ChannelGroup, folds, means: dict[int, np.ndarray] | None = None) -> None:
    """Adds ``s ·`` the consumer weights of each removed channel to those of its twin, in order;
    where the channels' expected values are known (``means``, by tensor), what is left on average
    (``E[a_j] − s·E[a_i]``) goes into the consumer's bias."""
    if not folds:
        return
    for m in group.members:
        if m.role != "consumer":
            continue
        mean = (means or {}).get(id(m.node.inputs[0]))
        w = const(m.node.inputs[m.input_index]).astype(np.float64)
        moved = np.moveaxis(w, m.axis, 0)  # a view: edits land in w
        shift = np.zeros(moved.shape[1]) if moved.ndim > 1 else None
        for j, i, s in folds:
            pj = map_path(m.path, np.array([j]))[1]
            if mean is not None and shift is not None and len(pj):
                rest = mean[j] - (s * mean[i] if i is not None else 0.0)
                shift += rest * moved[pj].reshape(len(pj), moved.shape[1], -1).sum(axis=(0, 2))
            if i is None:
                continue
            pi = map_path(m.path, np.array([i]))[1]
            if len(pj) and len(pj) == len(pi):
                moved[pi] += s * moved[pj]
        set_input(model, m.node, m.input_index, w.astype(const(m.node.inputs[m.input_index]).dtype))
        if mean is not None and shift is not None:
            _add_bias(model, m.node, shift)


def _add_bias(model: ir.Model, node: ir.Node, shift: np.ndarray) -> None:
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
        return
    # Only an existing bias takes the shift: groups were found before any fold, so a bias made
    # here would be missing from the group of this node's own outputs and not be cut with them.
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return
    dtype = const(node.inputs[1]).dtype
    bias = const(node.inputs[2])
    if bias is None or bias.size != len(shift):
        return
    set_input(model, node, 2, (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(dtype))
