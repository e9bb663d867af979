"""What the student is trained to minimise: soft targets, the task loss, and hints.

``loss = (1 − α) · Σ_outputs R(student, teacher) + α · task(student, labels) + β · Σ_hints hint``
where ``R`` is ``KL(teacher_T ‖ student_T) · T²`` for classifier-shaped outputs, that KL per
element between Bernoulli distributions for outputs a Sigmoid makes, and MSE for the others, and
``task`` is cross-entropy (classifier; binary for a Sigmoid's) or MSE (regression) against the labels.
The MSE of a regression output is taken on the output standardized with the teacher's
statistics (:class:`Scale`): per slice along its channel-like axes, so a detector's class rows
(0–1) count as much as its box rows (pixels).
Without labels the soft targets weigh 1. Hints and hidden states compare a student tensor,
projected to the teacher's width along its feature axis by a learned linear map (FitNets,
TinyBERT), with a teacher tensor; attention maps are compared by KL or MSE (TinyBERT, MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcomp.errors import BadInput
from mcomp.kernels import losses
from mcomp.kernels.fidelity import beside_normalized_scores, channel_axes, is_classifier_shaped


@dataclass(frozen=True)
class OutputKind:
    name: str
    kind: str  # "classifier" | "regression" | "ignored" (integer or boolean outputs)
    probabilities: bool = False  # the graph already ends in a softmax
    bernoulli: bool = False  # made by a Sigmoid: every element a probability of its own (0–1, not summing to 1)

    def loss_name(self) -> str:
        return ("none" if self.kind == "ignored" else "Bernoulli KL·T² per element" if self.bernoulli
                else "KL·T²" if self.kind == "classifier" else "MSE")


@dataclass(frozen=True, eq=False)
class Scale:
    """How a regression output is standardized in the loss: the teacher's mean and std over the
    training data, per slice along ``axes`` (its channel-like axes), or one of each over the whole
    output where ``axes`` is empty."""

    axes: tuple[int, ...]
    mean: np.ndarray  # broadcasts over [N, ...]
    std: np.ndarray
    added_to: str | None = None  # an input the output passes on: the statistics are of what it adds to it

    def describe(self) -> str:
        of = f" of what it adds to input {self.added_to}" if self.added_to else ""
        if not self.axes:
            return f"MSE, standardized by the teacher's overall std{of}"
        slices = " × ".join(str(self.std.shape[a]) for a in self.axes)
        return f"MSE, standardized per slice along axis {', '.join(map(str, self.axes))} ({slices} slices){of}"


# Channel-like axes are found on this many examples (a median per slice; the statistics use all).
_AXES_SAMPLE = 256


def output_scales(kinds: list[OutputKind], teacher_outputs: list[np.ndarray],
                  inputs: dict[str, np.ndarray] | None = None) -> list[Scale | None]:
    """The teacher's statistics that standardize each regression output in the loss (None for the
    other outputs), computed once from its outputs on the training data. Per slice along the
    output's channel-like axes (``kernels.fidelity.channel_axes``: slices whose typical
    magnitudes spread 10× or more): plain MSE on a detector's ``[N, 84, 8400]`` head fits the
    pixel coordinates and leaves the class scores behind. An output without such axes is
    standardized by its overall std instead, so that the losses of outputs of different scales
    weigh alike. An output that passes one of ``inputs`` on (``residuals.passed_through``) is
    standardized by what it adds to that input: RivaGAN's encoder adds a watermark of 1.6 % of its
    frame's RMS, so its loss by the output's own std was 1e-4 of a feature hint's, and a cut encoder
    trained on the hints (its watermark's cosine to the teacher 0.82 → 0.89; 0.91 without hints)."""
    from mcomp import residuals

    scales: list[Scale | None] = []
    for kind, out in zip(kinds, teacher_outputs):
        if kind.kind != "regression" or kind.bernoulli:
            scales.append(None)
            continue
        through = residuals.passed_through(out, inputs or {})
        values = out - inputs[through[0]] if through else out
        axes = tuple(channel_axes(values[:_AXES_SAMPLE]))
        mean, std = losses.slice_statistics(values, axes)
        scales.append(Scale(axes, mean, std, through[0] if through else None))
    return scales


@dataclass(frozen=True)
class Hint:
    """A feature loss between a student tensor and a teacher tensor (see ``hints``)."""

    student: str
    teacher: str
    student_channels: int  # size of the feature axis (attention maps: the heads)
    teacher_channels: int
    scale: float  # the teacher tensor's variance over the training data
    axis: int = 1  # the feature axis of [N, ...]: 1 for [N, C, H, W], the last for [N, seq, hidden]
    kind: str = "hint"  # "hint" (FitNets), "hidden" (a matched layer's output), "attention" (its Softmax maps)
    student_index: int = -1  # where the tensor is in the student's outputs and in the teacher's targets
    teacher_index: int = -1


def output_kinds(names: list[str], teacher_outputs: list[np.ndarray], softmax: set[str] = frozenset(),
                 sigmoid: set[str] = frozenset()) -> list[OutputKind]:
    """Classifier outputs are ``[N, classes]`` scores, any output a Softmax/LogSoftmax makes
    (``softmax``: their names), and outputs named logits (a language model's ``[N, seq, vocab]``,
    a token classifier's: KL per position, as in DistilBERT, where standardized MSE would fit
    the scale of each vocabulary slice instead of the distribution); other float outputs (boxes, an
    ``[N, K]`` regression beside softmax scores of another width: ``beside_normalized_scores``,
    feature maps, [N, C, H, W] maps whose classes are not the last axis) are regression outputs
    and get MSE. An output the student's Sigmoid makes (``sigmoid``: their names) whose teacher
    values lie in 0–1 is ``bernoulli`` whatever its kind: its loss is per element."""
    kinds, regressions = [], beside_normalized_scores(teacher_outputs)
    for i, (name, out) in enumerate(zip(names, teacher_outputs)):
        bernoulli = name in sigmoid and out.dtype.kind == "f" and out.size > 0 and bool(
            out.min() >= 0) and bool(out.max() <= 1)
        if out.dtype.kind != "f":
            kinds.append(OutputKind(name, "ignored"))
        elif i not in regressions and is_classifier_shaped(out) and (
                out.ndim == 2 or name in softmax or "logit" in name.lower()):
            probs = not bernoulli and bool(out.min() >= 0) and bool(np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))
            kinds.append(OutputKind(name, "classifier", probs, bernoulli))
        else:
            kinds.append(OutputKind(name, "regression", bernoulli=bernoulli))
    return kinds


