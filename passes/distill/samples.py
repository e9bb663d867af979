"""Training examples: a Dataset's feeds joined along the batch axis, split and shuffled.

A ``Dataset`` is a list of feeds (batches); training wants examples it can shuffle and
re-batch. ``Samples`` holds one array per input with the examples along axis 0 (inputs
the same in every feed, such as an RNN state, are kept apart as constants) and the labels.
An input whose examples lie on an inner axis (an RNN state [layers, batch, hidden] given
per example) is held with that axis moved first; ``axes`` says where the model wants it,
and the graphs training runs take it examples-first (``layout``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mcomp.data import Dataset
from mcomp.errors import BadInput, NotApplicable


@dataclass
class Samples:
    inputs: dict[str, np.ndarray]  # examples along axis 0
    labels: np.ndarray | None = None
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # fed unchanged with every batch
    axes: dict[str, int] = field(default_factory=dict)  # inputs whose examples the model takes on an inner axis

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def take(self, index: np.ndarray) -> "Samples":
        return Samples({k: v[index] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[index], self.constants, self.axes)

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {**{k: v[index] for k, v in self.inputs.items()}, **self.constants}

    def arrays(self) -> dict[str, np.ndarray]:
        """For saving (the workers of ``--nproc`` read them back with :func:`from_arrays`)."""
        out = {f"input:{k}": v for k, v in self.inputs.items()}
        out.update({f"const:{k}": v for k, v in self.constants.items()})
        out.update({f"axis:{k}": np.array(v) for k, v in self.axes.items()})
        if self.labels is not None:
            out["labels"] = self.labels
        return out


def from_arrays(arrays) -> Samples:
    inputs = {k[6:]: np.asarray(arrays[k]) for k in arrays if k.startswith("input:")}
    constants = {k[6:]: np.asarray(arrays[k]) for k in arrays if k.startswith("const:")}
    axes = {k[5:]: int(arrays[k]) for k in arrays if k.startswith("axis:")}
    return Samples(inputs, np.asarray(arrays["labels"]) if "labels" in arrays else None, constants, axes)


def from_dataset(dataset: Dataset, role: str) -> Samples:
    """Joins the feeds of ``dataset`` along their examples' axis (0, or an inner one: see ``axes``);
    labels must give one entry per example."""
    feeds = dataset.feeds
    names = list(feeds[0])
    lead = next((n for n in names if n not in dataset.inner_batch), names[0])  # counts the examples
    if feeds[0][lead].ndim == 0:
        raise NotApplicable(f"{role} data: input {lead!r} is a scalar; training needs examples along a batch axis",
                            "distill")
    counts = [f[lead].shape[dataset.inner_batch.get(lead, 0)] for f in feeds]
    inputs, constants, axes = {}, {}, {}
    for name in names:
        arrays = [f[name] for f in feeds]
        if name in dataset.inner_batch:  # the loader split it along an inner axis (``data._split``)
            axes[name] = dataset.inner_batch[name]
            inputs[name] = np.concatenate([np.moveaxis(a, axes[name], 0) for a in arrays], axis=0)
            continue
        same = all(a is arrays[0] for a in arrays) and len(arrays) > 1
        if same or arrays[0].ndim == 0 or any(a.shape[0] != c for a, c in zip(arrays, counts)):
            # a constant copied into each feed is the same values each time; per-example values differ
            shared = same or all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])
            # feeds of one example each, each with its own copy of a state [2, 1, 128] (all zeros, say): the
            # state is per example; taken as a constant, batches of 64 got a state for one (silero-vad v6)
            one_each = not same and len(counts) > 1 and all(c == 1 for c in counts)
            inner = _inner_example_axis(arrays, counts) if not shared or one_each else None
            if inner is not None:
                axes[name] = inner
                inputs[name] = np.concatenate([np.moveaxis(a, inner, 0) for a in arrays], axis=0)
            else:
                constants[name] = arrays[0]
        else:
            inputs[name] = np.concatenate(arrays, axis=0)
    labels = None
    if dataset.labels is not None:
        labels = np.concatenate([np.atleast_1d(np.asarray(l)) for l in dataset.labels], axis=0)
        if labels.shape[0] != sum(counts):
            raise BadInput(f"{role} data ({dataset.source}): {labels.shape[0]} labels for {sum(counts)} examples")
    return Samples(inputs, labels, constants, axes)


def _inner_example_axis(arrays: list[np.ndarray], counts: list[int]) -> int | None:
    """The axis past 0 that is as long as each feed's examples (more than one, or one in every
    feed), if any: fed as a constant, the first feed's values would go with batches of another
    size, and the model would refuse them with an error that does not say why (silero-vad's LSTM:
    "initial_h must have shape …")."""
    one_each = all(c == 1 for c in counts)
    for axis in range(1, arrays[0].ndim):
        if all(a.ndim > axis and a.shape[axis] == c and (c > 1 or one_each) for a, c in zip(arrays, counts)):
            return axis
    return None


def split(samples: Samples, share: float, seed: int) -> tuple[Samples, Samples | None]:
    """A seeded, stratified (by label where labels are class indices) hold-out of ``share``."""
    n = len(samples)
    held = int(round(n * share))
    if share <= 0 or held < 1 or n - held < 1:
        return samples, None
    rng = np.random.default_rng([seed, 0xD157])
    labels = samples.labels
    if labels is not None and labels.ndim == 1 and labels.dtype.kind in "iu":
        order = rng.permutation(n)
        by_class = {}
        for i in order:
            by_class.setdefault(int(labels[i]), []).append(i)
        # Round-robin over the classes: every class is held out in proportion to its size.
        ranked = sorted(((k / len(members), i) for members in by_class.values() for k, i in enumerate(members)))
        val = np.array(sorted(i for _, i in ranked[:held]))
    else:
        val = np.sort(rng.permutation(n)[:held])
    train = np.setdiff1d(np.arange(n), val)
    return samples.take(train), samples.take(val)


def epoch_order(n: int, seed: int, epoch: int):
    """The shuffled example order of ``epoch``: a function of the seed and the epoch only, so a
    resumed run and every data-parallel worker see the same order."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).numpy()


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` in batches of ``batch_size``; a last batch of one example joins the one before it: a model
    exported through squeeze() drops the examples' axis at one example (PLCMOS gives a rank-0 score for
    one clip, [n] for n), so no batch of one is run where a larger one can be. Batches of one stay so (a
    model whose batch dim is fixed at 1, ddddocr's recognizer, trains one example a step)."""
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if batch_size > 1 and len(groups) > 1 and len(groups[-1]) == 1:
        groups[-2:] = [np.concatenate(groups[-2:])]
    return groups


def runnable(index: np.ndarray, fixed_batch: int | None, size: int) -> np.ndarray:
    """The examples to run for ``index``, whose first ``len(index)`` outputs are kept: padded with its last
    example up to ``size`` for a model with a fixed batch dim, or one example run twice (see ``batches``)."""
    if fixed_batch and len(index) < size:
        return np.concatenate([index, np.full(size - len(index), index[-1])])
    if len(index) == 1 and not fixed_batch:
        return np.concatenate([index, index])
    return index
