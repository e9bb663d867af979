"""Distillation kernels: losses (KL·T², cross-entropy, MSE, standardized slices, hints), learning-rate
schedules and their time-budget plan, and reading a learning rate off an LR range test."""

import math

import numpy as np
import pytest
import torch

from mcomp.kernels import losses, lr_range
from mcomp.kernels.fidelity import channel_axes
from mcomp.kernels.schedules import KINDS, Schedule, cosine, exponential, inverse_time, polynomial, step, steps_within


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


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_bernoulli_kl_per_element_of_a_sigmoids_probabilities(temperature):
    """Σ over classes of KL between tempered Bernoulli distributions, × T², mean over positions;
    its gradient at the student's logit is T · (σ(z_s/T) − σ(z_t/T)) per element."""
    z_s = torch.randn(3, 4, 6, dtype=torch.float64).requires_grad_()
    z_t = torch.randn(3, 4, 6, dtype=torch.float64)
    got = losses.bernoulli_kl(torch.sigmoid(z_s), torch.sigmoid(z_t), temperature)
    p, q = torch.sigmoid(z_t / temperature), torch.sigmoid(z_s / temperature)
    want = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(-1).mean(1) * temperature ** 2
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=1e-6)
    got.sum().backward()
    torch.testing.assert_close(z_s.grad, temperature * (q - p).detach() / 4, rtol=1e-3, atol=1e-6)
    same = torch.sigmoid(torch.randn(5, 360))
    assert torch.allclose(losses.bernoulli_kl(same, same.clone(), temperature), torch.zeros(5), atol=1e-5)


def test_bernoulli_cross_entropy_with_class_indices_and_targets():
    z = torch.randn(4, 7)
    labels = torch.tensor([0, 3, 6, 2])
    onehot = torch.nn.functional.one_hot(labels, 7).float()
    want = torch.nn.functional.binary_cross_entropy_with_logits(z, onehot, reduction="none").sum(-1)
    torch.testing.assert_close(losses.bernoulli_cross_entropy(torch.sigmoid(z), labels), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses.bernoulli_cross_entropy(torch.sigmoid(z), onehot), want, rtol=1e-4, atol=1e-5)
    one = torch.sigmoid(torch.randn(4))  # [N]: one probability an example
    assert losses.bernoulli_cross_entropy(one, torch.ones(4)).shape == (4,)


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


def _two_scales(n: int = 64, k: int = 32) -> np.ndarray:
    """[N, 2, K]: slice 0 in pixels (scale 300), slice 1 in 0–1 units (scale 1)."""
    rng = np.random.default_rng(0)
    return np.stack([300 * rng.standard_normal((n, k)), rng.standard_normal((n, k))], axis=1).astype(np.float32)


def test_standardized_mse_weighs_a_small_slice_as_much_as_a_large_one():
    teacher = _two_scales()
    axes = channel_axes(teacher)
    assert axes == [1]
    mean, std = losses.slice_statistics(teacher, axes)
    assert mean.shape == std.shape == (1, 2, 1)
    np.testing.assert_allclose(std.ravel(), [300, 1], rtol=0.1)
    t = torch.from_numpy(teacher)
    contributions, raw = [], []
    for k in (0, 1):  # the student is 10 % off in one slice only
        student = t.clone()
        student[:, k] *= 1.1
        student.requires_grad_()
        loss = losses.standardized_mse(student, t, torch.from_numpy(mean), torch.from_numpy(std)).mean()
        loss.backward()
        contributions.append((float(loss.detach()), float(student.grad[:, k].norm())))
        raw.append(float(losses.mse(student.detach(), t).mean()))
    (loss_big, grad_big), (loss_small, grad_small) = contributions
    assert 0.5 < loss_small / loss_big < 2
    # gradients w.r.t. the output, per unit of each slice's own scale, are alike
    assert 0.5 < (grad_small * 1) / (grad_big * 300) < 2
    assert raw[0] / raw[1] > 1e4  # what plain MSE does: the small slice does not count


