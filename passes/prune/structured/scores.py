"""What matters: one importance score per channel of a group, by a criterion of ``criteria``.

Every tensor of the group that the criterion reads (by default the weights: producer filters,
depthwise filters, consumer input slices; for ``bn`` the normalization scales) gives per-channel
scores along its channel axis; they are brought back to the group's channel numbering through
each member's path (a flattened channel sums its block), normalized per tensor (``normalize``:
divided by their mean) and summed. A gradient criterion reads the tensors that have a gradient
in ``grads`` (keyed by ONNX tensor name). A group with none of the tensors is scored by the
criterion's fallback (``l1`` for ``bn`` and ``taylor``); a criterion that reads no tensor
(``random``) scores the group as a whole.
"""

from __future__ import annotations

import numpy as np

from mcomp.kernels import importance as imp
from mcomp.passes.prune import criteria
from mcomp.passes.prune.structured.groups import ChannelGroup
from mcomp.passes.prune.structured.paths import map_path
from mcomp.passes.prune.structured.prepare import const


def group_scores(group: ChannelGroup, method: str, *, grads: dict[str, np.ndarray] | None = None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
    """Scores for the group's channels (higher = keep), and the criterion that produced them."""
    criterion = criteria.get(method)
    if not criterion.scores_channels:
        raise ValueError(f"importance {method!r} does not score channels; "
                         f"choose from {', '.join(criteria.names('channels'))}")
    rng = rng or np.random.default_rng(0)
    if criterion.group is not None:
        return criterion.group(group.channels, criteria.Evidence(rng)), criterion.name
    members = [m for m in group.members if criterion.reads(m)]
    if criterion.gradients:
        members = [m for m in members if grads and m.tensor in grads]
    if not members and criterion.fallback:
        return group_scores(group, criterion.fallback, grads=grads, rng=rng)
    evidence = {id(m): criteria.Evidence(rng, grad=(grads or {}).get(m.tensor)) for m in members}
    return _summed(group, members, lambda m, w: criterion.channels(w, m.axis, evidence[id(m)])), criterion.name


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
