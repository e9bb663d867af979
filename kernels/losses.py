"""Distillation losses on torch tensors, per example (shape ``[N]``): the caller reduces.

The objective of knowledge distillation (Hinton et al., 2015; Bucila et al., 2006):
``min Σ l(f_small(x), y) + λ R(f_small, f_large)`` — a task loss against the labels where
there are some, and a term ``R`` that pulls the student towards the teacher:

- classifier outputs: soft targets, ``KL(p_T ‖ q_T) · T²`` between the teacher's and the
  student's softmax at temperature ``T`` (the ``T²`` keeps the gradient scale independent
  of ``T``);
- outputs a Sigmoid makes (each element a probability of its own: a multi-label tagger, a pitch
  tracker's bins): the same KL per element between tempered Bernoulli distributions
  (``bernoulli_kl``); a softmax over such probabilities compares near-uniform distributions;
- regression outputs: mean squared error to the teacher's output, on outputs standardized
  with the teacher's statistics (``standardized_mse``), so that a slice of 0–1 class scores
  counts as much as one of 0–640 pixel coordinates;
- intermediate features (hints, FitNets): mean squared error between a student tensor
  (projected to the teacher's width) and the teacher's, divided by the teacher's variance
  so that hints of any scale weigh alike.

Per-example values let data-parallel workers sum over their shard and divide by the size
of the global batch, which makes N workers compute exactly one worker's gradient.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
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


# Probabilities are floored/capped here before their logit: float32 resolves 1 − p to about 6e-8.
_LOGIT_EPS = 1e-6


def _positions(x: torch.Tensor) -> torch.Tensor:
    """``[N, ..., C]`` → ``[N, M, C]`` as :func:`_rows`; ``[N]`` → ``[N, 1, 1]``."""
    return _rows(x) if x.dim() >= 2 else x.reshape(-1, 1, 1)


def bernoulli_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per example: Σ over the last axis of ``KL(Bernoulli(t_T) ‖ Bernoulli(s_T)) · T²``, averaged
    over the positions between the batch and that axis, where ``x_T = σ(logit(x) / T)``. For
    outputs made by a Sigmoid: their elements do not sum to 1, and a softmax over them at ``T``
    compares two nearly uniform distributions (CREPE's 360 pitch bins, values 0–1: a pruned
    student distilled that way stayed at cosine 0.26 to its teacher)."""
    z_s = torch.special.logit(student.float(), eps=_LOGIT_EPS) / temperature
    z_t = torch.special.logit(teacher.detach().float(), eps=_LOGIT_EPS) / temperature
    p_t = torch.sigmoid(z_t)
    kl = p_t * (F.logsigmoid(z_t) - F.logsigmoid(z_s)) + (1 - p_t) * (F.logsigmoid(-z_t) - F.logsigmoid(-z_s))
    return _positions(kl).sum(dim=-1).mean(dim=1) * (temperature * temperature)


def bernoulli_cross_entropy(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Task loss per example for a Sigmoid's output: binary cross-entropy summed over the last
    axis against targets in 0–1 of the output's shape, or class indices read as one-hot rows."""
    if not (labels.is_floating_point() and labels.shape == student.shape):
        labels = F.one_hot(labels.long(), student.shape[-1]).reshape(student.shape)
    z = torch.special.logit(student.float(), eps=_LOGIT_EPS)
    bce = F.binary_cross_entropy_with_logits(z, labels.float(), reduction="none")
    return _positions(bce).sum(dim=-1).mean(dim=1)


def mse(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example (regression outputs against the teacher or the labels)."""
    diff = (student.float() - target.detach().float()).reshape(student.shape[0], -1)
    return (diff * diff).mean(dim=1)


def standardized_mse(student: torch.Tensor, target: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
    """MSE per example between ``(student − mean) / std`` and ``(target − mean) / std``: each
    slice's error in units of the teacher's spread of that slice (``mean``/``std`` broadcast
    over ``[N, ...]``, see :func:`slice_statistics`). Plain MSE on raw outputs is dominated by
    the largest-valued slices: on a pruned detector it fitted the pixel coordinates and left
    the class scores at cosine 0.2."""
    return mse((student.float() - mean) / std, (target.detach().float() - mean) / std)


def slice_statistics(values: np.ndarray, axes: Sequence[int], *, chunk: int = 256,
                     floor: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``values`` (``[N, ...]``) per slice along ``axes`` (over
    the examples and every other axis; no axes: one mean and std over everything), shaped to
    broadcast over ``[1, ...]``. Accumulated in float64 over chunks of examples (Chan et al.'s
    pairwise update), so a large output is never copied whole. A std below ``floor`` × the
    largest one is raised to it: a slice that barely varies (the score row of a class absent
    from the data) would otherwise turn its rounding noise into a large loss."""
    kept = set(int(a) % values.ndim for a in axes)
    reduce = tuple(a for a in range(values.ndim) if a not in kept)
    shape = tuple(values.shape[a] if a in kept else 1 for a in range(values.ndim))
    count, mean, m2 = 0, np.zeros(shape), np.zeros(shape)
    for start in range(0, values.shape[0], chunk):
        part = values[start:start + chunk].astype(np.float64)
        k = part.size // int(np.prod(shape))
        part_mean = part.mean(axis=reduce, keepdims=True)
        part_m2 = ((part - part_mean) ** 2).sum(axis=reduce, keepdims=True)
        delta, total = part_mean - mean, count + k
        mean = mean + delta * (k / total)
        m2 = m2 + part_m2 + delta ** 2 * (count * k / total)
        count = total
    std = np.sqrt(m2 / max(count, 1))
    std = np.maximum(std, max(floor * float(std.max(initial=0.0)), 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


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
