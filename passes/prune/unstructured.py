"""Unstructured pruning: zero the least important individual weights.

Achieves the requested sparsity over the prunable tensors exactly (to one weight), in
global scope (one threshold over all layers, with per-layer caps) or per layer. Zeros make
a model smaller once compressed, not faster on dense kernels; the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import numpy as np
import onnx_ir as ir

from mcomp.external_data import release_tensor
from mcomp.kernels import importance as imp
from mcomp.passes.prune import criteria

# op type -> indices of the inputs that are prunable weights
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (0, 1), "LSTM": (1, 2), "GRU": (1, 2),
                 "RNN": (1, 2)}


@dataclass
class Layer:
    node: str
    op: str
    value: ir.Value  # the weight initializer

    @property
    def name(self) -> str:
        return self.value.name


def find_layers(model: ir.Model, exclude: list[str], protect_ends: bool) -> tuple[list[Layer], list[dict]]:
    """Prunable weight tensors in topological order, and those left out with the reason."""
    from mcomp.graph import all_nodes

    layers, skipped, seen = [], [], set()
    for node in all_nodes(model):  # topological order in each graph; subgraph (If/Loop) weights too
        for index in WEIGHT_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None or not value.is_initializer() or value.const_value is None or value.name in seen:
                continue
            if not value.const_value.dtype.is_floating_point() or value.const_value.size < 2:
                continue
            seen.add(value.name)
            layer = Layer(node.name or value.name, node.op_type, value)
            if excluded(node, exclude):
                skipped.append({"tensor": value.name, "node": layer.node, "reason": "excluded by --exclude"})
            elif len(value.uses()) > 1:
                skipped.append({"tensor": value.name, "node": layer.node, "reason": "weight shared by several nodes"})
            else:
                layers.append(layer)
    if protect_ends and len(layers) > 2:
        for layer, where in ((layers[0], "first"), (layers[-1], "last")):
            skipped.append({"tensor": layer.name, "node": layer.node, "reason": f"{where} layer, protected by default"})
        layers = layers[1:-1]
    return layers, skipped


def excluded(node: ir.Node, patterns: list[str]) -> bool:
    """A node is excluded by its op type or by a glob on its name."""
    return any(node.op_type == p or fnmatch(node.name or "", p) for p in patterns)


def weight_scores(layers: list[Layer], criterion: criteria.Criterion, rng: np.random.Generator,
                  grads=None) -> list[np.ndarray]:
    """Each layer's weights scored by ``criterion`` (higher = keep); ``grads``: a ``gradients.Gradients``
    for a criterion that takes gradients."""
    if not criterion.scores_weights:
        raise ValueError(f"importance {criterion.name!r} does not score weights")
    out = []
    for layer in layers:
        evidence = (criteria.Evidence(rng) if grads is None else
                    criteria.Evidence(rng, grad=grads.summed[layer.name], taylor=grads.taylor[layer.name]))
        out.append(criterion.weights(layer.value.const_value.numpy(), evidence))
        release_tensor(layer.value.const_value)  # a mapped weight's pages: not resident beside every score
    return out


def nonzero(layers: list[Layer]) -> int:
    """Non-zero weights over the layers: unstructured pruning changed the model when this fell.
    A mapped weight's pages are released once counted, so the count leaves no weight resident."""
    total = 0
    for layer in layers:
        total += int(np.count_nonzero(layer.value.const_value.numpy()))
        release_tensor(layer.value.const_value)
    return total


class Counts(list):
    """How many weights to zero per tensor, with the global threshold each count was read at (None
    where it was not): ``apply`` then checks that value rather than partitioning the layer again."""

    def __init__(self, counts, thresholds=None):
        super().__init__(counts)
        self.thresholds = list(thresholds) if thresholds is not None else [None] * len(counts)


def allocate(scores: list[np.ndarray], rate: float, scope: str, cap: float) -> Counts:
    """How many weights to zero in each tensor: ``rate`` of all of them, none above ``cap`` of its own."""
    sizes = [s.size for s in scores]
    if scope == "layer":
        return Counts([min(int(round(rate * n)), int(cap * n)) for n in sizes])
    total = int(round(rate * sum(sizes)))
    counts, thresholds = [0] * len(scores), [None] * len(scores)
    free = list(range(len(scores)))
    remaining = total
    # Global threshold, then clip layers above the cap and share their excess among the rest.
    while free and remaining > 0:
        threshold = imp.global_threshold([scores[i] for i in free], remaining / sum(sizes[i] for i in free))
        wanted = {i: imp.count_at_most(scores[i], threshold) for i in free}
        over = [i for i in free if wanted[i] > int(cap * sizes[i])]
        if not over:
            excess = sum(wanted.values()) - remaining  # ties at the threshold: take them back from the largest
            for i in sorted(free, key=lambda i: -wanted[i]):
                take = min(excess, wanted[i])
                wanted[i] -= take
                excess -= take
            for i in free:
                counts[i], thresholds[i] = wanted[i], threshold
            break
        for i in over:
            counts[i] = int(cap * sizes[i])
            remaining -= counts[i]
            free.remove(i)
    return Counts(counts, thresholds)


def apply(layers: list[Layer], scores: list[np.ndarray], counts: Counts | list[int]) -> list[dict]:
    """Zeros the chosen weights in place; returns per-layer figures for the report.

    Consumes ``scores``: each layer's entry is set to None once its mask is made, and the replaced
    weight's mapped pages are released, so a layer's score, its old pages and its pruned copy are
    not all held beside every other layer's (on a big model that was one more copy of the weights)."""
    records = []
    near = getattr(counts, "thresholds", [None] * len(counts))
    for i, (layer, count) in enumerate(zip(layers, counts)):
        keep = imp.prune_mask(scores[i], count, near[i])
        scores[i] = None
        old = layer.value.const_value
        weights = old.numpy()
        # np.where of two arrays of one dtype is of that dtype already: no second copy to convert
        pruned = np.where(keep, weights, np.zeros((), weights.dtype)).astype(weights.dtype, copy=False)
        del keep
        layer.value.const_value = ir.tensor(pruned, name=layer.name)
        release_tensor(old)
        left = int(np.count_nonzero(pruned))
        records.append({"tensor": layer.name, "node": layer.node, "op": layer.op, "params": int(weights.size),
                        "nonzero": left, "sparsity": round(1 - left / pruned.size, 6)})
    return records
