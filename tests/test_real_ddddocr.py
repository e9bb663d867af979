"""ddddocr's captcha recognizer (a PyPI wheel): a CRNN exported from PyTorch, whose LSTM without
``batch_first`` makes its CTC output time-major, ``[time, batch, classes]``, and which ships quantized
dynamically by onnxruntime.

A user's exact-string ``--metric`` got its outputs joined along axis 0: one run per captcha (the batch is
fixed at 1) gave 16 sequences end to end along the time axis, one batch column, and the report said 0 %
where the model reads its strings. And pruning it said "no prunable weights left after --exclude" where
no --exclude was given: its weights are integer kernels.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from clirun import run_mcomp

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

METRIC = '''
import numpy as np

def same_ids(outputs, labels):  # a CTC read of [time, batch, classes]: argmax, repeats and blanks dropped
    (scores,) = outputs.values()
    assert scores.shape[1] == len(labels), scores.shape
    read = []
    for column in scores.argmax(-1).T:
        ids = [int(c) for i, c in enumerate(column) if c != 0 and (i == 0 or c != column[i - 1])]
        read.append("-".join(map(str, ids)))
    return float(np.mean([r == l for r, l in zip(read, labels)]))
'''


def test_a_time_major_ctc_model_is_scored_by_the_metric_as_it_reads(real_model, tmp_path):
    model = real_model("ddddocr-old")
    images = np.concatenate([model.feeds(seed=k)["input1"] for k in range(16)])
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    labels = []
    for image in images:  # the model's own reading of each captcha, as the labels
        column = session.run(None, {"input1": image[None]})[0][:, 0].argmax(-1)
        labels.append("-".join(str(int(c)) for i, c in enumerate(column) if c != 0 and (i == 0 or c != column[i - 1])))
    assert len(set(labels)) > 8  # different readings, not one string for every image
    np.savez(tmp_path / "d.npz", input1=images, labels=np.array(labels))
    (tmp_path / "m.py").write_text(METRIC)
    done = run_mcomp("optimize", model.path, "--data", "d.npz", "--metric", "m.py:same_ids", "-o", "o.onnx",
                     "--json", cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    accuracy = json.loads(done.out)["accuracy"]
    assert accuracy["reference"] == 1.0 and accuracy["candidate"] == 1.0, accuracy

    pruned = run_mcomp("prune", model.path, "--rate", "0.5", "-o", "p.onnx", cwd=tmp_path)
    assert pruned.returncode == 2 and "already quantized" in pruned.stderr, pruned.explain()
    assert not (tmp_path / "p.onnx").exists()
