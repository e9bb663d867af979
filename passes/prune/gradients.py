"""Gradients of a loss with respect to the model's weights, through a torch copy of the graph.

The loss: cross-entropy against the data's labels where there are some; otherwise the
reference model's own predictions serve as targets (pseudo-labels for classifier-shaped
outputs — the gradient of a loss against the model's own soft outputs would be zero — and
the outputs' energy ½‖f(x)‖² for others), so Taylor importance works on unlabeled data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp.data import Dataset
from mcomp.errors import BadInput
from mcomp.kernels.fidelity import beside_normalized_scores, is_classifier_shaped


@dataclass
class Gradients:
    summed: dict[str, np.ndarray]  # Σ over batches of ∂L/∂w, by ONNX tensor name
    taylor: dict[str, np.ndarray]  # Σ over batches of |w · ∂L/∂w| (first-order Taylor, per batch)
    loss: str
    batches: int


def collect(model: ir.Model, dataset: Dataset, names: set[str], batches: int) -> Gradients:
    import torch

    from mcomp.torch_graph import to_torch

    module = to_torch(model, trainable=lambda name: name in names)
    module.eval()
    params = {name: module.parameter_for(name) for name in names}
    params = {n: p for n, p in params.items() if p is not None}
    summed = {n: np.zeros(tuple(p.shape), np.float32) for n, p in params.items()}
    taylor = {n: np.zeros(tuple(p.shape), np.float32) for n, p in params.items()}
    feeds = dataset.feeds[:batches]
    labels = dataset.labels[:batches] if dataset.has_labels else [None] * len(feeds)
    loss_kind = "labels" if dataset.has_labels else "pseudo-labels / output energy"
    if not params:  # nothing to score (no channel group found): no pass over the data
        return Gradients(summed, taylor, loss_kind, 0)
    for feed, label in zip(feeds, labels):
        module.zero_grad(set_to_none=True)
        outputs = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
        loss = _loss(outputs, label)
        if not loss.requires_grad:  # torch's own error ("element 0 of tensors does not require grad") says less
            raise BadInput(f"taylor importance: none of the {len(params)} weights it scores reaches the outputs in "
                           "the torch copy of the graph; use another importance (l1, l2)")
        loss.backward()
        for name, p in params.items():
            if p.grad is None:
                continue
            g = p.grad.detach().numpy()
            summed[name] += g
            taylor[name] += np.abs(p.detach().numpy() * g)
    return Gradients(summed, taylor, loss_kind, len(feeds))


def _loss(outputs, labels):
    import torch
    import torch.nn.functional as F

    values = [o.detach().numpy() if o.is_floating_point() else None for o in outputs]
    regressions = beside_normalized_scores(values)
    scores = next((i for i, v in enumerate(values) if v is not None and i not in regressions
                   and is_classifier_shaped(v)), None)  # the labels' output: not boxes beside a softmax
    if scores is not None:
        first = outputs[scores]
        logits = first.reshape(-1, first.shape[-1])
        if _is_probability(logits):  # the graph ends in Softmax: take the log for the likelihood
            logits = torch.log(logits.clamp_min(1e-12))
        if labels is not None:
            target = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)
        else:
            target = logits.detach().argmax(dim=-1)
        return F.cross_entropy(logits, target)
    return sum(0.5 * (o.float() ** 2).mean() for o in outputs if o.is_floating_point())


def _is_probability(x) -> bool:
    import torch

    x = x.detach()
    return bool(x.min() >= 0) and bool(torch.allclose(x.sum(dim=-1), torch.ones(x.shape[0]), atol=1e-3))
