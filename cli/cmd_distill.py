"""``mcomp distill STUDENT --teacher MODEL --data DATA [...]``: the distill Config's options (cli/generate.py),
plus what belongs to the command: a held-out set for the report, checkpoints beside the output, torchrun ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mcomp.cli.generate import CommandSpec
from mcomp.cli.pass_command import Common, rank_scratch, run_single_pass, torchrun_rank


def _run(options: dict, extra: dict, common: Common) -> dict | None:
    """Rank 0 (or a plain run) writes model and report; other torchrun ranks train and write nothing that stays."""
    from mcomp.cli import console

    rank = torchrun_rank()
    with rank_scratch(rank) as scratch:
        if scratch is not None:
            console.configure(True, False)
            common.output, common.report, common.report_md = str(Path(scratch) / "model.onnx"), Path(scratch) / "r.json", None
            common.json, common.report_html = False, None
        if not extra["no_checkpoint"] and options.get("checkpoint_dir") is None:
            options["checkpoint_dir"] = default_checkpoint_dir(common.model, common.output)
        elif extra["no_checkpoint"]:
            options["checkpoint_dir"] = None
        seed = options.get("seed")
        return run_single_pass("distill", options, common, eval_data=extra["eval_data"], latency=scratch is None,
                               seed=seed if seed is not None else 0)


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


SPEC = CommandSpec(
    argument="student",
    argument_help="the student: ONNX model, PyTorch checkpoint, or - for stdin",
    flags={"hints": ("--hint",), "temperature": ("--temperature", "-T"),
           "keep_sparsity": ("--keep-sparsity/--no-keep-sparsity",)},
    required=("teacher",),
    extra=(
        ("eval_data", Annotated[Optional[str], typer.Option(
            "--eval-data", "--eval", help="held-out data for the report's accuracy [default: --data]",
            show_default=False,
            metavar="PATH", rich_help_panel="Validation and checkpoints")], None),
        ("no_checkpoint", Annotated[bool, typer.Option("--no-checkpoint", help="write no checkpoints",
                                                              rich_help_panel="Validation and checkpoints")], False),
    ),
    run=_run,
    panels={"Learning rate": ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "lr_decay",
                              "lr_step_epochs", "lr_power", "min_lr", "clip_grad"),
            "Objective": ("temperature", "alpha", "hints", "hint_weight", "hidden_loss", "hidden_weight",
                          "attention_loss", "attention_weight", "keep_sparsity", "init_from_teacher"),
            "Validation and checkpoints": ("val_split", "monitor", "patience", "checkpoint_dir", "resume"),
            "Processes and device": ("nproc", "device", "seed")},
    help="""Train STUDENT to match TEACHER (soft targets at a temperature, plus the labels where --data has some).

    Examples: mcomp distill model.prune.onnx --teacher model.onnx --data train.npz --eval-data eval.npz;
    mcomp distill model.quantize.onnx --teacher model.onnx --data train.npz --epochs 10 (stays QDQ);
    torchrun --nproc-per-node 2 -m mcomp distill s.onnx --teacher t.onnx --data train.npz
    """)
