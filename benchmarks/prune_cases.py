"""What ``benchmarks/prune.py`` measures on: the models (digits, a ResNet-18 and a wide VGG built in
torch, Torch-Pruning's cut of the ResNet), their inputs, and the measuring helpers (outputs,
fidelity, parameters and MACs, onnxruntime's op counts). Plain functions, no measurements run here.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import realmodels  # noqa: E402

from mcomp import evaluate, graph, model as model_io, offline, summary  # noqa: E402
from mcomp.embedded import builtin_path  # noqa: E402
from mcomp.kernels import fidelity as fk  # noqa: E402
from mcomp.session import resolve_providers  # noqa: E402

CPU = resolve_providers("cpu")
R18_SHAPE = (1, 3, 224, 224)

# --------------------------------------------------------------------------- models and data

def digits_eval() -> tuple[np.ndarray, np.ndarray]:
    with np.load(builtin_path("digits-eval")) as f:
        return f["image"], f["labels"]


def digits_feeds() -> list[dict[str, np.ndarray]]:
    images, _ = digits_eval()
    return [{"image": images[i * 32:(i + 1) * 32]} for i in range(4)]


def resnet18():
    """The BasicBlock ResNet-18 (torchvision's layout, written here: no torchvision)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = None if stride == 1 and cin == cout else \
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            blocks, cin = [], 64
            for i, c in enumerate((64, 128, 256, 512)):
                blocks += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
                cin = c
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1))

    torch.manual_seed(0)
    return _nontrivial_bn(ResNet18())


def vgg_wide():
    """A VGG-style stack of Conv-BN-ReLU, ~26 M parameters (~104 MB of float32 weights)."""
    import torch
    from torch import nn

    layers, cin = [], 3
    for c in (128, 256, "M", 512, 512, "M", 512, 512, 512, "M", 512, 512, 512, "M", 512, 512, 512, 512):
        if c == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        cin = c
    torch.manual_seed(0)
    return _nontrivial_bn(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)))


def _nontrivial_bn(module):
    import torch
    from torch import nn

    module.eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module


def export(module, shape, path: Path) -> Path:
    import torch

    module.eval()
    torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=True, optimize=False, external_data=False,
                      opset_version=18, input_names=["x"], output_names=["y"], verbose=False)
    return path


def r18_feeds(n: int = 4) -> list[dict[str, np.ndarray]]:
    """Realistic-looking 224² images: the PP-OCR det pages (ImageNet-normalised), cropped."""
    det = realmodels.fetch("ppocr-det")
    return [{"x": np.ascontiguousarray(det.feeds(seed=k)["x"][:, :, :224, :224])} for k in range(n)]


# --------------------------------------------------------------------------- measuring helpers

def params_macs(model, shapes) -> tuple[int, int]:
    return summary.tensor_counts(model)[0].parameters, graph.macs(model, shapes).total


def outputs(source, feeds) -> np.ndarray:
    """The first output over all feeds, concatenated on the batch axis."""
    session = evaluate.session(source, CPU, None, spinning=True)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds], axis=0)


def fidelity(reference: np.ndarray, candidate: np.ndarray, blank: int | None = None) -> dict:
    """Cosine and relative L2 of the outputs; top-1 agreement for classifier-shaped outputs, and with
    ``blank`` (a CTC blank class) the agreement on the positions where the reference reads a character."""
    whole = evaluate.fidelity([[reference]], [[candidate]], ["y"])["outputs"]["y"]
    got = {"cosine": round(whole["cosine"], 6), "relative_l2": round(whole["relative_l2"], 6)}
    if fk.is_classifier_shaped(reference):
        got["top1_agreement"] = round(fk.top1_agreement(reference, candidate), 4)
        if blank is not None:
            ref, cand = fk.top1(reference), fk.top1(candidate)
            chars = ref != blank
            got["char_agreement"] = round(float(np.mean(cand[chars] == ref[chars])), 4) if chars.any() else None
            got["char_positions"], got["positions"] = int(chars.sum()), int(chars.size)
    return got


# --------------------------------------------------------------------------- Torch-Pruning and onnxruntime

def torch_pruning_resnet(net, path: Path) -> tuple[Path, float, dict]:
    """Torch-Pruning's BasePruner, L1 magnitude, 50 % per layer (local), round_to 8, fc ignored."""
    import torch
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    example = torch.randn(*R18_SHAPE)
    macs0, params0 = tp.utils.count_ops_and_params(net, example)
    start = time.perf_counter()
    pruner = tp.pruner.BasePruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, global_pruning=False, ignored_layers=[net.fc], round_to=8)
    pruner.step()
    seconds = time.perf_counter() - start
    macs1, params1 = tp.utils.count_ops_and_params(net, example)
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    export(net, R18_SHAPE, path)
    return path, seconds, {"tp_count": {"macs": [int(macs0), int(macs1)], "params": [int(params0), int(params1)]},
                           "conv_widths": widths}


def folded(path: Path):
    """The model after mcomp's structured ``prepare`` only (constants folded, no channel removed): torch's
    ``optimize=False`` export computes every bias-free Conv's zero bias at run time
    (``Expand(CastLike(0), Shape(W)[:1])``), which the pruned output no longer does."""
    from mcomp.passes.prune.structured.prepare import prepare

    return prepare(model_io.load(path).model)


def ort_ops(source, tmp: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime runs (its optimizer at level all, on this CPU)."""
    import collections

    optimized = offline.offline_optimized(source, "all", CPU)
    counts = collections.Counter((n.domain.split(".")[-1] + ":" if n.domain else "") + n.op_type for n in optimized.graph)
    return dict(counts.most_common())


def conv_widths(model) -> list[int]:
    return [int(n.inputs[1].shape[0]) for n in model.graph if n.op_type == "Conv"]


def digits_accuracy(source) -> float:
    images, labels = digits_eval()
    return round(fk.accuracy(outputs(source, [{"image": images}]), labels), 4)