def task_output(kinds: list[OutputKind]) -> int | None:
    """The output the labels are for: the first classifier-shaped one, else the first float one."""
    for wanted in ("classifier", "regression"):
        for i, k in enumerate(kinds):
            if k.kind == wanted:
                return i
    return None


def check_labels(labels: np.ndarray, kinds: list[OutputKind], output: np.ndarray, source: str,
                 examples: int | None = None) -> np.ndarray:
    """Labels that fit the task output, or a BadInput naming both shapes (with ``examples``, the
    size of the whole data set, as the label count); returns them typed."""
    index = task_output(kinds)
    if index is None:
        raise BadInput(f"{source}: labels given, but the model has no floating-point output to train against them")
    kind, name = kinds[index], kinds[index].name
    want = list(output.shape[1:])
    got = list(labels.shape[1:])
    shown = (examples or labels.shape[0], *got)
    if kind.kind == "classifier":
        classes = output.shape[-1]
        if got == want and labels.dtype.kind == "f":
            return _targets(labels, kind, source)  # soft or one-hot targets
        if got == want[:-1] and (labels.dtype.kind in "iub" or np.all(np.mod(labels, 1) == 0)):
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise BadInput(f"{source}: labels range {int(labels.min())}..{int(labels.max())}, but output "
                               f"{name!r} has {classes} classes (0..{classes - 1})")
            return labels.astype(np.int64)
        raise BadInput(f"{source}: labels of shape {_fmt(shown)} do not fit output {name!r} of shape "
                       f"{_fmt(('N', *want))}: expected class indices {_fmt(('N', *want[:-1]))} or scores "
                       f"{_fmt(('N', *want))}")
    if got + [1] == want:  # one label an example for one score an example: a sigmoid's [N, 1] read with [N] labels
        labels, got = labels.reshape(*labels.shape, 1), want
    if got != want or labels.dtype.kind not in "fiub":
        raise BadInput(f"{source}: labels of shape {_fmt(shown)} do not fit regression output {name!r} "
                       f"of shape {_fmt(('N', *want))}: expected {_fmt(('N', *want))}")
    return _targets(labels, kind, source)


