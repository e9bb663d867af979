"""Magika (Google's file-type detector, a PyPI wheel): a classifier exported from JAX through tf2onnx.

Its graph broke mcomp in ways the models built in tests did not: onnxruntime's static quantizer
raised on it (issue 12: a Gemm bias of shape [1, N] as tf2onnx writes it), a structured prune that
cut nothing rewrote it, and `mcomp distill` then trained the unchanged student against its own file
for minutes. The features are magika's own (first and last 1024 bytes of a file, padded with 256),
computed from files of common kinds written by ``realmodels``; the model's 214 class scores are real.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import realmodels
from clirun import run_mcomp

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]


def test_magika_quantized_with_the_defaults_keeps_its_file_types(real_model, tmp_path):
    model = real_model("magika")
    realmodels.write_npz(model, tmp_path / "d.npz", batches=72)
    res = run_mcomp("quantize", model.path, "--data", "d.npz", "-o", "q.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fidelity"]["summary"]["top1_agreement"] >= 0.95, report["fidelity"]["summary"]
    assert report["latency"]["feed_shapes"] == {"bytes": [1, 2048]}  # one file, as magika runs it
    # read again by onnxruntime, apart from mcomp's own figures
    rows = np.load(tmp_path / "d.npz")["bytes"][:, 0]
    ref = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, {"bytes": rows})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"bytes": rows})[0]
    assert len(set(ref.argmax(1))) >= 6  # the files are of several kinds, to the model too
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.95


def test_magika_pruned_structurally_is_returned_as_it_came_and_not_distilled(real_model, tmp_path):
    """No channel group of magika can be cut (its embedding's channels go through a Reshape, its Conv's
    into a LayerNorm spelled out over them): the prune writes the input's bytes, and distilling that
    against the original file is skipped rather than trained."""
    model = real_model("magika")
    realmodels.write_npz(model, tmp_path / "d.npz", batches=24)
    res = run_mcomp("prune", model.path, "--method", "structured", "--rate", "0.5", "--data", "d.npz",
                    "-o", "p.onnx", "--report", "p.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "p.json").read_text())["steps"][0]
    assert step["modified"] is False, step["summary"]
    assert (tmp_path / "p.onnx").read_bytes() == model.path.read_bytes()
    res = run_mcomp("distill", "p.onnx", "--teacher", model.path, "--data", "d.npz", "-o", "s.onnx",
                    "--report", "s.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "s.json").read_text())["steps"][0]
    assert step["modified"] is False and step["summary"].startswith("skipped: the student is its teacher")
