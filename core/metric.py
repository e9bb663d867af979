"""A user's task metric in place of top-1 accuracy: ``--metric file.py:function``.

Top-1 accuracy fits a classifier. A text recognizer is judged by exact strings, a detector by
mAP: the user knows the metric, mcomp supplies the outputs. The function is called once per
model with every output concatenated over the data, by name, and the labels as stored in the
data file, and returns a score where higher is better (a fraction for accuracy-like metrics,
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
        joined = {name: np.concatenate(per_feed, axis=0) if per_feed[0].ndim else np.stack(per_feed)
                  for name, per_feed in zip(names, outputs)}
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
