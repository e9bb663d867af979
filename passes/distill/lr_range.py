"""The LR range test, run: a throw-away copy of a torch model steps through rising learning rates.

Reusable by anything that trains a torch module (distillation's default ``lr``; a search's
single passes): the caller says how to compute the loss of mini-batch ``k`` and how to make its
optimizer; the curve is read by :func:`mcomp.kernels.lr_range.choose_lr`. The copy is thrown
away, so the model's weights and the optimizer's state are untouched.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mcomp.kernels import lr_range

# Learning rates tried (and the clamp on the one chosen) per optimizer family: adaptive
# optimizers (Adam, AdamW) train at 1e-5..1e-1, SGD with momentum at about ten times more.
RANGES = {"adaptive": (1e-6, 1.0, 1e-5, 1e-1), "sgd": (1e-5, 10.0, 1e-4, 1.0)}


@dataclass
class RangeTest:
    lr: float  # the rate to train with
    rule: str  # how it was read off the curve
    lrs: list[float]  # the rates tried, in order (fewer than ``steps`` when the loss blew up early)
    losses: list[float]  # the loss of each step
    min_loss_lr: float
    steepest_lr: float
    seconds: float

    def report(self) -> dict:
        return {"lr": self.lr, "rule": self.rule, "tried": [min(self.lrs), max(self.lrs)], "steps": len(self.lrs),
                "min_loss_lr": self.min_loss_lr, "steepest_lr": self.steepest_lr, "seconds": round(self.seconds, 3),
                "curve": [[float(f"{a:.4g}"), float(f"{b:.6g}") if np.isfinite(b) else None]
                          for a, b in zip(self.lrs, self.losses)]}


def range_test(model: torch.nn.Module, loss: Callable[[torch.nn.Module, int], torch.Tensor],
               make_optimizer: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer], *,
               family: str = "adaptive", steps: int = 36, cycle: int | None = None,
               progress: Callable[[str, int, int], None] = lambda *a: None) -> RangeTest:
    """Steps a deep copy of ``model`` through ``steps`` learning rates rising exponentially over
    the ``family``'s range (``RANGES``), stopping once the loss blows up; returns the rate to
    train with. ``loss(copy, k)``: the mean loss of the copy on mini-batch ``k`` (a graph to
    back-propagate); ``make_optimizer(params, lr)``: the optimizer training will use.

    ``cycle``: where ``loss`` cycles through that many distinct mini-batches, each loss is read
    relative to the same batch's first loss (taken at the lowest rates, which barely move the
    model). Batches can differ in loss by 100× (a detector's images: one with a rare class
    scores a large standardized error), which would otherwise read as divergence at any rate."""
    low, high, lowest, highest = RANGES[family]
    start = time.perf_counter()
    trial = copy.deepcopy(model).train()
    params = [p for p in trial.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, low)
    lrs, losses, losses_raw = [], [], []
    for k, lr in enumerate(lr_range.sweep(low, high, steps)):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        value = loss(trial, k)
        value.backward()
        optimizer.step()
        lrs.append(lr)
        raw = float(value.detach())
        if cycle and cycle > 1 and k >= cycle:
            base = losses_raw[k % cycle]
            losses.append(raw / base if base > 0 else raw)
        else:
            losses.append(1.0 if cycle and cycle > 1 else raw)
        losses_raw.append(raw)
        progress(f"LR range test · lr {lr:.2g} · loss {losses[-1]:.4g}", k + 1, steps)
        if lr_range.diverged(losses):
            break
    choice = lr_range.choose_lr(lrs, losses, lowest=lowest, highest=highest)
    return RangeTest(choice["lr"], choice["rule"], lrs, losses, choice["min_loss_lr"], choice["steepest_lr"],
                     time.perf_counter() - start)