def _targets(labels: np.ndarray, kind: OutputKind, source: str) -> np.ndarray:
    """Float targets of the output's shape; for a Sigmoid's output, probabilities (0–1)."""
    if kind.bernoulli and labels.size and not (labels.min() >= 0 and labels.max() <= 1):
        raise BadInput(f"{source}: labels range {float(labels.min()):g}..{float(labels.max()):g}, but output "
                       f"{kind.name!r} is a Sigmoid's: targets of its shape are probabilities in 0..1")
    return labels.astype(np.float32)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Objective(torch.nn.Module):
    """Per-example loss of a batch; holds the hint projections (trained with the student)."""

    def __init__(self, kinds: list[OutputKind], *, temperature: float, alpha: float, labelled: bool,
                 hints: list[Hint], hint_weight: float, scales: list[Scale | None] | None = None,
                 hidden_weight: float = 1.0, attention_weight: float = 1.0, attention_loss: str = "kl") -> None:
        super().__init__()
        self.kinds = kinds
        self.scaled = [s is not None for s in scales] if scales else [False] * len(kinds)
        for i, scale in enumerate(scales or []):
            if scale is not None:  # buffers, so that they move to the training device with the module
                self.register_buffer(f"mean{i}", torch.from_numpy(scale.mean), persistent=False)
                self.register_buffer(f"std{i}", torch.from_numpy(scale.std), persistent=False)
        self.temperature = temperature
        self.alpha = alpha if labelled else 0.0
        self.labelled = labelled
        self.task = task_output(kinds) if labelled else None
        self.hints = hints
        self.weights = {"hint": hint_weight, "hidden": hidden_weight, "attention": attention_weight}
        self.attention_loss = attention_loss
        self.projections = torch.nn.ModuleList(  # attention maps are compared as they are
            torch.nn.Identity() if h.kind == "attention" else
            torch.nn.Linear(h.student_channels, h.teacher_channels, bias=True) for h in hints)

    def regression(self, i: int, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of output ``i`` against a target (the teacher's output or labels), standardized where it has a scale."""
        if self.scaled[i]:
            return losses.standardized_mse(out, target, getattr(self, f"mean{i}"), getattr(self, f"std{i}"))
        return losses.mse(out, target)

    def project(self, i: int, feature: torch.Tensor) -> torch.Tensor:
        """The student tensor mapped to the teacher's size along the hint's feature axis."""
        axis = self.hints[i].axis
        return self.projections[i](feature.movedim(axis, -1)).movedim(-1, axis)

    def feature_term(self, i: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-example loss of feature ``i``: MSE over the teacher's variance after the projection;
        attention maps: KL(teacher ‖ student) per query row (TinyBERT uses MSE, MiniLM KL), or
        that MSE, averaged over the heads first where the student has fewer."""
        hint = self.hints[i]
        if hint.kind != "attention":
            return losses.hint_mse(self.project(i, student), teacher, hint.scale)
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        if self.attention_loss == "mse":
            return losses.hint_mse(student, teacher, hint.scale)
        return attention_kl(student, teacher)

    def forward(self, student: tuple[torch.Tensor, ...], teacher: list[torch.Tensor],
                labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        soft = None
        for i, kind in enumerate(self.kinds):
            if kind.kind == "ignored":
                continue
            if kind.bernoulli:
                term = losses.bernoulli_kl(student[i], teacher[i], self.temperature)
            elif kind.kind == "classifier":
                term = losses.soft_target_kl(student[i], teacher[i], self.temperature, probabilities=kind.probabilities)
            else:
                term = self.regression(i, student[i], teacher[i])
            soft = term if soft is None else soft + term
        total = soft * (1.0 - self.alpha) if soft is not None else 0.0
        if soft is not None:
            parts["soft"] = soft
        if self.task is not None and labels is not None:
            kind, out = self.kinds[self.task], student[self.task]
            task = (losses.bernoulli_cross_entropy(out, labels) if kind.bernoulli else
                    losses.cross_entropy(out, labels, probabilities=kind.probabilities) if kind.kind == "classifier"
                    else self.regression(self.task, out, labels))
            parts["task"] = task
            total = total + self.alpha * task
        for j, hint in enumerate(self.hints):
            term = self.feature_term(j, student[hint.student_index], teacher[hint.teacher_index])
            parts[f"{hint.kind}:{hint.student}"] = term
            total = total + self.weights[hint.kind] * term
        return total, parts

    def output_loss(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of the outputs alone (soft targets and task, weighted as in the total), without
        the feature terms: what says whether the student got better."""
        out = parts["soft"] * (1.0 - self.alpha) if "soft" in parts else 0.0
        return out + self.alpha * parts["task"] if "task" in parts else out

    @torch.no_grad()
    def init_projections(self, student: tuple[torch.Tensor, ...], teacher: list[torch.Tensor]) -> None:
        """Least-squares start for each projection, on one batch: the student's features already
        predict the teacher's as well as a linear map can (a pruned student's surviving
        channels map onto the teacher's at once)."""
        for j, hint in enumerate(self.hints):
            if hint.kind == "attention":
                continue
            s = _channels_last(student[hint.student_index], hint.axis).double()
            t = _channels_last(teacher[hint.teacher_index], hint.axis).double()
            ones = torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)
            design = torch.cat([s, ones], dim=1)
            ridge = 1e-3 * torch.eye(design.shape[1], dtype=s.dtype, device=s.device)
            coef = torch.linalg.solve(design.T @ design + ridge, design.T @ t)  # [Cs+1, Ct]
            self.projections[j].weight.copy_(coef[:-1].T.float())
            self.projections[j].bias.copy_(coef[-1].float())


def _channels_last(x: torch.Tensor, axis: int) -> torch.Tensor:
    """[N, …] → [N·…, C] rows of feature vectors along ``axis``."""
    x = x.movedim(axis, -1)
    return x.reshape(-1, x.shape[-1]).float()


def attention_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-example KL(teacher ‖ student) of attention probabilities [N, heads, seq, seq] over the
    keys, averaged over heads and queries. Masked keys (probability 0 in the teacher) add
    nothing; the student's probabilities are floored at 1e-12 before the log."""
    kl = torch.xlogy(teacher, teacher) - teacher * torch.log(student.clamp_min(1e-12))
    return kl.sum(-1).reshape(kl.shape[0], -1).mean(1)
