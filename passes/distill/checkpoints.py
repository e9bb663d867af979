"""Resumable distillation: the training state, and the checkpoint file that carries it between runs.

Apart from the training loop (``train.fit``) because it is a job of its own: what a checkpoint holds
(the student, objective and optimizer states, the best epoch so far, the history), writing it
atomically, and refusing one written for another student, other options, data, seed or batch, so
that ``--resume`` continues exactly the run that was interrupted or says why it cannot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mcomp.errors import BadInput, short

if TYPE_CHECKING:
    from mcomp.passes.distill.train import Job

CHECKPOINT = "last.pt"
FORMAT = 1


@dataclass
class State:
    """Where the training loop stands after an epoch: all a resumed run needs besides the weights."""

    epoch: int = 0
    step: int = 0
    best: dict | None = None
    best_score: tuple | None = None
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False
    history: list[dict] = field(default_factory=list)
    lr: float | None = None


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU: later steps change the module's own in place."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fingerprint(job: Job, module: torch.nn.Module) -> dict:
    skip = {"resume", "checkpoint_dir", "nproc", "epochs", "patience", "time_budget"}
    options = {k: v for k, v in job.config.model_dump(mode="json").items() if k not in skip}
    return {"parameters": {k: list(v.shape) for k, v in module.state_dict().items()}, "options": options,
            "examples": len(job.train), "seed": job.seed, "batch": job.batch_size}


def save(path: Path, fingerprint: dict, state: State, module, objective, optimizer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "fingerprint": fingerprint, "epoch": state.epoch, "step": state.step,
               "student": snapshot(module), "objective": objective.state_dict(),
               "optimizer": optimizer.state_dict(), "best": state.best, "best_score": list(state.best_score or ()),
               "best_epoch": state.best_epoch, "stale": state.stale, "stopped": state.stopped,
               "history": state.history, "lr": state.lr}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path, fingerprint: dict, module, objective, optimizer, device: str) -> State:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise BadInput(f"{path}: cannot read the checkpoint ({short(exc, 160)})") from None
    if payload.get("format") != FORMAT:
        raise BadInput(f"{path}: not a checkpoint of this mcomp distill (format {payload.get('format')})")
    theirs = payload["fingerprint"]
    for key in ("parameters", "options", "examples", "seed", "batch"):
        if theirs.get(key) != fingerprint[key]:
            what = {"parameters": "another student", "options": "other training options",
                    "examples": "other data", "seed": "another seed", "batch": "another batch size"}[key]
            raise BadInput(f"{path}: the checkpoint was written for {what}; remove it, or run without --resume")
    module.load_state_dict(payload["student"], strict=False)
    objective.load_state_dict(payload["objective"])
    optimizer.load_state_dict(payload["optimizer"])
    best = payload["best"]
    return State(payload["epoch"], payload["step"], best, tuple(payload["best_score"]) if best is not None else None,
                  payload["best_epoch"], payload["stale"], payload["stopped"], payload["history"], payload.get("lr"))
