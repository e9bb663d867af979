"""``mcomp distill STUDENT --teacher MODEL --data DATA [...]``: distillation as a one-step pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mcomp.cli import console
from mcomp.cli.options import (Arch, Data, Debug, InputShape, Json, ModelArg, Output, Provider, Quiet, Report,
                               ReportMd, Runs, Threads, Trust)
from mcomp.cli.pass_command import Common, rank_scratch, run_single_pass, torchrun_rank

Opt = typer.Option


def distill(
    student: ModelArg,
    teacher: Annotated[str, Opt("--teacher", help="teacher model: ONNX or a PyTorch checkpoint", show_default=False)],
    data: Data = None,
    eval_data: Annotated[Optional[str], Opt("--eval-data", help="held-out data for the report's accuracy [default: --data]", show_default=False)] = None,
    teacher_arch: Annotated[Optional[str], Opt("--teacher-arch", help="module:factory for a state_dict teacher", show_default=False)] = None,
    epochs: Annotated[int, Opt("--epochs", min=1, help="epochs to train (at most: see --time-budget)")] = 20,
    time_budget: Annotated[Optional[float], Opt("--time-budget", metavar="SECONDS", min=0, help="seconds for the whole step: the first batches are timed, then the epochs that fit are planned and the schedule ends with them", show_default=False)] = None,
    batch_size: Annotated[int, Opt("--batch-size", min=1, help="examples per step, over all processes")] = 64,
    optimizer: Annotated[str, Opt("--optimizer", help="adamw | adam | sgd")] = "adamw",
    lr: Annotated[Optional[float], Opt("--lr", help="base learning rate [default: auto, from a short LR range test on a throw-away copy of the student]", show_default=False)] = None,
    weight_decay: Annotated[float, Opt("--weight-decay")] = 1e-4,
    momentum: Annotated[float, Opt("--momentum", help="sgd: Nesterov momentum")] = 0.9,
    schedule: Annotated[str, Opt("--schedule", help="cosine | constant | step | exponential | polynomial | inverse-time")] = "cosine",
    warmup_epochs: Annotated[float, Opt("--warmup-epochs", help="linear warm-up before the schedule")] = 1.0,
    lr_decay: Annotated[float, Opt("--lr-decay", help="step: factor; exponential/inverse-time: rate per epoch")] = 0.1,
    lr_step_epochs: Annotated[float, Opt("--lr-step-epochs", help="step: epochs between decays")] = 10,
    lr_power: Annotated[float, Opt("--lr-power", help="polynomial: exponent of (1 - t/T)")] = 1.0,
    min_lr: Annotated[float, Opt("--min-lr", help="floor of the schedule")] = 0.0,
    temperature: Annotated[float, Opt("--temperature", "-T", help="softmax temperature of the soft targets")] = 4.0,
    alpha: Annotated[float, Opt("--alpha", help="weight of the task loss where there are labels")] = 0.3,
    hint: Annotated[Optional[list[str]], Opt("--hint", help="feature loss STUDENT_TENSOR=TEACHER_TENSOR; repeatable; 'auto' (default): the inputs of the last two layers named alike in both; 'none'", show_default=False)] = None,
    hint_weight: Annotated[float, Opt("--hint-weight")] = 1.0,
    val_split: Annotated[float, Opt("--val-split", help="share of --data held out for validation and early stopping")] = 0.1,
    patience: Annotated[int, Opt("--patience", min=0, help="epochs without improvement before stopping (0: never)")] = 10,
    clip_grad: Annotated[Optional[float], Opt("--clip-grad", help="clip the gradient norm", show_default=False)] = None,
    keep_sparsity: Annotated[bool, Opt("--keep-sparsity/--no-keep-sparsity", help="pruned (zero) weights stay zero")] = True,
    init_from_teacher: Annotated[bool, Opt("--init-from-teacher", help="start from the teacher's weights where shapes match")] = False,
    checkpoint_dir: Annotated[Optional[str], Opt("--checkpoint-dir", help="checkpoint folder [default: <output stem>.ckpt beside the output]", show_default=False)] = None,
    no_checkpoint: Annotated[bool, Opt("--no-checkpoint", help="write no checkpoints")] = False,
    resume: Annotated[bool, Opt("--resume", help="continue from the checkpoint, if there is one")] = False,
    nproc: Annotated[int, Opt("--nproc", min=1, help="data-parallel processes (torch.distributed; or run under torchrun)")] = 1,
    device: Annotated[str, Opt("--device", help="auto | cpu | cuda (training)")] = "auto",
    seed: Annotated[int, Opt("--seed", help="seed for the split, the order of examples and initialisation")] = 0,
    output: Output = None, provider: Provider = "auto", threads: Threads = None,
    json: Json = False, report: Report = None, report_md: ReportMd = None, input_shape: InputShape = None,
    arch: Arch = None, trust_checkpoint: Trust = False, runs: Runs = 30,
    quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Train STUDENT to match TEACHER (soft targets at a temperature, plus the labels where --data has some).

    Examples: mcomp distill model.prune.onnx --teacher model.onnx --data train.npz --eval-data eval.npz;
    mcomp distill model.quantize.onnx --teacher model.onnx --data train.npz --epochs 10 (stays QDQ);
    torchrun --nproc-per-node 2 -m mcomp distill s.onnx --teacher t.onnx --data train.npz
    """
    rank = torchrun_rank()
    with rank_scratch(rank) as scratch:
        console.configure(quiet or rank > 0, json and rank == 0)
        with console.guard(debug):
            options = {"teacher": teacher, "teacher_arch": teacher_arch, "epochs": epochs, "time_budget": time_budget,
                       "batch_size": batch_size,
                       "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                       "schedule": schedule, "warmup_epochs": warmup_epochs, "lr_decay": lr_decay,
                       "lr_step_epochs": lr_step_epochs, "lr_power": lr_power, "min_lr": min_lr,
                       "temperature": temperature, "alpha": alpha, "hints": hint, "hint_weight": hint_weight,
                       "val_split": val_split, "patience": patience, "clip_grad": clip_grad,
                       "keep_sparsity": keep_sparsity, "init_from_teacher": init_from_teacher, "resume": resume, "nproc": nproc, "device": device,
                       "seed": seed}
            if scratch is not None:  # a torchrun worker other than rank 0: train, write nothing that stays
                output, report, report_md, json = str(Path(scratch) / "model.onnx"), Path(scratch) / "r.json", None, False
            if not no_checkpoint:
                options["checkpoint_dir"] = checkpoint_dir or default_checkpoint_dir(student, output)
            common = Common(student, output, data, provider, threads, json, report, report_md, input_shape, arch,
                            trust_checkpoint, runs)
            run_single_pass("distill", options, common, eval_data=eval_data, latency=scratch is None, seed=seed)


def default_checkpoint_dir(student: str, output: str | None) -> str | None:
    """``<output stem>.ckpt`` beside the output (``model.distill.ckpt`` for ``model.distill.onnx``)."""
    from mcomp.model import default_output

    if output and output != "-":
        path = Path(output)
    elif student != "-":
        path = default_output(student, "distill")
    else:
        return None
    stem = path.stem if path.stem.endswith(".distill") else f"{path.stem}.distill"
    return str(path.with_name(f"{stem}.ckpt"))
