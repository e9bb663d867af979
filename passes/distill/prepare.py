"""Before and after the loop: teacher, examples and checks in; trained weights back into the graph.

Every check that can fail on bad input runs here, before anything is trained or written:
data that does not feed the models, a student whose outputs do not match the teacher's,
labels of the wrong shape, unknown hint tensors, a graph the torch copy cannot run.
The student's fidelity to the teacher is measured here too, before and after training
(whole outputs and their worst slice: see ``mcomp.evaluate.fidelity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx_ir as ir

from mcomp import graph, heads
from mcomp import model as model_io
from mcomp.errors import BadInput, NotApplicable, short
from mcomp.pass_base import Context
from mcomp.passes.distill import hints as hints_io, layout, qdq, qdq_check, samples as samples_io, teacher as teacher_io
from mcomp.passes.distill.objective import check_labels, output_kinds, output_scales
from mcomp.passes.distill import pace as pacing
from mcomp.passes.distill.pace import duration, epochs_text
from mcomp.passes.distill.train import FitResult, Job

# Fidelity to the teacher is measured on at most this many examples (before and after training).
FIDELITY_EXAMPLES = 512


@dataclass
class Yardstick:
    """The examples on which the student is compared with the teacher, before and after training."""

    samples: samples_io.Samples
    teacher: list[np.ndarray]  # the teacher's outputs on them
    names: list[str]  # the student's output names
    text: str  # which examples, for the report
    output_axes: dict[str, int] = field(default_factory=dict)  # outputs whose examples lie on an inner axis
    output_ranks: dict[str, int] = field(default_factory=dict)  # their ranks, as they ran
    before: dict | None = None
    after: dict | None = None


@dataclass
class Plan:
    job: Job
    student: ir.Model  # the copy that is trained and returned (quantized weights exposed)
    shadows: list[qdq.Shadow]
    teacher_source: str
    teacher_run: teacher_io.TeacherRun
    validation: str
    warmstart: dict | None
    qdq_before: dict[str, int]
    yardstick: Yardstick
    notes: list[str] = field(default_factory=list)
    changed_quantized: int = 0


def device(cfg, ctx: Context) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise BadInput("distill: --device cuda, but torch sees no CUDA device here")
    if cfg.device == "cpu" or ctx.provider == "cpu":
        return "cpu"
    return "cuda" if cuda else "cpu"


def plan(model: ir.Model, cfg, ctx: Context) -> Plan:
    from mcomp.passes.distill import warmstart

    started = pacing.clock()
    notes: list[str] = []
    data = ctx.dataset("training", "calibration")
    if data is None:
        raise BadInput("distill: needs training data (--data PATH)")
    if data.synthetic:
        notes.append("trained on synthetic inputs ('random' data): the student learns the teacher on noise only")
    dev, seed = device(cfg, ctx), (cfg.seed if cfg.seed is not None else ctx.seed)
    teacher, source = teacher_io.load(cfg.teacher, cfg.teacher_arch, ctx.reference, model, ctx.input_shapes)
    mapping = teacher_io.input_map(teacher, model)
    student = graph.copy(model)
    qdq_before = qdq.count_qdq(student)
    warm = warmstart.copy_matching(student, teacher) if cfg.init_from_teacher else None
    shadows = qdq.expose(student)
    chosen = hints_io.specs(cfg, student, teacher, notes)
    names = [v.name for v in student.graph.outputs]
    t_names = [v.name for v in teacher.graph.outputs]
    s_extra = hints_io.extra_outputs([h.student for h in chosen], names)
    t_extra = hints_io.extra_outputs([h.teacher for h in chosen], t_names)
    trained = teacher_io.with_outputs(student, s_extra, "student")
    t_model = teacher_io.with_outputs(teacher, t_extra, "teacher")
    examples = samples_io.from_dataset(data, "training")
    student_axes, student_ranks = {}, {}
    runner = teacher_io.Teacher(t_model, mapping, t_names + t_extra, ctx.providers, ctx.threads, dev)
    # an input or output holds its examples on an inner axis (an RNN's state [layers, batch, hidden]):
    # training runs graphs that take and give them first
    if examples.axes or not runner.follows_axis_0(examples):
        trained, student_axes, student_ranks = layout.for_training(trained, examples, {k: k for k in mapping},
                                                                   ctx.providers, ctx.threads, "student", s_extra)
        t_model, _, _ = layout.for_training(t_model, examples, mapping, ctx.providers, ctx.threads, "teacher", t_extra)
        notes.append(layout.describe(examples.axes, student_axes))
        runner = teacher_io.Teacher(t_model, mapping, t_names + t_extra, ctx.providers, ctx.threads, dev)
    train, val, validation = _validation(cfg, ctx, data, examples, seed)
    fixed = _fixed_batch(trained, train, cfg.batch_size, notes)
    batch = fixed or min(cfg.batch_size, len(train))

    # Checks on a few examples first: the teacher and the student run, and their outputs match.
    probe = np.arange(min(len(train), fixed or 8))
    runner.choose_backend(train.batch(probe))
    n_out = len(teacher.graph.outputs)
    student_out = _probe_student(trained, train.batch(probe))
    if shadows:  # before training: onnxruntime must compute the QDQ student as the torch copy does
        note = qdq_check.check(layout.examples_first(model, train.axes, {}), train.batch(probe), ctx.providers,
                               ctx.threads, cfg.qdq_check)
        notes += [note] if note else []
    teacher_out = runner(train.batch(probe))
    _check_per_example(teacher_out, t_names + t_extra, len(probe), "teacher", len(t_names))
    _check_per_example(student_out, names + s_extra, len(probe), "student", len(names))
    _check_outputs(student_out[:len(names)], teacher_out[:n_out], names, t_names)
    hints_io.check_memory(t_extra, teacher_out[n_out:], len(probe), len(train) + (len(val) if val is not None else 0))
    kinds = output_kinds(names, teacher_out[:n_out], heads.softmax_outputs(student), heads.sigmoid_outputs(student))
    if all(k.kind == "ignored" for k in kinds):
        raise NotApplicable("distill: the model has no floating-point output to distill", "distill")
    for part, where, count in ((train, data.source, len(examples)), (val, validation.source, validation.count)):
        if part is not None and part.labels is not None and part.labels.dtype.kind in "USO":
            # a text recognizer's strings: no loss trains on them, a --metric reads them (a crash before)
            part.labels = None
            if not any(n.startswith("the labels are text") for n in notes):
                notes.append("the labels are text, not class indices or targets: trained on the teacher's outputs "
                             "alone (a --metric reads the labels when the result is measured)")
        if part is not None and part.labels is not None:
            part.labels = check_labels(part.labels, kinds, _task_target(kinds, teacher_out), where, count)

    train_targets = runner.targets(train, max(batch, 64), ctx.progress)
    val_targets = runner.targets(val, max(batch, 64)) if val is not None else None
    yardstick = _yardstick(ctx, data, validation, train, train_targets[:n_out], val,
                           val_targets[:n_out] if val is not None else None, runner, max(batch, 64), names)
    yardstick.output_axes = {k: v for k, v in student_axes.items() if k in names}
    yardstick.output_ranks = student_ranks
    runner.close()
    hints = hints_io.build(chosen, student, names + s_extra, student_out, t_names + t_extra, teacher_out,
                           train_targets, notes)
    measuring = pacing.clock()
    yardstick.before = fidelity(model, yardstick, ctx)
    reserve = pacing.clock() - measuring  # measuring the result again takes about as long
    scales = output_scales(kinds, train_targets[:n_out], train.inputs)  # a pass-through output: what it adds
    job = Job(model_io.to_bytes(trained), kinds, hints, train, train_targets, val, val_targets, cfg, seed, dev,
              batch, fixed, cfg.checkpoint_dir, cfg.resume, ctx.threads, scales, started, reserve)
    return Plan(job, student, shadows, source, runner.run, validation.text, warm, qdq_before, yardstick,
                notes + runner.run.notes)


def _yardstick(ctx: Context, data, validation: "_Validation", train: samples_io.Samples, train_out: list[np.ndarray],
               val: samples_io.Samples | None, val_out: list[np.ndarray] | None, runner: teacher_io.Teacher,
               batch: int, names: list[str]) -> Yardstick:
    """The evaluation data where it is another set than the training data, else the held-out
    validation examples, else the training examples; at most ``FIDELITY_EXAMPLES`` of them."""
    evaluation = ctx.data.get("evaluation")
    distinct = evaluation is not None and evaluation is not data and evaluation.source != data.source
    if distinct and validation.source == evaluation.source:  # validation runs on the evaluation data
        samples, teacher, text = val, val_out, f"the evaluation data ({evaluation.source})"
    elif distinct:
        samples, teacher, text = samples_io.from_dataset(evaluation, "evaluation"), None, \
            f"the evaluation data ({evaluation.source})"
    elif val is not None:
        samples, teacher, text = val, val_out, "the validation examples"
    else:
        samples, teacher, text = train, train_out, "the training examples"
    if len(samples) > FIDELITY_EXAMPLES:
        keep = np.arange(FIDELITY_EXAMPLES)
        samples, teacher = samples.take(keep), None if teacher is None else [t[keep] for t in teacher]
        text += f", the first {FIDELITY_EXAMPLES}"
    if teacher is None:
        teacher = runner.targets(samples, batch)[:len(names)]
    return Yardstick(samples, teacher, names, f"{text}: {len(samples)} example{'' if len(samples) == 1 else 's'}")


def fidelity(model: ir.Model, yardstick: Yardstick, ctx: Context) -> dict:
    """The student's outputs (onnxruntime, as deployed) against the teacher's on the yardstick's
    examples: whole-output cosine, and the worst slice along channel-like axes (output, axis,
    index, cosine, SQNR), where a detector's class rows show what the whole cosine hides."""
    from mcomp import evaluate, residuals
    from mcomp.data import Dataset

    model = layout.examples_first(model, yardstick.samples.axes, yardstick.output_axes, yardstick.output_ranks)
    runner = teacher_io.Teacher(model, teacher_io.input_map(model, model), yardstick.names, ctx.providers,
                                ctx.threads, "cpu")
    try:
        outs = runner.targets(yardstick.samples, 64)
    finally:
        runner.close()
    teacher = [[t] for t in yardstick.teacher]
    summary = evaluate.fidelity(teacher, [[o] for o in outs], yardstick.names)["summary"]
    # what tells one example from another, which the cosine hides (a cut PLCMOS read cosine 1.0000 to its teacher)
    centered = evaluate.lowest_centered(teacher, [[o] for o in outs], evaluate.centers(teacher))
    # what an output adds to an input it passes on (a watermark encoder's cut read 0.9999 → 0.9999, 0.82 → 0.91 so)
    inputs = yardstick.samples.inputs
    residual = residuals.lowest(teacher, [[o] for o in outs], residuals.bases(teacher, Dataset([inputs]), list(inputs)))
    return {**{k: summary[k] for k in ("cosine", "slice_cosine", "worst_slice", "relative_l2")},
            "slice_sqnr_db": _lowest_slice_sqnr(yardstick.teacher, outs), "centered_cosine": centered,
            "residual_cosine": residual}


