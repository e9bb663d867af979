"""Accuracy against labels: what the report, the gates and a pass's accuracy budget read alike (design §6).
Split from ``mcomp.evaluate``, which re-exports these names."""

from __future__ import annotations

import numpy as np

from mcomp.data import Dataset
from mcomp.kernels import fidelity as fk


def class_labels(dataset: Dataset) -> np.ndarray | None:
    """The data's labels as class indices, or None where they are none (no labels) or not indices: a
    text recognizer's strings read against argmax as 0 % accuracy, and a --max-drop held on it."""
    if not dataset.has_labels:
        return None
    labels = np.concatenate([np.atleast_1d(l) for l in dataset.labels])
    if labels.dtype.kind in "iub":
        return labels
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    return None


def labels_unread(dataset: Dataset) -> str | None:
    """Why labels the data has cannot be read as classes, or None."""
    if not dataset.has_labels or class_labels(dataset) is not None:
        return None
    kind = np.concatenate([np.atleast_1d(l) for l in dataset.labels]).dtype
    return (f"the labels are not class indices ({'text' if kind.kind in 'US' else kind}): "
            "--metric file.py:function scores them")


def task_accuracy(outputs: list[list[np.ndarray]], names: list[str], dataset: Dataset, metric=None) -> float | None:
    """The user's task metric (``mcomp.metric.Metric``) on ``outputs`` where given and the data has labels,
    else top-1 accuracy: what the report, the gates and a pass's accuracy budget read alike."""
    if metric is not None and dataset.has_labels:
        return metric(outputs, names, dataset)
    return accuracy(outputs, dataset)


def accuracy(outputs: list[list[np.ndarray]], dataset: Dataset) -> float | None:
    """Top-1 accuracy of the first class-score output (not a regression beside softmax scores:
    ``fk.beside_normalized_scores``), where the data has labels that are class indices; else, with labels
    0 and 1, of a model's only output where it is one score per example (``fk.binary_accuracy``)."""
    labels = class_labels(dataset)
    if labels is None:
        return None
    regressions = fk.beside_normalized_scores([per_feed[0] if per_feed else None for per_feed in outputs])
    for k, per_feed in enumerate(outputs):
        if per_feed and k not in regressions and fk.is_class_scores(per_feed[0]):
            scores = np.concatenate(per_feed, axis=0)
            if len(labels) != len(scores.reshape(-1, scores.shape[-1])):
                return None
            return fk.accuracy(scores, labels)
    only = outputs[0] if len(outputs) == 1 else []  # rank-0 scores (one per feed) do not join: none here
    return fk.binary_accuracy(np.concatenate(only), labels) if only and only[0].ndim else None
