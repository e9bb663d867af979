"""Output-agreement metrics between a reference and a candidate model, on plain arrays."""

from __future__ import annotations

import numpy as np


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs (1.0 for identical, also for two zero tensors)."""
    a = ref.astype(np.float64).ravel()
    b = cand.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def relative_l2(ref: np.ndarray, cand: np.ndarray) -> float:
    """‖cand − ref‖₂ / ‖ref‖₂ (the absolute L2 error where the reference is all zeros)."""
    a = ref.astype(np.float64).ravel()
    b = cand.astype(np.float64).ravel()
    err = float(np.linalg.norm(b - a))
    norm = float(np.linalg.norm(a))
    return err / norm if norm > 0 else err


def max_abs(ref: np.ndarray, cand: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(cand.astype(np.float64) - ref.astype(np.float64))))


def is_classifier_shaped(output: np.ndarray) -> bool:
    """[batch, classes] (or [batch, ..., classes]) float scores with more than one class."""
    return output.dtype.kind == "f" and output.ndim >= 2 and output.shape[-1] > 1


def top1(output: np.ndarray) -> np.ndarray:
    return np.argmax(output.reshape(-1, output.shape[-1]), axis=-1)


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    return float(np.mean(top1(ref) == top1(cand)))


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of [batch, classes] scores against integer labels (or one-hot labels)."""
    labels = np.asarray(labels)
    if labels.ndim == output.ndim and labels.shape == output.shape:
        labels = np.argmax(labels, axis=-1)
    return float(np.mean(top1(output) == labels.reshape(-1)))
