"""Knowledge distillation (``mcomp distill``): train a pruned or quantized student against its teacher.

The student is an ONNX graph turned into a trainable torch copy (``mcomp.torch_graph``);
after training its weights are written back into the same graph, so names, dynamic axes,
the pruned shapes and the Q/DQ nodes and scales of a quantized student stay as they were.
The parts: the teacher and its outputs (``teacher``), the examples (``samples``), the loss
(``objective`` over ``mcomp.kernels.losses``), the loop (``train``, with the schedules of
``mcomp.kernels.schedules``), data parallelism (``ddp``), quantized weights (``qdq``; ``qdq_check``: does
onnxruntime compute the QDQ student as its torch copy does, before it is trained),
weights taken from the teacher (``warmstart``) and the LR range test that picks the default
learning rate (``lr_range`` over ``mcomp.kernels.lr_range``). Feature losses: hints, and for
transformers hidden states and attention maps of matched layers (``hints``, ``layers``).
Every epoch is scored against the input student (epoch 0) on the validation examples, or
without them on training examples (``candidates``): a run that makes the student worse returns it
unchanged, and so does one that leaves the written student further from the teacher.

Regression outputs are compared standardized per slice with the teacher's statistics, and the
report gives the student's fidelity to the teacher before and after, down to the worst slice
(a detector's class rows next to its pixel boxes). ``time_budget`` plans the epochs that fit.

```yaml
steps:
  - prune: {method: structured, rate: 0.5}
  - distill: {epochs: 20, temperature: 4.0, alpha: 0.3}   # teacher: the pipeline's input model
  - distill: {teacher: big.onnx, hints: ["relu_2=relu_5"], schedule: polynomial, lr_power: 2}
  - distill: {teacher: bert.onnx, hints: [], hidden_loss: true, attention_loss: kl}   # TinyBERT/MiniLM-style
```
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from mcomp.kernels.schedules import KINDS  # pure Python: the choices of ``schedule``
from mcomp.pass_base import Context, Need, Pass, PassConfig, PassResult

if TYPE_CHECKING:  # imported where the pass runs, so `mcomp distill --help` stays fast
    import onnx_ir as ir


def _same_file(teacher: str, source) -> bool:
    """Whether the teacher file is the student's source: the same file, or (without external data, whose
    files could differ behind equal .onnx bytes) the same bytes."""
    from mcomp.model import sha256_file

    path = Path(teacher).expanduser()
    if not source.path or source.path == "-" or not path.is_file():
        return False
    if os.path.exists(source.path) and os.path.samefile(path, source.path):
        return True
    if source.external_data or path.stat().st_size != source.bytes:
        return False
    return sha256_file(path) == source.sha256


class Distill(Pass):
    """Trains the model (the student) to match a teacher's outputs, with the labels where there are some."""

    name: ClassVar[str] = "distill"
    summary: ClassVar[str] = "knowledge distillation from a teacher; recovers accuracy after pruning and quantization"
    needs: ClassVar[frozenset[str]] = frozenset({"data"})

    class Config(PassConfig):
        path_fields: ClassVar[tuple[str, ...]] = ("teacher", "checkpoint_dir")
        teacher: str | None = Field(None, description="teacher model (ONNX or PyTorch checkpoint) [default: the "
                                                      "pipeline's input model]")
        teacher_arch: str | None = Field(None, description="module:factory for a state_dict teacher")
        epochs: int = Field(20, ge=1, le=100000, description="epochs to train (at most: see time_budget)")
        time_budget: float | None = Field(None, gt=0, description="seconds for the whole step: the first batches "
                                          "are timed, then the epochs that fit are planned and the schedule ends "
                                          "with them")
        batch_size: int = Field(64, ge=1, le=1 << 20, description="examples per step, over all processes")
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
        lr: float | None = Field(None, gt=0, le=10, description="base learning rate [default: auto: an LR range "
                                                                  "test on a throw-away copy of the student picks it]")
        momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum (Nesterov)")
        weight_decay: float = Field(1e-4, ge=0, le=1)
        schedule: Literal[KINDS] = Field("cosine", description="learning-rate schedule after warm-up")
        warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up from lr/steps to lr")
        lr_decay: float = Field(0.1, gt=0, description="step: factor γ; exponential/inverse-time: rate k per epoch")
        lr_step_epochs: float = Field(10, gt=0, description="step: epochs between decays")
        lr_power: float = Field(1.0, gt=0, description="polynomial: exponent α of (1 − t/T)^α")
        min_lr: float = Field(0.0, ge=0, description="floor of every schedule (cosine ends there)")
        temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature of the soft targets")
        alpha: float = Field(0.3, ge=0, le=1, description="weight of the task loss with labels (soft targets: 1 − alpha)")
        hints: list[str] = Field(default_factory=lambda: ["auto"], description="feature losses: STUDENT_TENSOR="
                                 "TEACHER_TENSOR (or one name in both), mapped by a learned projection along the axis the graph "
                                 "computes over (channels of [N, C, H, W], hidden of [N, seq, hidden]); [auto]: the "
                                 "inputs of the last two layers named alike in both (a pruned student's), those that "
                                 "keep the batch on axis 0 and differ at most in that axis; []: none")
        hint_weight: float = Field(1.0, ge=0, description="weight of each hint loss")
        hidden_loss: bool = Field(False, description="transformers (TinyBERT): MSE between the hidden states "
                                  "([N, seq, hidden], read at each layer's LayerNormalization) of matched layers, "
                                  "the embeddings' included; the student's are projected to the teacher's hidden "
                                  "size; layers matched uniformly when the student has fewer (m → m·Lt/Ls)")
        hidden_weight: float = Field(1.0, ge=0, description="weight of each hidden-state loss")
        attention_loss: Literal["none", "kl", "mse"] = Field(
            "none", description="transformers: a loss between the attention probabilities (Softmax outputs "
                                "[N, heads, seq, seq]) of matched layers, matched as for hidden_loss; heads averaged "
                                "where the student has fewer. none; kl: KL(teacher ‖ student) per query row (MiniLM); "
                                "mse: MSE over the teacher's variance (TinyBERT)")
        attention_weight: float = Field(1.0, ge=0, description="weight of each attention-map loss")
        val_split: float = Field(0.1, ge=0, lt=1, description="share of the training data held out for validation "
                                                              "(0: the evaluation data, when it is another set)")
        monitor: Literal["loss", "accuracy"] = Field("loss", description="what picks the best epoch and stops early: "
                                                                         "validation loss, or accuracy (with labels)")
        patience: int = Field(10, ge=0, description="stop after this many epochs without a better validation score (0: never)")
        clip_grad: float | None = Field(None, gt=0, description="clip the gradient norm to this")
        keep_sparsity: bool = Field(True, description="pruned (zero) weights stay zero: masks of the tensors with "
                                                     "at least 5% zeros are re-applied after every step")
        init_from_teacher: bool = Field(False, description="copy the teacher's weights into same-shaped student weights first")
        qdq_check: bool = Field(True, description="a QDQ student: before training, check that onnxruntime (at "
                                                  "optimization all) computes it as its torch copy does; off: train "
                                                  "against the Q/DQ arithmetic as written, with a note")
        checkpoint_dir: str | None = Field(None, description="write a checkpoint each epoch into this folder")
        resume: bool = Field(False, description="continue from the checkpoint in checkpoint_dir, if there is one")
        nproc: int = Field(1, ge=1, le=256, description="data-parallel worker processes to spawn (torch.distributed)")
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available and the "
                                                                           "provider allows it")
        seed: int | None = Field(None, description="[default: the pipeline's seed]")

    def requires(self) -> tuple[Need, ...]:
        return (Need(("training",), "distillation trains the student on it"),)

    def idle_on_input(self, source=None) -> str | None:
        """The input is the teacher unless one is given: a student that is still the input has
        nothing to win back, and training it costs the pipeline's longest step (``mcomp auto``
        on silero-vad v6: a prune that found no group, then 20 epochs of distillation). A given
        teacher that is the input's file, or its bytes (``mcomp prune`` that cut nothing writes the
        input's own bytes, then ``mcomp distill pruned.onnx --teacher model.onnx``), is the same case."""
        if self.config.teacher is None:
            return "the student is still the input, its own teacher (no step before it changed the model)"
        if source is not None and _same_file(self.config.teacher, source):
            return (f"the student is its teacher {self.config.teacher}, byte for byte (no step before it "
                    "changed the model)")
        return None

    def call(self, model: ir.Model, ctx: Context) -> PassResult:
        from mcomp.passes.distill import candidates, prepare

        cfg = self.config
        with _torch_threads(ctx.threads):
            plan = prepare.plan(model, cfg, ctx)
            same = prepare.same_as_teacher(plan)
            if same is not None:
                details = {"skipped": same, "teacher": {"source": plan.teacher_source},
                           "fidelity": {"data": plan.yardstick.text, "before": plan.yardstick.before}}
                return PassResult(model, False, f"skipped: {same}", list(plan.notes), details)
            result = _run(plan.job, cfg, ctx)
            student = prepare.finish(plan, result.state, ctx)
        # Epoch 0 is the student as given: when no trained epoch beat it, its weights are written back unchanged.
        trained = result.best_epoch > 0 or plan.warmstart is not None
        if trained and candidates.further_from_teacher(plan):
            student, trained = candidates.unchanged(model, plan, result), False
        summary, notes, details = prepare.record(plan, result, cfg)
        return PassResult(student, trained, summary, notes, details)


def _run(job, cfg, ctx: Context):
    from mcomp.passes.distill import ddp
    from mcomp.passes.distill.train import fit

    comm = ddp.from_environment(job.device)
    if comm is not None:  # under torchrun: every process trains its shard; rank 0 reports progress
        try:
            device = ddp.device_for(job.device, comm)
            return fit(job, comm, ctx.progress if comm.rank == 0 else (lambda *a: None), device=device)
        finally:
            comm.close()
    if cfg.nproc > 1:
        job.threads = ctx.threads or max(1, (os.cpu_count() or 1) // cfg.nproc)
        return ddp.spawn(cfg.nproc, job, ctx.progress)
    return fit(job, ddp.Comm(), ctx.progress, on_epoch=ctx.on_epoch)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["Distill"]