def _lowest_slice_sqnr(teacher: list[np.ndarray], student: list[np.ndarray]) -> float | None:
    """The lowest SQNR (dB) of any slice along a float output's channel-like axes (None: every one exact).
    A whole output's relative L2 can hide one slice: a detector's 0–1 class rows beside its 0–640 boxes."""
    from mcomp.kernels import fidelity as fk

    lowest = None
    for t, o in zip(teacher, student):
        if t.dtype.kind != "f" or t.shape != o.shape:
            continue
        for axis in fk.channel_axes(t):
            for row in fk.per_slice(t, o, axis):
                if np.isfinite(row["sqnr_db"]) and (lowest is None or row["sqnr_db"] < lowest):
                    lowest = row["sqnr_db"]
    return lowest


# A student whose outputs are this close to its teacher's (relative L2, every float output, and every slice
# along their channel-like axes) computes what the teacher does: a graph re-saved or re-optimized by another
# tool differs by float rounding (~1e-7), while the lightest compression mcomp makes (fp16 weights) differs
# by ~1e-3. The same bound as an SQNR: 100 dB.
SAME_OUTPUTS = 1e-5
SAME_SLICE_DB = -20 * np.log10(SAME_OUTPUTS)


def same_as_teacher(plan: Plan) -> str | None:
    """Why there is nothing to distill, or None: the student already computes its teacher's outputs on the
    yardstick's examples. A teacher given as another file of the same graph (re-saved by another tool, so
    not the input's bytes) has nothing to win back, and the LR range test on a loss of 0 picks from noise.
    Not asked of a student initialised from its teacher: that copy is the point of the run."""
    before = plan.yardstick.before or {}
    l2 = before.get("relative_l2")
    if plan.warmstart is not None or l2 is None or not np.isfinite(l2) or l2 > SAME_OUTPUTS:
        return None
    if before.get("slice_sqnr_db") is not None and before["slice_sqnr_db"] < SAME_SLICE_DB:
        return None  # one slice differs (a detector's class rows), though the whole output is close
    return (f"the student already computes its teacher's outputs on {plan.yardstick.text} (relative L2 {l2:.1e}): "
            "no step before it changed what the model computes")


