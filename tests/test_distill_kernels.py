"""Distillation kernels: losses (KL·T², cross-entropy, MSE, hints) and learning-rate schedules."""

import math

import numpy as np
import pytest
import torch

from mcomp.kernels import losses
from mcomp.kernels.schedules import KINDS, Schedule, cosine, exponential, inverse_time, polynomial, step


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _softmax(x: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((x - x.max()) / t)
    return e / e.sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_soft_target_kl_is_kl_times_t_squared(temperature):
    s = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    t = np.array([[1.0, 0.5, -2.0], [1.0, -1.0, 2.0]])
    got = losses.soft_target_kl(torch.tensor(s), torch.tensor(t), temperature).numpy()
    want = [_kl(_softmax(t[i], temperature), _softmax(s[i], temperature)) * temperature ** 2 for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_soft_target_kl_is_zero_for_equal_scores_and_positive_otherwise():
    x = torch.randn(5, 10)
    assert torch.allclose(losses.soft_target_kl(x, x.clone(), 4.0), torch.zeros(5), atol=1e-6)
    assert bool((losses.soft_target_kl(x, torch.randn(5, 10), 4.0) > 0).all())


def test_soft_target_kl_gradient_scale_does_not_vanish_with_temperature():
    # The T² factor keeps the gradient magnitude of the same order as T grows (Hinton et al.).
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    norms = []
    for temperature in (2.0, 8.0):
        s = torch.randn(64, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        losses.soft_target_kl(s, t, temperature).mean().backward()
        norms.append(float(s.grad.norm()))
    assert 0.25 < norms[1] / norms[0] < 4


def test_soft_target_kl_on_probabilities_and_positions():
    logits = torch.randn(3, 4, 6)  # [N, positions, classes]
    teacher = torch.randn(3, 4, 6)
    from_logits = losses.soft_target_kl(logits, teacher, 2.0)
    from_probs = losses.soft_target_kl(logits.softmax(-1), teacher.softmax(-1), 2.0, probabilities=True)
    assert from_logits.shape == (3,)
    torch.testing.assert_close(from_logits, from_probs, rtol=1e-4, atol=1e-5)


def test_cross_entropy_with_class_indices_and_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    want = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(losses.cross_entropy(logits, labels), want)
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(losses.cross_entropy(logits, onehot), want)


def test_mse_for_regression_outputs_per_example():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    torch.testing.assert_close(losses.mse(s, t), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(losses.hint_mse(s, t, scale=2.0), torch.tensor([1.0, 2.5]))


def test_top1_correct():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    torch.testing.assert_close(losses.top1_correct(scores, torch.tensor([1, 1, 1])), torch.tensor([1.0, 0.0, 1.0]))


# -- schedules -------------------------------------------------------------


@pytest.mark.parametrize("fn, kwargs, start, middle, end", [
    (step, {"decay": 0.1, "step_epochs": 4}, 1.0, 0.1, 0.01),  # t = 0, 5, 10 of 10
    (exponential, {"decay": 0.2}, 1.0, math.exp(-1.0), math.exp(-2.0)),
    (polynomial, {"power": 2.0}, 1.0, 0.25, 0.0),
    (inverse_time, {"decay": 0.2}, 1.0, 0.5, 1 / 3),
    (cosine, {"min_lr": 0.0}, 1.0, 0.5, 0.0),
])
def test_schedule_values_at_start_middle_end(fn, kwargs, start, middle, end):
    assert fn(0.0, 10.0, 1.0, **kwargs) == pytest.approx(start)
    assert fn(5.0, 10.0, 1.0, **kwargs) == pytest.approx(middle)
    assert fn(10.0, 10.0, 1.0, **kwargs) == pytest.approx(end, abs=1e-12)


def test_cosine_ends_at_min_lr_and_polynomial_power_one_is_linear():
    assert cosine(10.0, 10.0, 1.0, min_lr=0.1) == pytest.approx(0.1)
    assert polynomial(2.5, 10.0, 2.0, power=1.0) == pytest.approx(1.5)


def test_schedule_warmup_then_decay_per_step():
    sched = Schedule("cosine", 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=1)
    assert sched.warmup_steps == 10
    assert sched(0) == pytest.approx(0.01)  # warm-up starts at lr / warm-up steps
    assert sched(9) == pytest.approx(0.1)
    assert sched(10) == pytest.approx(0.1)  # the schedule's clock starts after warm-up
    assert sched(55) == pytest.approx(0.05)  # half-way through the 9 remaining epochs
    assert sched(99) < 0.001
    values = [sched(k) for k in range(10, 100)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("kind", KINDS)
def test_every_schedule_starts_at_base_and_respects_min_lr(kind):
    sched = Schedule(kind, 0.5, epochs=20, steps_per_epoch=5, min_lr=0.01, decay=0.5, step_epochs=3)
    assert sched(0) == pytest.approx(0.5)
    assert all(sched(k) >= 0.01 for k in range(0, 100))


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule("linear-ish", 0.1, epochs=1, steps_per_epoch=1)
