"""What matters: one importance score per channel of a group.

Every weight tensor of the group (producer filters, depthwise filters, consumer input slices)
gives per-channel scores along its channel axis (``mcomp.kernels.importance``); they are
brought back to the group's channel numbering through each member's path (a flattened channel
sums its block), normalized per tensor (``normalize``: divided by their mean) and summed.

- ``l1``/``l2``: the norms of the slices;
- ``bn``: ``|γ|`` of the group's BatchNorm/InstanceNorm scales (L1 where the group has none);
- ``taylor``: ``|Σ w·∂L/∂w|`` per slice, from ``grads`` keyed by ONNX tensor name (L1 where
  the group has no gradient);
- ``random``: uniform noise from ``rng``.
"""

from __future__ import annotations

import numpy as np

from mcomp.kernels import importance as imp
from mcomp.passes.prune.structured.groups import ChannelGroup
from mcomp.passes.prune.structured.paths import map_path
from mcomp.passes.prune.structured.prepare import const

METHODS = ("l1", "l2", "bn", "taylor", "random")
_NORMS = {"BatchNormalization", "InstanceNormalization"}


def group_scores(group: ChannelGroup, method: str, *, grads: dict[str, np.ndarray] | None = None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
    """Scores for the group's channels (higher = keep), and the method that produced them."""
    if method not in METHODS:
        raise ValueError(f"unknown importance {method!r}; choose from {', '.join(METHODS)}")
    if method == "random":
        return imp.random_scores((group.channels,), rng or np.random.default_rng(0)), "random"
    if method == "bn":
        members = [m for m in group.members if m.role == "param" and m.node.op_type in _NORMS and m.input_index == 1]
        if members:
            return _summed(group, members, lambda m, w: np.abs(w.astype(np.float32))), "bn"
        method = "l1"  # the group has no normalization scale: fall back
    weights = [m for m in group.members if m.role in ("producer", "consumer", "depthwise") and m.input_index == 1]
    if method == "taylor":
        with_grads = [m for m in weights if grads and m.tensor in grads]
        if with_grads:
            return _summed(group, with_grads, lambda m, w: imp.channel_taylor(w, grads[m.tensor], m.axis)), "taylor"
        method = "l1"
    p = 2 if method == "l2" else 1
    return _summed(group, weights, lambda m, w: imp.channel_norm(w, m.axis, p)), method


def _summed(group: ChannelGroup, members, per_position) -> np.ndarray:
    total = np.zeros(group.channels, dtype=np.float64)
    channels = np.arange(group.channels)
    for m in members:
        w = const(m.node.inputs[m.input_index])
        if w is None:
            continue
        scores = per_position(m, w)
        g, pos = map_path(m.path, channels)
        per_channel = np.zeros(group.channels, dtype=np.float64)
        np.add.at(per_channel, g, scores[pos])
        covered = np.unique(g)
        per_channel[covered] = imp.normalize(per_channel[covered])
        total += per_channel
    return total