def test_slice_statistics_match_numpy_over_chunks_and_floor_flat_slices():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3, 5)).astype(np.float32) * np.array([1.0, 50.0, 0.0], np.float32)[None, :, None]
    x[:, 2] = 7.0  # a constant slice
    mean, std = losses.slice_statistics(x, [1], chunk=3)
    np.testing.assert_allclose(mean.ravel(), x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.ravel()[:2], x.astype(np.float64).std(axis=(0, 2))[:2], rtol=1e-5)
    assert std.ravel()[2] == pytest.approx(1e-4 * std.max(), rel=1e-3)  # floored, not zero
    whole_mean, whole_std = losses.slice_statistics(x, [])
    assert whole_std.shape == (1, 1, 1) and whole_std.item() == pytest.approx(x.astype(np.float64).std(), rel=1e-5)


def test_objective_standardizes_regression_outputs_per_slice_or_overall():
    from mcomp.passes.distill.objective import Objective, OutputKind, output_scales

    sliced = _two_scales()  # channel-like axis 1
    rng = np.random.default_rng(2)
    small = (0.01 * rng.standard_normal((64, 3, 4, 4))).astype(np.float32)  # no channel-like axis: overall std
    big = (300 * rng.standard_normal((64, 3, 4, 4))).astype(np.float32)
    kinds = [OutputKind("y", "regression"), OutputKind("small", "regression"), OutputKind("big", "regression")]
    scales = output_scales(kinds, [sliced, small, big])
    assert [s.axes for s in scales] == [(1,), (), ()]
    assert "per slice along axis 1 (2 slices)" in scales[0].describe() and "overall" in scales[1].describe()
    objective = Objective(kinds, temperature=1.0, alpha=0.0, labelled=False, hints=[], hint_weight=0.0, scales=scales)
    outs = [torch.from_numpy(a) for a in (sliced, small, big)]
    off = lambda i: [o * 1.1 if j == i else o for j, o in enumerate(outs)]
    per_output = [float(objective(tuple(off(i)), outs, None)[0].mean()) for i in range(3)]
    # 10 % off weighs alike in each output, whatever its scale (plain MSE: a factor 1e9 apart)
    assert max(per_output) / min(per_output) < 2, per_output


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


def test_steps_within_plans_whole_epochs_or_the_part_of_one_that_fits():
    # 10 steps per epoch at 1 s, 2 s of validation per epoch: an epoch takes 12 s
    assert steps_within(40, 1.0, 10, 2.0, done=0, limit=200) == 30  # 3 whole epochs (36 s)
    assert steps_within(40, 1.0, 10, 2.0, done=4, limit=200) == 30  # the current epoch (6 + 2 s), then 2 more
    assert steps_within(1000, 1.0, 10, 2.0, done=0, limit=50) == 50  # never more than asked
    assert steps_within(7, 1.0, 10, 2.0, done=0, limit=200) == 5  # not one epoch: the steps that fit
    assert steps_within(-5, 1.0, 10, 2.0, done=3, limit=200) == 3  # no time left: none more


def test_schedule_planned_for_fewer_epochs_completes_within_them():
    planned = Schedule("cosine", 0.1, epochs=3, steps_per_epoch=10, warmup_epochs=0.75)
    assert planned(29) < 0.002  # the cosine has ended by the last planned step
    assert Schedule("cosine", 0.1, epochs=20, steps_per_epoch=10, warmup_epochs=1)(29) > 0.09  # cut mid-way


# -- LR range test -----------------------------------------------------------


def _range_curve(best: float = 1e-2, steps: int = 40, noise: float = 0.0, seed: int = 0):
    """A range-test-like curve: flat, then falling, lowest near ``best``, then blowing up."""
    lrs = lr_range.sweep(1e-6, 1.0, steps)
    x = np.log10(lrs) - np.log10(best)
    losses_ = 2.0 - 1.5 / (1 + np.exp(-2.5 * (x + 1.2))) + np.where(x > 0, 3 * x ** 2, 0.0)
    losses_ = losses_ + noise * np.random.default_rng(seed).standard_normal(steps)
    return lrs, [float(v) for v in losses_]


