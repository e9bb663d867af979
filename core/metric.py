"""A user's task metric in place of top-1 accuracy: ``--metric file.py:function``.

Top-1 accuracy fits a classifier. A text recognizer is judged by exact strings, a detector by
mAP: the user knows the metric, mcomp supplies the outputs. The function is called once per
model with every output joined over the data, by name, along the axis the examples lie on (axis 0,
or a time-major recognizer's batch axis: ``example_axis``), and the labels as stored in the data
file, and returns a score where higher is better (a fraction for accuracy-like metrics,
so that ``--max-drop 0.01`` means one point)::

    def exact_strings(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        texts = decode(outputs["softmax_0.tmp_0"])
        return float(np.mean([t == l for t, l in zip(texts, labels)]))
"""

from __future__ import annotations

import math

import numpy as np

from mcomp.errors import BadInput, short


class Metric:
    def __init__(self, spec: str) -> None:
        from mcomp.user_code import load_callable

        self.name = spec
        self.function = load_callable(spec, f"--metric {spec}")

    def __call__(self, outputs: list[list[np.ndarray]], names: list[str], dataset) -> float:
        counts = [np.atleast_1d(label).shape[0] for label in dataset.labels]
        joined = {name: np.concatenate(per_feed, axis=example_axis(per_feed, counts)) if per_feed[0].ndim
                  else np.stack(per_feed) for name, per_feed in zip(names, outputs)}
        labels = np.concatenate([np.atleast_1d(label) for label in dataset.labels])
        try:
            value = self.function(joined, labels)
        except Exception as exc:
            raise BadInput(f"--metric {self.name}: raised {type(exc).__name__}: {short(exc, 160, first_line=True)}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BadInput(f"--metric {self.name}: returned {type(value).__name__}, expected a number") from None
        if not math.isfinite(value):
            raise BadInput(f"--metric {self.name}: returned {value}, expected a finite number")
        return value


def example_axis(per_feed: list[np.ndarray], counts: list[int]) -> int:
    """The axis of an output along which each feed's examples lie, for joining it over the data: the first
    whose size is the feed's number of examples (``counts``) in every feed, with the other axes alike, so
    that the joined output is what one run over all the data would give. A CRNN exported from PyTorch
    (an LSTM without ``batch_first``) emits ``[time, batch, classes]``: joined on axis 0, 64 feeds of one
    captcha each read as one sequence of 1,280 steps, and an exact-string metric scored 0 % where the
    model reads 78 % of them. Axis 0 where no axis fits (a detector's rows, outputs of varying length)."""
    rank = per_feed[0].ndim
    for axis in range(rank):
        rest = [a.shape[:axis] + a.shape[axis + 1:] for a in per_feed]
        if all(a.ndim == rank and a.shape[axis] == n for a, n in zip(per_feed, counts)) \
                and all(r == rest[0] for r in rest):
            return axis
    return 0