@dataclass
class _Validation:
    text: str  # for the report
    source: str  # where the validation examples come from (for error messages)
    count: int  # examples in that source


def _validation(cfg, ctx: Context, data, examples: samples_io.Samples, seed: int):
    """Training and validation examples: a split of the training data, or the evaluation data."""
    evaluation = ctx.data.get("evaluation")
    if cfg.val_split > 0 or evaluation is None or evaluation is data:
        train, val = samples_io.split(examples, cfg.val_split, seed)
        text = (f"{len(val)} of {len(examples)} training examples held out (val_split {cfg.val_split})"
                if val is not None else "none (the best epoch is the last)")
        return train, val, _Validation(text, data.source, len(examples))
    val = samples_io.from_dataset(evaluation, "evaluation")
    return examples, val, _Validation(f"the evaluation data ({evaluation.source}, {len(val)} examples)",
                                      evaluation.source, len(val))




def _fixed_batch(trained: ir.Model, train: samples_io.Samples, batch_size: int,
                 notes: list[str]) -> int | None:
    """The batch each process must train with when the model's batch dim is fixed (else None)."""
    fixed = teacher_io.fixed_batch_of(trained)  # its inputs take examples first (``layout``)
    if fixed and _runs_any_batch(trained, train, fixed):
        notes.append(f"the model's batch dim is fixed at {fixed}, but its graph runs any batch: trained in batches "
                     f"of {batch_size} (the written model keeps its fixed batch)")
        return None
    if fixed:
        notes.append(f"the model's batch dim is fixed at {fixed}: each process trains {fixed} example(s) per step")
    return fixed


