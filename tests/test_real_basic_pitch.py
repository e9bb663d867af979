"""Spotify's basic-pitch (a PyPI wheel): a tf2onnx audio model whose constant-Q transform is Convs sharing one
bias and whose log-magnitude is ``Log(x² + 1e-10)``.

Two defects it found, each in a library mcomp builds on: onnxscript's no-op rules took the ``+ 1e-10`` for a
``+ 0`` (they match within abs 1e-8), so both folding stages were refused (or, on data that never reached
zero, kept: log 0 on silence); and onnxruntime's quantizer named its copy of the shared bias after a Conv's
output, so every static quantization returned the input. The labels are the notes each synthesized clip
plays; the score is frame-level note F1, the model's own metric kind, through ``--metric``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from clirun import run_mcomp
from realmodels import music_clip

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

INPUT, NOTES = "serving_default_input_2:0", "StatefulPartitionedCall:1"
METRIC = f'''
import numpy as np

def f1(outputs, labels):
    notes, truth = outputs["{NOTES}"] > 0.5, np.asarray(labels) > 0
    return 2 * float((notes & truth).sum()) / max(float(notes.sum() + truth.sum()), 1.0)
'''


@pytest.fixture()
def clips(real_model, tmp_path):
    model = real_model("basic-pitch")
    audio, rolls = zip(*(music_clip(seed) for seed in range(24)))
    np.savez(tmp_path / "eval.npz", **{INPUT: np.stack(audio)[:, :, None], "labels": np.stack(rolls)})
    (tmp_path / "notes.py").write_text(METRIC)
    return model, tmp_path


def test_optimize_keeps_the_epsilon_before_the_log_and_folds(clips):
    model, folder = clips
    done = run_mcomp("optimize", model.path, "--data", "eval.npz", "--metric", "notes.py:f1", "-o", "o.onnx",
                     "--json", cwd=folder)
    assert done.returncode == 0, done.explain()
    doc = json.loads(done.out)
    applied = {stage["name"] for stage in doc["steps"][0]["changes"]["stages"] if stage["applied"]}
    assert {"fold-constants", "eliminate"} <= applied, doc["steps"][0]["notes"]
    assert doc["accuracy"]["reference"] > 0.8  # the model hears the notes played
    silence = {INPUT: np.zeros((1, 43844, 1), np.float32)}
    want = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, silence)
    got = ort.InferenceSession(str(folder / "o.onnx"), providers=["CPUExecutionProvider"]).run(None, silence)
    for a, b in zip(want, got, strict=True):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_static_quantize_writes_a_quantized_model(clips):
    model, folder = clips
    # the guard off: whether int8 pays on this CPU is not what is tested (the quantizer's graph is)
    done = run_mcomp("quantize", model.path, "--data", "eval.npz", "--metric", "notes.py:f1", "--no-latency-guard",
                     "-o", "q.onnx", "--json", cwd=folder)
    assert done.returncode == 0, done.explain()
    doc = json.loads(done.out)
    assert doc["steps"][0]["modified"], doc["steps"][0]["summary"]
    session = ort.InferenceSession(str(folder / "q.onnx"), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(folder / "q.onnx")).graph.node)
    notes = session.run([NOTES], {INPUT: music_clip(99)[0][None, :, None]})[0]
    assert notes.shape == (1, 172, 88) and np.isfinite(notes).all()
    assert doc["accuracy"]["candidate"] >= doc["accuracy"]["reference"] - 0.03, doc["accuracy"]
