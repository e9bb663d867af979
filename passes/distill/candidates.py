"""Which weights the distill step keeps: every candidate (the input student as epoch 0, and each
trained epoch) is scored on the same examples by the loss of its outputs, so a run that makes
the student worse returns it as it came. The feature terms (hints, hidden states, attention
maps) are reported apart: a learned projection can lower them while the outputs get worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mcomp import graph
from mcomp.passes.distill.objective import Objective
from mcomp.passes.distill.samples import Samples

if TYPE_CHECKING:
    import onnx_ir as ir

    from mcomp.passes.distill.prepare import Plan
    from mcomp.passes.distill.train import FitResult, Job


@dataclass
class Check:
    """The examples on which every candidate (the input student, epoch 0, and the trained epochs)
    is scored: the validation examples; without them, the first ``CHECK_EXAMPLES`` training examples
    (then only the input student and the last epoch are compared)."""

    samples: Samples
    targets: list[np.ndarray]
    prefix: str  # of its keys in the history
    text: str

    @classmethod
    def of(cls, job: Job) -> "Check":
        if job.val is not None:
            return cls(job.val, job.val_targets, "val_", f"the {len(job.val)} validation examples")
        keep = np.arange(min(len(job.train), CHECK_EXAMPLES))
        return cls(job.train.take(keep), [t[keep] for t in job.train_targets], "check_",
                   f"the first {len(keep)} training examples (no validation data)")


CHECK_EXAMPLES = 512


def score(row: dict, monitor: str, prefix: str = "val_") -> tuple:
    """What early stopping and the best epoch look at: the validation loss of the outputs (the
    objective without its feature terms, which a learned projection can lower while the outputs
    get worse; smooth even on a small split), or top-1 accuracy with ties broken by that loss.
    A loss that is not finite scores below every finite one."""
    loss = row.get(f"{prefix}output_loss", row[f"{prefix}loss"])
    loss = loss if math.isfinite(loss) else math.inf
    if monitor == "accuracy" and f"{prefix}accuracy" in row:
        return (row[f"{prefix}accuracy"], -loss)
    return (-loss,)


def score_text(history: list[dict], monitor: str, prefix: str) -> str:
    """The monitored figure of epoch 0 against the best trained epoch's, for the note."""
    key = f"{prefix}accuracy" if monitor == "accuracy" and f"{prefix}accuracy" in history[0] else \
        f"{prefix}output_loss" if f"{prefix}output_loss" in history[0] else f"{prefix}loss"
    trained = [h[key] for h in history[1:] if key in h]
    if not trained:
        return f"{key.replace('_', ' ')} {history[0][key]:.4g}"
    best = max(trained) if key.endswith("accuracy") else min(trained, key=lambda v: v if math.isfinite(v) else math.inf)
    return f"{key.replace('_', ' ')} {history[0][key]:.4g} at epoch 0, at best {best:.4g} after"


TERMS = ("hint", "hidden", "attention")


def term_sums(objective: Objective, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed over the batch: the outputs' loss, then the weighted feature terms of each kind."""
    out = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
    if not objective.hints:
        return out
    loss = objective.output_loss(parts)
    out[0] = float(loss.sum()) if torch.is_tensor(loss) else 0.0
    for key, value in parts.items():
        kind = key.partition(":")[0]
        if kind in TERMS:
            out[TERMS.index(kind) + 1] += objective.weights[kind] * float(value.sum())
    return out


# A trained student whose cosine to the teacher falls by more than this (on the yardstick, as
# onnxruntime runs it) is not written: soft-target KL and cosine may disagree below it.
FIDELITY_SLACK = 1e-4


def further_from_teacher(plan: "Plan") -> bool:
    """Whether training without labels left the written student further from the teacher than the
    input (labels may rightly pull a student away from its teacher): on the cosine, or the centered or
    residual cosine where both have one and it is lower (``evaluate.figure``'s rule): a cut PLCMOS read
    cosine 1.0000 to its teacher before and after, whatever its training did to what tells one clip from another."""
    before, after = plan.yardstick.before or {}, plan.yardstick.after or {}
    if plan.job.train.labels is not None or before.get("cosine") is None or after.get("cosine") is None:
        return False
    return _strict(after, before) < _strict(before, after) - FIDELITY_SLACK


STRICTER = ("centered_cosine", "residual_cosine")  # read beside the cosine where both sides have one


def _strict(figures: dict, other: dict) -> float:
    """The lowest of the cosine and each of ``STRICTER`` that ``figures`` and ``other`` both have."""
    return min([figures["cosine"], *(figures[k] for k in STRICTER if figures.get(k) is not None
                                     and other.get(k) is not None)])


def unchanged(model: "ir.Model", plan: "Plan", result: "FitResult") -> "ir.Model":
    """The input student, returned in place of a trained one that is further from the teacher."""
    before, after = plan.yardstick.before, plan.yardstick.after
    also = "".join(f", {key.split('_')[0]} {before[key]:.4f} → {after[key]:.4f}" for key in STRICTER
                   if before.get(key) is not None and after.get(key) is not None)
    figures = f"cosine {before['cosine']:.4f} → {after['cosine']:.4f}{also}"
    result.notes.append(f"the trained student (epoch {result.best_epoch}) is further from the teacher than the input "
                        f"on {plan.yardstick.text} ({figures}): the input is returned unchanged")
    plan.yardstick.after = before
    result.best_epoch = 0
    return graph.copy(model)