def _task_target(kinds, targets: list[np.ndarray]) -> np.ndarray:
    from mcomp.passes.distill.objective import task_output

    return targets[task_output(kinds)]






def _student_module(trained: ir.Model):
    """The student's torch copy. A graph the converter cannot run cannot be distilled whatever distill's
    options (NotApplicable): ``mcomp auto`` then leaves distill out of later trials (a TfidfVectorizer
    pipeline's Tokenizer failed 42 of 234 trials in a 2-minute search)."""
    from mcomp.torch_graph import UnsupportedOp, to_torch

    try:
        return to_torch(trained)
    except UnsupportedOp as exc:
        raise NotApplicable(str(exc), "distill") from None


def _probe_student(trained: ir.Model, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The torch copy of the student on a few examples: its outputs (and hint tensors)."""
    import torch

    module = _student_module(trained)  # exit 2 for graphs the converter cannot run
    try:
        with torch.no_grad():
            outs = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()})
    except (RuntimeError, ValueError, IndexError) as exc:  # torch's errors on shapes and values; a bug surfaces
        raise BadInput(f"distill: the student fails on the data ({short(exc, 200)})") from None
    return [o.numpy() for o in outs]


def _runs_any_batch(trained: ir.Model, train: samples_io.Samples, fixed: int) -> bool:
    """Whether the torch copy gives the same per-example outputs for a batch of 2·fixed as for
    batches of ``fixed`` (no batch size baked into a Reshape, say)."""
    import torch

    if len(train) < 2 * fixed:
        return False
    module = _student_module(trained)
    index = np.arange(2 * fixed)
    try:
        with torch.no_grad():
            tensors = lambda i: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in train.batch(i).items()}
            both = module(**tensors(index))
            parts = [module(**tensors(index[:fixed])), module(**tensors(index[fixed:]))]
        return all(b.shape[0] == 2 * fixed and torch.allclose(b, torch.cat([p[k] for p in parts]), rtol=1e-4, atol=1e-5)
                   for k, b in enumerate(both))
    except (RuntimeError, ValueError, IndexError):  # the graph does not run at the other batch size
        return False


def _check_per_example(outputs: list[np.ndarray], names: list[str], examples: int, which: str, n_outputs: int) -> None:
    """Every output (and hint tensor: those past the first ``n_outputs``) gives one entry per example
    on axis 0 (inputs on an inner axis were moved first by ``layout``). Else training cannot split the
    teacher's targets by example: silero-vad's sequence model (axis 0 is time, the state [1, 1, 128]
    is the whole sequence's) raised numpy's "all the input array dimensions … must match" (exit 1).
    A model output refused is the model's, whatever the options (``NotApplicable``); a hint, the option's."""
    for i, (name, out) in enumerate(zip(names, outputs)):
        if out.ndim == 0 or out.shape[0] != examples:
            error = partial(NotApplicable, pass_name="distill") if i < n_outputs else BadInput
            raise error(f"distill: the {which}'s {name!r} is {list(out.shape)} for {examples} examples: its axis 0 "
                        "does not follow the examples (a state kept for the whole batch, or a sequence whose axis "
                        "0 is time), so it cannot be compared example by example")


def _check_outputs(student: list[np.ndarray], teacher: list[np.ndarray], s_names: list[str], t_names: list[str]) -> None:
    def fmt(names, arrays):
        return ", ".join(f"{n} [N, {', '.join(str(d) for d in a.shape[1:])}]".replace(", ]", "]")
                         for n, a in zip(names, arrays))

    same = len(student) == len(teacher) and all(s.shape[1:] == t.shape[1:] for s, t in zip(student, teacher))
    if not same:
        raise BadInput(f"distill: the student's outputs ({fmt(s_names, student)}) do not match the teacher's "
                       f"({fmt(t_names, teacher)})")




def finish(plan: Plan, state: dict, ctx: Context) -> ir.Model:
    """The trained weights written into the student graph; quantized weights rounded back; the
    result compared with the teacher."""
    from mcomp.torch_graph import to_torch, write_back

    module = to_torch(plan.student)
    module.load_state_dict({k: v for k, v in state.items() if k in module.state_dict()}, strict=False)
    write_back(module, plan.student)
    plan.changed_quantized = qdq.restore(plan.student, plan.shadows)
    plan.yardstick.after = fidelity(plan.student, plan.yardstick, ctx)
    return plan.student


def record(plan: Plan, result: FitResult, cfg) -> tuple[str, list[str], dict]:
    """The step's one-line summary, its notes for people, and its details for the report."""
    history = result.history
    first, best = history[0], next((h for h in history if h["epoch"] == result.best_epoch), history[-1])
    ran = history[-1]["epoch"] - (result.resumed_from or 0)
    if "val_accuracy" in first:
        score = f"val accuracy {first['val_accuracy']:.2%} → {best['val_accuracy']:.2%}"
    elif "val_loss" in first:
        key = "val_output_loss" if "val_output_loss" in first else "val_loss"
        score = f"val {key[4:].replace('_', ' ')} {first[key]:.4f} → {best[key]:.4f}"
    elif len(history) > 1 and "check_loss" in history[-1]:
        key = "check_output_loss" if "check_output_loss" in first else "check_loss"
        score = (f"{key[6:].replace('_', ' ')} on training examples {first[key]:.4f} → {history[-1][key]:.4f} "
                 f"(last epoch)")
    else:
        score = f"train loss {history[1]['loss']:.4f} → {history[-1]['loss']:.4f}" if len(history) > 1 else "no epochs run"
    seconds = f"{result.seconds_per_epoch:.2f} s/epoch" if result.seconds_per_epoch is not None else "no epochs run"
    procs = f", {result.world} processes" if result.world > 1 else ""
    timing = result.timing
    budget = ""
    if cfg.time_budget is not None and timing["planned_epochs"] is None:
        budget = f" (the time budget of {duration(cfg.time_budget)} ran out before training could be timed)"
    elif cfg.time_budget is not None:
        budget = (f" ({timing['planned_epochs']:g} of {cfg.epochs} planned for a time budget of "
                  f"{duration(cfg.time_budget)})")
    lr = f"lr {result.lr:.2g}{' (LR range test)' if result.lr_test else ''}" if result.lr is not None else "no lr"
    stopped = " (stopped early)" if result.stopped_early else ""
    summary = (f"{epochs_text(history[-1]['epoch'])}{budget}{stopped}, best epoch {result.best_epoch}: {score}; "
               f"{_fidelity_text(plan.yardstick)}; {seconds}{procs}; {lr}; teacher on {plan.teacher_run.backend}")
    notes = list(plan.notes) + list(result.notes)
    if result.resumed_from is not None:
        notes.append(f"resumed from the checkpoint after epoch {result.resumed_from}; {ran} epochs run now")
    if result.lr_test is not None:
        t = result.lr_test
        notes.append(f"lr {t['lr']:.2g} from an LR range test ({t['steps']} batches at lr {t['tried'][0]:.0e}…"
                     f"{t['tried'][1]:.2g}, {t['seconds']:.1f} s): {t['rule']}; --lr skips the test")
    if cfg.time_budget is not None:
        notes.append(f"epochs: {timing['why']}")
    if plan.shadows:
        notes.append(f"quantized student: {len(plan.shadows)} integer weight tensors trained through fake "
                     f"quantization and rounded back with their scales ({plan.changed_quantized} changed)")
    job = plan.job
    labelled = job.train.labels is not None
    lr_source = "--lr" if cfg.lr is not None else "LR range test" if result.lr_test else "the checkpoint"
    out = {
        "history": history, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early, "seconds_per_epoch": result.seconds_per_epoch,
        "teacher": {"source": plan.teacher_source, "backend": plan.teacher_run.backend,
                    "microseconds_per_example": plan.teacher_run.timings},
        "loss": {"outputs": {k.name: (scale.describe() if scale is not None else k.loss_name())
                             for k, scale in zip(job.kinds, job.scales or [None] * len(job.kinds))},
                 "temperature": cfg.temperature, "alpha": cfg.alpha if labelled else 0.0,
                 "task": "labels" if labelled else "none (no labels: soft targets only)",
                 "hints": [f"{h.student}={h.teacher}" for h in job.hints if h.kind == "hint"],
                 **_feature_losses(job.hints, cfg)},
        "data": {"training_examples": len(job.train), "validation": plan.validation},
        "training": {"device": job.device, "processes": result.world, "batch_size": result.batch_size or job.batch_size,
                     "optimizer": cfg.optimizer, "lr": result.lr, "lr_source": lr_source, "schedule": cfg.schedule,
                     "warmup_epochs": cfg.warmup_epochs, "seed": job.seed},
        "time": timing,
        "fidelity": {"data": plan.yardstick.text, "before": plan.yardstick.before, "after": plan.yardstick.after},
    }
    if result.lr_test is not None:
        out["lr_range_test"] = result.lr_test
    if plan.shadows:
        out["quantized"] = {"tensors": len(plan.shadows), "changed": plan.changed_quantized,
                            "qdq_nodes": plan.qdq_before}
    if plan.warmstart is not None:
        out["init_from_teacher"] = {k: v for k, v in plan.warmstart.items() if k != "pairs"}
        notes.append(f"init from teacher: {plan.warmstart['copied']} of {plan.warmstart['student_weights']} "
                     "weights copied")
    return summary, notes, out


def _feature_losses(hints, cfg) -> dict:
    """The hidden-state and attention-map losses in the report: matched pairs, loss and weight."""
    out = {}
    hidden = [f"{h.student}={h.teacher}" for h in hints if h.kind == "hidden"]
    if hidden:
        out["hidden"] = {"pairs": hidden, "loss": "MSE over the teacher's variance, projected along the hidden axis",
                         "weight": cfg.hidden_weight}
    attention = [h for h in hints if h.kind == "attention"]
    if attention:
        heads = " (averaged over heads)" if any(h.student_channels != h.teacher_channels for h in attention) else ""
        out["attention"] = {"pairs": [f"{h.student}={h.teacher}" for h in attention],
                            "loss": ("KL(teacher ‖ student) per query row" if cfg.attention_loss == "kl"
                                     else "MSE over the teacher's variance") + heads,
                            "weight": cfg.attention_weight}
    return out


def _fidelity_text(yardstick: Yardstick) -> str:
    """Cosine to the teacher before → after; the worst slice too where an output has channel-like axes."""
    before, after = yardstick.before or {}, yardstick.after or {}
    if before.get("cosine") is None or after.get("cosine") is None:
        return "fidelity to the teacher not measured (no float output)"
    text = f"cosine to the teacher {before['cosine']:.4f} → {after['cosine']:.4f}"
    also = [f"{what} {before[key]:.4f} → {after[key]:.4f}" for key, what in
            (("centered_cosine", "centered"), ("residual_cosine", "residual"))
            if before.get(key) is not None and after.get(key) is not None]
    text += f" ({', '.join(also)})" if also else ""
    worst = after.get("worst_slice") or before.get("worst_slice")
    if worst is not None:
        text += (f", worst slice {before['slice_cosine']:.4f} → {after['slice_cosine']:.4f} "
                 f"({worst['output']} axis {worst['axis']} #{worst['index']})")
    return text