def test_choose_lr_picks_below_the_minimum_within_the_tried_range():
    lrs, curve = _range_curve(best=1e-2)
    choice = lr_range.choose_lr(lrs, curve)
    assert lrs[0] <= choice["lr"] <= lrs[-1]
    assert 1e-2 / 10 * 0.5 <= choice["lr"] <= 1e-2 / 3 * 1.5, choice  # a tenth to a third of the minimum
    assert choice["min_loss_lr"] == pytest.approx(1e-2, rel=0.6)
    moved = lr_range.choose_lr(*_range_curve(best=1e-4))
    assert moved["lr"] < choice["lr"] / 30  # it follows the curve


def test_choose_lr_is_robust_to_noise_and_stops_at_the_first_non_finite_loss():
    lrs, curve = _range_curve(best=1e-3, noise=0.05, seed=3)
    assert 1e-4 * 0.3 <= lr_range.choose_lr(lrs, curve)["lr"] <= 1e-3 / 3 * 2
    lrs, curve = _range_curve(best=1e-3)
    cut = next(i for i, lr in enumerate(lrs) if lr > 3e-3)
    broken = curve[:cut] + [float("nan")] * (len(curve) - cut)
    assert lr_range.choose_lr(lrs, broken)["lr"] < 3e-3
    flat_then_worse = [1.0 + 0.01 * i for i in range(20)]
    choice = lr_range.choose_lr(lrs[:20], flat_then_worse, lowest=1e-5)
    assert choice["lr"] == 1e-5 and "fell at no rate" in choice["rule"]


def test_diverged_once_the_smoothed_loss_is_four_times_its_minimum():
    assert not lr_range.diverged([2.0, 1.5, 1.0, 0.8])
    assert lr_range.diverged([2.0, 1.5, 1.0, 0.8, 5.0, 20.0, 80.0])
    assert lr_range.diverged([2.0, float("inf")])


def test_range_test_reads_each_batch_against_its_own_first_loss():
    """Mini-batches whose losses differ 100× (a detector's images) must not read as divergence."""
    import torch

    from mcomp.passes.distill.lr_range import range_test

    torch.manual_seed(0)
    x = torch.randn(4, 32, 8)
    w = torch.randn(8, 1)
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1)  # the batches' targets differ in scale
    y = (x @ w) * scales
    model = torch.nn.Linear(8, 1, bias=False)
    before = model.weight.detach().clone()

    def loss(trial, k):
        b = k % 4
        return ((trial(x[b]) * scales[b] - y[b]) ** 2).mean()

    def make(params, lr):
        return torch.optim.AdamW(params, lr=lr)

    raw = range_test(model, loss, make)
    cycled = range_test(model, loss, make, cycle=4)
    assert len(cycled.lrs) > len(raw.lrs)  # raw losses jump 100× between batches: "diverged" at the first lrs
    assert cycled.lr > 10 * raw.lr and 1e-4 < cycled.lr < 1
    assert torch.equal(model.weight.detach(), before)  # a throw-away copy was trained, not the model


def test_states_the_same_in_every_feed_are_constants_not_examples():
    """silero-vad v6 takes one state [2, 1, 128] for every feed: a constant. (A state that differs per
    feed, along an inner axis, is per-example input: tests/test_distill_inner_axis.py.)"""
    from mcomp.data import Dataset
    from mcomp.passes.distill.samples import from_dataset

    sr = np.array(16000, np.int64)
    shared = np.zeros((2, 1, 128), np.float32)  # one state for every feed (silero-vad v6): a constant
    samples = from_dataset(Dataset([{"input": np.zeros((4, 576), np.float32), "state": shared, "sr": sr}
                                    for _ in range(2)], None, False, "t"), "training")
    assert len(samples) == 8 and set(samples.constants) == {"state", "sr"}
    # a constant the loader copied into each feed (a cast) whose inner axis happens to match the batch
    table = np.ones((1, 4, 8), np.float32)
    copied = from_dataset(Dataset([{"input": np.zeros((4, 576), np.float32), "table": table.copy()}
                                   for _ in range(2)], None, False, "t"), "training")
    assert set(copied.constants) == {"table"}
