"""A trained detector, not one built in a test: NudeNet's YOLOv8n (a PyPI wheel), quantized with the defaults.

``yolo_style`` rebuilds YOLOv8n's graph with random weights; this is the real thing, trained and
exported by Ultralytics with dynamic batch, height and width. Its head concatenates 4 box rows in
pixels (up to ~320) with 18 class-probability rows (0–1): one 8-bit scale over that Concat zeroes
every class score while the whole output keeps cosine > 0.99 (the defect the brief describes).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import realmodels
from clirun import run_mcomp

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_quantized_real_yolov8n_keeps_its_class_scores(real_model, tmp_path):
    model = real_model("nudenet-yolov8n")
    realmodels.write_npz(model, tmp_path / "d.npz", batches=12)
    res = run_mcomp("quantize", model.path, "--data", "d.npz", "-o", "q.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    report = json.loads((tmp_path / "r.json").read_text())
    worst = report["fidelity"]["summary"]["worst_slice"]
    assert worst["output"] == "output0" and worst["axis"] == 1 and worst["slices"] == 22, worst
    assert worst["cosine"] >= 0.95  # the default budget's floor on every slice
    assert any(n.startswith("kept float: Concat") for n in report["steps"][0]["notes"]), report["steps"][0]["notes"]
    # read again by onnxruntime, apart from mcomp's own figures: the class rows are still there
    images = np.load(tmp_path / "d.npz")["images"][:4, 0]
    ref = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0]
    assert _cosine(ref[:, 4:], got[:, 4:]) >= 0.95
    assert got[:, 4:].max() > 0.5 * ref[:, 4:].max() > 0
