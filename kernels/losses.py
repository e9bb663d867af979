"""Distillation losses on torch tensors, per example (shape ``[N]``): the caller reduces.

The objective of knowledge distillation (Hinton et al., 2015; Bucila et al., 2006):
``min Σ l(f_small(x), y) + λ R(f_small, f_large)`` — a task loss against the labels where
there are some, and a term ``R`` that pulls the student towards the teacher:

- classifier outputs: soft targets, ``KL(p_T ‖ q_T) · T²`` between the teacher's and the
  student's softmax at temperature ``T`` (the ``T²`` keeps the gradient scale independent
  of ``T``);
- regression outputs: mean squared error to the teacher's output;
- intermediate features (hints, FitNets): mean squared error between a student tensor
  (projected to the teacher's width) and the teacher's, divided by the teacher's variance
  so that hints of any scale weigh alike.

Per-example values let data-parallel workers sum over their shard and divide by the size
of the global batch, which makes N workers compute exactly one worker's gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, ..., C]`` → ``[N, M, C]``: classes last, every other axis a position of example N."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def log_probs(scores: torch.Tensor, temperature: float = 1.0, *, probabilities: bool = False) -> torch.Tensor:
    """Log-softmax of ``scores / T`` over the last axis; ``probabilities=True`` when the scores
    are already a softmax (the tempered distribution is then ``p^(1/T)`` renormalised)."""
    if probabilities:
        scores = torch.log(scores.clamp_min(1e-12))
    return F.log_softmax(scores.float() / temperature, dim=-1)


def soft_target_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *,
                   probabilities: bool = False) -> torch.Tensor:
    """``KL(teacher_T ‖ student_T) · T²`` per example, averaged over any positions between
    the batch and the class axis (``[N, C]`` or ``[N, ..., C]`` scores)."""
    log_q = _rows(log_probs(student, temperature, probabilities=probabilities))
    log_p = _rows(log_probs(teacher.detach(), temperature, probabilities=probabilities))
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [N, M]
    return kl.mean(dim=1) * (temperature * temperature)


def cross_entropy(student: torch.Tensor, labels: torch.Tensor, *, probabilities: bool = False) -> torch.Tensor:
    """Task loss per example: integer class labels ``[N]`` / ``[N, ...]``, or soft/one-hot
    targets with the scores' shape."""
    log_q = _rows(log_probs(student, 1.0, probabilities=probabilities))
    if labels.is_floating_point() and labels.shape == student.shape:
        target = _rows(labels.float())
        return -(target * log_q).sum(dim=-1).mean(dim=1)
    index = labels.reshape(labels.shape[0], -1).long()  # [N, M]
    return -log_q.gather(-1, index.unsqueeze(-1)).squeeze(-1).mean(dim=1)


def mse(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example (regression outputs against the teacher or the labels)."""
    diff = (student.float() - target.detach().float()).reshape(student.shape[0], -1)
    return (diff * diff).mean(dim=1)


def hint_mse(student: torch.Tensor, teacher: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Feature (hint) loss per example: MSE divided by ``scale``, the teacher feature's variance
    over the training data, so that hints of any magnitude weigh alike."""
    return mse(student, teacher) / max(float(scale), 1e-12)


def top1_correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example share of positions whose arg-max matches the label (``[N]`` floats)."""
    pred = _rows(scores).argmax(dim=-1)  # [N, M]
    if labels.is_floating_point() and labels.shape == scores.shape:
        labels = _rows(labels).argmax(dim=-1)
    return (pred == labels.reshape(labels.shape[0], -1).long()).float().mean(dim=1)
