"""Benchmarks ``mcomp prune``: structured channel removal, unstructured sparsity, merge, and scale.

Five measurements, in one run, written to ``benchmarks/results/prune.json`` and ``.md``:

1. structured 50 % of the channels (importance l1, round_to 8) on the embedded digits CNN, a
   ResNet-18 built in torch (224², batch 1) and PP-OCR det/rec/cls: parameters, MACs and latency
   against the input (interleaved, spinning off, with the A/A noise floor), seconds to prune;
2. mcomp against Torch-Pruning (a benchmark-only dependency) on that ResNet-18 at 50 % with L1
   importance: parameters, MACs, and the latency of both ONNX files against the unpruned one, all
   three interleaved in one run;
3. unstructured sparsity (magnitude, global) at 50/80/90 % on digits and ppocr-rec: sparsity,
   zip/zstd size, latency (dense kernels: ~×1.0), and on digits the accuracy of magnitude, random
   and taylor;
4. merge against structured l1 at rates 0.3 and 0.5: output cosine / relative L2 on realistic
   inputs, and accuracy on digits;
5. scale: a VGG-style net with ~100 MB of weights pruned structured 50 % in a fresh process:
   seconds and peak RSS (VmHWM after a reset) against the model's size.

Times are measured, never asserted; the goals (ResNet-18 ≤ 0.35×, seconds and < 3× the model's
size at scale) are printed next to the figures.

    python benchmarks/prune.py [--runs 40] [--threads N] [--sections 1,2,3,4,5] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import realmodels  # noqa: E402

from mcomp import bench, data, model as model_io, summary  # noqa: E402
from mcomp.embedded import builtin_path  # noqa: E402
from mcomp.kernels import fidelity as fk  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.prune import Prune  # noqa: E402
from mcomp.session import make_session, resolve_providers  # noqa: E402

CPU = resolve_providers("cpu")
THREADS: int | None = None  # onnxruntime's default (all cores) unless --threads
SMALL = {"digits-cnn", "ppocr-cls"}  # ~1 ms per run: 4× the rounds, as cheap as the others
R18_SHAPE = (1, 3, 224, 224)
PPOCR = ("ppocr-det", "ppocr-rec", "ppocr-cls")


# --------------------------------------------------------------------------- models and data

def digits_eval() -> tuple[np.ndarray, np.ndarray]:
    with np.load(builtin_path("digits-eval")) as f:
        return f["image"], f["labels"]


def digits_feeds() -> list[dict[str, np.ndarray]]:
    images, _ = digits_eval()
    return [{"image": images[i * 32:(i + 1) * 32]} for i in range(4)]


def _resnet18():
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


def _vgg_wide():
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
    return summary.tensor_counts(model)[0].parameters, summary.macs(model, shapes)[0]


def outputs(source, feeds) -> np.ndarray:
    """The first output over all feeds, concatenated on the batch axis."""
    session = make_session(source, CPU, None, spinning=True)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds], axis=0)


def fidelity(reference: np.ndarray, candidate: np.ndarray, blank: int | None = None) -> dict:
    """Cosine and relative L2 of the outputs; top-1 agreement for classifier-shaped outputs, and with
    ``blank`` (a CTC blank class) the agreement on the positions where the reference reads a character."""
    got = {"cosine": round(fk.cosine(reference, candidate), 6),
           "relative_l2": round(fk.relative_l2(reference, candidate), 6)}
    if fk.is_classifier_shaped(reference):
        got["top1_agreement"] = round(fk.top1_agreement(reference, candidate), 4)
        if blank is not None:
            ref, cand = fk.top1(reference), fk.top1(candidate)
            chars = ref != blank
            got["char_agreement"] = round(float(np.mean(cand[chars] == ref[chars])), 4) if chars.any() else None
            got["char_positions"], got["positions"] = int(chars.sum()), int(chars.size)
    return got


def prune(model, ctx=None, **options):
    """Prunes a copy and returns (result, wall seconds)."""
    start = time.perf_counter()
    result = Prune(**options)(model_io.copy(model), ctx or Context())
    return result, time.perf_counter() - start


def latency(models, feeds, runs):
    timing = bench.interleaved(models, feeds, providers=CPU, threads=THREADS, warmup=5, runs=runs)
    return timing, {m.label: m.ratio for m in timing.models[1:]}


# --------------------------------------------------------------------------- 1 + 2: structured

def structured_row(label, path, feeds, shapes, runs, extra=None) -> dict:
    from mcomp.passes.prune.structured.driver import prune_structured

    loaded = model_io.load(path)
    result, seconds = prune(loaded.model, Context(input_shapes=shapes), method="structured", rate=0.5,
                            importance="l1", round_to=8)
    achieved = result.metrics["achieved"]
    start = time.perf_counter()  # the same cut without the pass's zip/zstd size accounting
    prune_structured(model_io.copy(loaded.model), rate=0.5, importance="l1", round_to=8, input_shapes=shapes)
    cut_seconds = time.perf_counter() - start
    runs = runs * 4 if label in SMALL else runs
    models = [("input", str(path)), ("mcomp", model_io.to_bytes(result.model)), *(extra or [])]
    timing, ratios = latency(models, feeds, runs)
    return {"model": label, "parameters": [result.metrics["parameters_before"], result.metrics["parameters_after"]],
            "parameters_ratio": achieved["parameters_ratio"], "macs_ratio": achieved["macs_ratio"],
            "macs": [result.metrics["macs_before"], result.metrics["macs_after"]],
            "latency_ratio": ratios["mcomp"], "input_p50_ms": round(timing.models[0].p50_ms, 3),
            "noise_floor": timing.noise_floor.to_dict(), "rounds": runs, "seconds": round(seconds, 3),
            "cut_seconds": round(cut_seconds, 3),
            "groups_cut": sum(1 for g in result.metrics["groups"] if g["channels_after"] < g["channels_before"]),
            "groups": len(result.metrics["groups"]), "left_whole": result.metrics["left_whole_reasons"],
            "_timing": timing, "_ratios": ratios, "_model": result.model}


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

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp / "ort-optimized.onnx")
    ort.InferenceSession(source, options, providers=CPU)
    graph = onnx.load(options.optimized_model_filepath).graph
    counts = collections.Counter((n.domain.split(".")[-1] + ":" if n.domain else "") + n.op_type for n in graph.node)
    return dict(counts.most_common())


def conv_widths(model) -> list[int]:
    return [int(n.inputs[1].shape[0]) for n in model.graph if n.op_type == "Conv"]


def section_structured(runs: int, tmp: Path) -> tuple[list[dict], dict]:
    rows = []
    print("structured: digits …", file=sys.stderr)
    rows.append(structured_row("digits-cnn", builtin_path("digits"), digits_feeds(), {"image": (32, 1, 8, 8)}, runs))

    print("structured: ResNet-18 export + Torch-Pruning …", file=sys.stderr)
    net = _resnet18()
    r18 = export(net, R18_SHAPE, tmp / "r18.onnx")
    tp_path, tp_seconds, tp_info = torch_pruning_resnet(net, tmp / "r18.torch-pruning.onnx")
    feeds = [{"x": np.random.default_rng(k).standard_normal(R18_SHAPE).astype(np.float32)} for k in range(4)]
    print("structured: ResNet-18 mcomp + 5-way latency …", file=sys.stderr)
    row = structured_row("resnet18 (torch, 224²)", r18, feeds, {"x": R18_SHAPE}, runs,
                         extra=[("torch-pruning", str(tp_path)), ("input folded", model_io.to_bytes(folded(r18))),
                                ("torch-pruning folded", model_io.to_bytes(folded(tp_path)))])
    rows.append(row)

    tp_model = model_io.load(tp_path).model
    base = model_io.load(r18).model
    p0, m0 = params_macs(base, {"x": R18_SHAPE})
    tp_p, tp_m = params_macs(tp_model, {"x": R18_SHAPE})
    mc_p, mc_m = params_macs(row["_model"], {"x": R18_SHAPE})
    p0_f = row["parameters"][0]  # after folding: the zero biases are initializers
    tp_p_f = summary.tensor_counts(folded(tp_path))[0].parameters
    ratios = row["_ratios"]
    ops = {"unpruned": ort_ops(str(r18), tmp), "unpruned_folded": ort_ops(model_io.to_bytes(folded(r18)), tmp),
           "mcomp": ort_ops(model_io.to_bytes(row["_model"]), tmp), "torch_pruning": ort_ops(str(tp_path), tmp)}
    mc_w, tp_w = conv_widths(row["_model"]), conv_widths(tp_model)
    ref = outputs(str(r18), r18_feeds(2))
    versus = {
        "model": "resnet18 (torch, 224²), 50 % channels, L1, round_to 8",
        "unpruned": {"parameters": p0, "parameters_folded": p0_f, "macs": m0,
                     "p50_ms": round(row["_timing"].models[0].p50_ms, 3),
                     "folded_latency_ratio": ratios["input folded"]},
        "mcomp": {"parameters": mc_p, "macs": mc_m, "latency_ratio": row["latency_ratio"],
                  "over_folded_input": round(row["latency_ratio"] / ratios["input folded"], 4),
                  "seconds": row["seconds"], "cut_seconds": row["cut_seconds"], "conv_out_channels": mc_w},
        "torch_pruning": {"parameters": tp_p, "parameters_folded": tp_p_f, "macs": tp_m,
                          "latency_ratio": ratios["torch-pruning"],
                          "folded_latency_ratio": ratios["torch-pruning folded"],
                          "over_folded_input": round(ratios["torch-pruning folded"] / ratios["input folded"], 4),
                          "seconds": round(tp_seconds, 3), "conv_out_channels": tp_w, **tp_info},
        "mcomp_over_tp": {"parameters": round(mc_p / tp_p, 4), "parameters_both_folded": round(mc_p / tp_p_f, 4),
                          "macs": round(mc_m / tp_m, 4)},
        "width_differences": [{"conv": i, "mcomp": a, "torch_pruning": b}
                              for i, (a, b) in enumerate(zip(mc_w, tp_w)) if a != b],
        "noise_floor": row["noise_floor"],
        "onnxruntime_ops": ops,
        "fidelity_vs_unpruned": {"mcomp": fidelity(ref, outputs(model_io.to_bytes(row["_model"]), r18_feeds(2))),
                                 "torch_pruning": fidelity(ref, outputs(str(tp_path), r18_feeds(2)))},
    }

    for name in PPOCR:
        print(f"structured: {name} …", file=sys.stderr)
        rm = realmodels.fetch(name)
        try:
            rows.append(structured_row(name, rm.path, [rm.feeds(seed=k) for k in range(4)], rm.input_shapes, runs))
        except Exception as exc:  # a real model that fails is a finding, not the end of the run
            rows.append({"model": name, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
    return rows, versus


# --------------------------------------------------------------------------- 3: unstructured

def digits_accuracy(source) -> float:
    images, labels = digits_eval()
    return round(fk.accuracy(outputs(source, [{"image": images}]), labels), 4)


def section_unstructured(runs: int) -> list[dict]:
    rates = (0.5, 0.8, 0.9)
    rows = []
    digits_path = builtin_path("digits")
    digits = model_io.load(digits_path).model
    train = data.load(builtin_path("digits-train"), digits, batch_size=64)
    rec = realmodels.fetch("ppocr-rec")
    images, _ = digits_eval()
    # (label, path, latency feeds, fidelity feeds, methods, CTC blank)
    cases = [("digits-cnn", digits_path, digits_feeds(), [{"image": images}], ("magnitude", "random", "taylor"), None),
             ("ppocr-rec", rec.path, [rec.feeds(seed=k) for k in range(4)], [rec.feeds(seed=k) for k in range(24)],
              ("magnitude",), 0)]
    for label, path, feeds, fid_feeds, methods, blank in cases:
        print(f"unstructured: {label} …", file=sys.stderr)
        model = model_io.load(path).model
        reference = outputs(str(path), fid_feeds)
        base_acc = digits_accuracy(str(path)) if label == "digits-cnn" else None
        pruned = {}
        for method in methods:
            for rate in rates:
                ctx = Context(data={"training": train}) if method == "taylor" else Context()
                result, seconds = prune(model, ctx, method=method, rate=rate, scope="global")
                blob = model_io.to_bytes(result.model)
                sizes = result.metrics["compressed_bytes"]
                entry = {"model": label, "method": method, "rate": rate,
                         "sparsity": result.metrics["achieved"]["sparsity"],
                         "bytes": sizes, "seconds": round(seconds, 3),
                         "fidelity": fidelity(reference, outputs(blob, fid_feeds), blank)}
                if base_acc is not None:
                    entry["accuracy"], entry["accuracy_input"] = digits_accuracy(blob), base_acc
                if method == "magnitude":
                    pruned[rate] = blob
                rows.append(entry)
        rounds = runs * 4 if label in SMALL else runs
        timing, ratios = latency([("input", str(path)), *((f"{r:.0%}", b) for r, b in pruned.items())], feeds, rounds)
        for entry in rows:
            if entry["model"] == label and entry["method"] == "magnitude":
                entry["latency_ratio"] = ratios[f"{entry['rate']:.0%}"]
                entry["noise_floor"] = timing.noise_floor.to_dict()
                entry["rounds"] = rounds
    return rows


# --------------------------------------------------------------------------- 4: merge vs magnitude

def section_merge(tmp: Path) -> list[dict]:
    rows = []
    images, _ = digits_eval()
    r18 = tmp / "r18.onnx"
    if not r18.exists():
        export(_resnet18(), R18_SHAPE, r18)
    from mcomp.passes.prune.structured.driver import prune_structured
    from mcomp.passes.prune.structured.merge import merge_similar

    cases = [("digits-cnn", builtin_path("digits"), [{"image": images}], {"image": (1, 1, 8, 8)}, (1, 8)),
             ("resnet18 (random init)", r18, r18_feeds(4), {"x": R18_SHAPE}, (8,))]
    for label, path, feeds, shapes, round_tos in cases:
        print(f"merge: {label} …", file=sys.stderr)
        model = model_io.load(path).model
        reference = outputs(str(path), feeds)
        for rate in (0.3, 0.5):
            for round_to in round_tos:
                entry = {"model": label, "rate": rate, "round_to": round_to}
                for method in ("structured", "merge"):
                    # what Prune(method=...) calls, without its zip/zstd size accounting (22 s on ResNet-18)
                    pruned = model_io.copy(model)
                    start = time.perf_counter()
                    if method == "merge":
                        report = merge_similar(pruned, rate=rate, round_to=round_to, input_shapes=shapes)
                    else:
                        report = prune_structured(pruned, rate=rate, importance="l1", round_to=round_to,
                                                  input_shapes=shapes)
                    seconds = time.perf_counter() - start
                    blob = model_io.to_bytes(pruned)
                    entry[method] = {**fidelity(reference, outputs(blob, feeds)),
                                     "parameters_ratio": round(report.ratio("parameters"), 6),
                                     "seconds": round(seconds, 3),
                                     "fell_back": sum(1 for g in report.groups if g.note)}
                    if label == "digits-cnn":
                        entry[method]["accuracy"] = digits_accuracy(blob)
                if label == "digits-cnn":
                    entry["accuracy_input"] = digits_accuracy(str(path))
                rows.append(entry)
    return rows


# --------------------------------------------------------------------------- 5: scale

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def scale_child(path: str, mode: str) -> int:
    """Runs in a fresh process: load, reset the RSS high-water mark, prune, report (JSON on stdout)."""
    import resource

    baseline = _status_kb("VmRSS")
    start = time.perf_counter()
    model = model_io.load(path).model
    load_seconds = time.perf_counter() - start
    loaded = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    stages = None
    if mode == "stages":
        stages, params = _stages(model)
    elif mode == "pass":
        result = Prune(method="structured", rate=0.5, importance="l1", round_to=8)(model, Context())
        params = (result.metrics["parameters_before"], result.metrics["parameters_after"])
    else:  # the channel removal alone, without the pass's zip/zstd size accounting
        from mcomp.passes.prune.structured.driver import prune_structured

        report = prune_structured(model, rate=0.5, importance="l1", round_to=8)
        params = (report.parameters_before, report.parameters_after)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    if stages:  # the mark was reset before each step: the run's peak is the highest step's
        peak = max(st["peak_mb"] for st in stages) * 1024
    print(json.dumps({"mode": mode, "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
                      "rss_baseline_mb": baseline / 1024, "rss_loaded_mb": loaded / 1024,
                      "peak_mb": peak / 1024, "parameters": params, "stages": stages,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def _stages(model) -> tuple[list[dict], tuple[int, int]]:
    """``prune_structured`` step by step, with the RSS high-water mark reset before each step."""
    from mcomp.passes.prune.structured import driver, prepare
    from mcomp.passes.prune.structured.groups import find_groups

    shapes = driver.default_input_shapes(model)
    out, got = [], {}
    steps = [("fold constants", lambda: prepare.fold(model)), ("lift", lambda: prepare.lift(model)),
             ("infer shapes", lambda: prepare.infer_shapes(model)),
             ("parameters (tensor_counts)", lambda: summary.tensor_counts(model)[0].parameters),
             ("MACs (summary.macs)", lambda: summary.macs(model, shapes)[0]),
             ("find groups", lambda: find_groups(model, prepared=True)),
             ("cut", lambda: driver.cut(model, 0.5, importance="l1", round_to=8, groups=got["find groups"])),
             ("parameters after", lambda: summary.tensor_counts(model)[0].parameters),
             ("MACs after", lambda: summary.macs(model, shapes)[0])]
    for name, step in steps:
        Path("/proc/self/clear_refs").write_text("5")
        before, start = _status_kb("VmRSS"), time.perf_counter()
        got[name] = step()
        out.append({"stage": name, "seconds": round(time.perf_counter() - start, 3), "rss_before_mb": before / 1024,
                    "peak_mb": _status_kb("VmHWM") / 1024})
    return out, (got["parameters (tensor_counts)"], got["parameters after"])


def section_scale(tmp: Path, timeout: int) -> dict:
    print("scale: VGG-wide export …", file=sys.stderr)
    path = export(_vgg_wide(), (1, 3, 64, 64), tmp / "vgg_wide.onnx")
    model = model_io.load(path).model
    counts = summary.tensor_counts(model)[0]
    del model
    out = {"model": "vgg-wide (torch, 64², 16 conv)", "parameters": counts.parameters,
           "weight_mb": round(counts.bytes / 2**20, 1), "file_mb": round(path.stat().st_size / 2**20, 1), "runs": []}
    for mode in ("driver", "pass", "stages"):
        print(f"scale: prune ({mode}) in a fresh process …", file=sys.stderr)
        cmd = [sys.executable, __file__, "--scale-child", str(path), "--scale-mode", mode]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            out["runs"].append({"mode": mode, "error": f"did not finish in {timeout} s"})
            continue
        if proc.returncode != 0:
            out["runs"].append({"mode": mode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]})
            continue
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        size = out["weight_mb"]
        run["peak_over_size"] = round(run["peak_mb"] / size, 2)
        run["growth_over_size"] = round((run["peak_mb"] - run["rss_baseline_mb"]) / size, 2)
        run["transient_over_size"] = round((run["peak_mb"] - run["rss_loaded_mb"]) / size, 2)
        run["parameters_ratio"] = round(run["parameters"][1] / run["parameters"][0], 4)
        out["runs"].append(run)
    return out


# --------------------------------------------------------------------------- Markdown

def _floor(f) -> str:
    return f"{f['p10']:.2f}–{f['p90']:.2f}"


def _best(a: float, b: float, higher: bool) -> tuple[str, str]:
    """Both figures, the better one in bold."""
    fa, fb = f"{a:.4f}", f"{b:.4f}"
    if a == b:
        return fa, fb
    return (f"**{fa}**", fb) if (a > b) == higher else (fa, f"**{fb}**")


def markdown(res: dict, runs: int) -> str:
    threads = res.get("threads") or "default"
    lines = [f"# mcomp prune ({runs} interleaved rounds, 4× for the ~1 ms models; CPU, {os.cpu_count()} cores, "
             f"onnxruntime threads {threads}, spinning off)", ""]
    if "structured" in res:
        lines += ["## 1. Structured: 50 % of the channels (importance l1, round_to 8)", "",
                  "Goal for ResNet-18: latency ≤ 0.35× the input. Seconds: the whole `Prune` pass, which also "
                  "computes the zip/zstd size of the model before and after; in brackets the channel removal "
                  "alone (`prune_structured`).", "",
                  "| model | parameters in → out (×) | MACs × | latency ×input (A/A p10–p90) | rounds | input p50 ms | groups cut | seconds pass (cut) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["structured"]:
            if "error" in r:
                lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['parameters'][0]:,} → {r['parameters'][1]:,} (×{r['parameters_ratio']:.3f}) "
                         f"| ×{r['macs_ratio']:.3f} | **×{r['latency_ratio']:.3f}** ({_floor(r['noise_floor'])}) | {r['rounds']} "
                         f"| {r['input_p50_ms']:.2f} | {r['groups_cut']}/{r['groups']} | {r['seconds']:.2f} ({r['cut_seconds']:.2f}) |")
        lines.append("")
    if "versus" in res:
        v = res["versus"]
        u, m, t = v["unpruned"], v["mcomp"], v["torch_pruning"]
        fid = v["fidelity_vs_unpruned"]
        lines += ["## 2. mcomp vs Torch-Pruning: " + v["model"], "",
                  "Torch-Pruning: `BasePruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5, global_pruning=False, "
                  "ignored_layers=[fc], round_to=8)`, then exported like the input; mcomp prunes the input's ONNX. "
                  "Parameters and MACs are counted the same way on the ONNX files (`mcomp inspect`). "
                  "\"folded\": the file after mcomp's constant folding only (no channel removed), a control for the "
                  "zero biases that torch's `optimize=False` export computes at run time. All five interleaved in one run.", "",
                  f"| | parameters | MACs | latency ×unpruned (A/A p10–p90 {_floor(v['noise_floor'])}) | latency ×folded unpruned | seconds | output cosine vs unpruned |",
                  "|---|---|---|---|---|---|---|",
                  f"| unpruned | {u['parameters']:,} | {u['macs']:,} | ×1 ({u['p50_ms']:.2f} ms p50) | | | |",
                  f"| unpruned, folded | {u['parameters_folded']:,} | {u['macs']:,} | ×{u['folded_latency_ratio']:.3f} | ×1 | | 1 |",
                  f"| mcomp | {m['parameters']:,} (×{m['parameters'] / u['parameters']:.3f}) | {m['macs']:,} (×{m['macs'] / u['macs']:.3f}) "
                  f"| **×{m['latency_ratio']:.3f}** | ×{m['over_folded_input']:.3f} | {m['seconds']:.2f} ({m['cut_seconds']:.2f} cut) | {fid['mcomp']['cosine']:.3f} |",
                  f"| torch-pruning | {t['parameters']:,} (×{t['parameters'] / u['parameters']:.3f}) | {t['macs']:,} (×{t['macs'] / u['macs']:.3f}) "
                  f"| **×{t['latency_ratio']:.3f}** | | {t['seconds']:.2f} (+ export) | {fid['torch_pruning']['cosine']:.3f} |",
                  f"| torch-pruning, folded | {t['parameters_folded']:,} | {t['macs']:,} | ×{t['folded_latency_ratio']:.3f} "
                  f"| ×{t['over_folded_input']:.3f} | | |",
                  "", f"mcomp / Torch-Pruning: parameters ×{v['mcomp_over_tp']['parameters']:.4f} as exported "
                      f"(×{v['mcomp_over_tp']['parameters_both_folded']:.4f} with both folded), "
                      f"MACs ×{v['mcomp_over_tp']['macs']:.4f}. "
                  + ("Every conv keeps the same number of channels in both." if not v["width_differences"] else
                     "Conv widths that differ: " + ", ".join(f"conv {d['conv']}: {d['mcomp']} vs {d['torch_pruning']}"
                                                             for d in v["width_differences"])), "",
                  "What onnxruntime runs after its own optimizer (level all): "
                  + "; ".join(f"{k.replace('_', ' ')}: " + ", ".join(f"{n} {op}" for op, n in c.items())
                              for k, c in v["onnxruntime_ops"].items()), ""]
    if "unstructured" in res:
        lines += ["## 3. Unstructured: global sparsity (first and last layers protected)", "",
                  "Zeros shrink the compressed file, not the latency: onnxruntime's dense kernels multiply them "
                  "at full cost, so the latency ratio should read ×1.0 within the noise floor. Fidelity: digits on "
                  "its 540 evaluation images; ppocr-rec on 24 synthetic text lines, where most of the input's CTC "
                  "positions are blank, so the agreement on the positions where the input reads a character "
                  "(in brackets: of how many) is the telling figure, not the cosine of the softmax.", "",
                  "| model | method | rate | sparsity | zip bytes in → out | zstd bytes in → out | latency ×input (A/A p10–p90) | output cosine | top-1 agreement (characters) | accuracy (input) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["unstructured"]:
            b, f = r["bytes"], r["fidelity"]
            lat = f"×{r['latency_ratio']:.3f} ({_floor(r['noise_floor'])})" if "latency_ratio" in r else "—"
            acc = f"{r['accuracy']:.3f} ({r['accuracy_input']:.3f})" if "accuracy" in r else "—"
            agree = f"{f['top1_agreement']:.3f}" if "top1_agreement" in f else "—"
            if f.get("char_agreement") is not None:
                agree += f" ({f['char_agreement']:.3f} of {f['char_positions']}/{f['positions']})"
            lines.append(f"| {r['model']} | {r['method']} | {r['rate']:.0%} | {r['sparsity']:.2%} "
                         f"| {b['before']['zip']:,} → {b['after']['zip']:,} (×{b['after']['zip'] / b['before']['zip']:.3f}) "
                         f"| {b['before']['zstd']:,} → {b['after']['zstd']:,} (×{b['after']['zstd'] / b['before']['zstd']:.3f}) "
                         f"| {lat} | {f['cosine']:.4f} | {agree} | {acc} |")
        lines.append("")
    if "merge" in res:
        lines += ["## 4. Merge vs magnitude (structured l1): fidelity to the input", "",
                  "The same kept channel counts for both (same parameters). digits: the 540-image evaluation set; "
                  "ResNet-18: random weights (section 1's), on the PP-OCR det pages cropped to 224² — its filters "
                  "have no learned redundancy, so those rows only indicate. Better figure in bold.", "",
                  "| model | rate | round_to | cosine l1 / merge | relative L2 l1 / merge | accuracy l1 / merge (input) | params × | groups merge cut by L1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["merge"]:
            s, g = r["structured"], r["merge"]
            cos, rl2 = _best(s["cosine"], g["cosine"], True), _best(s["relative_l2"], g["relative_l2"], False)
            acc = "—"
            if "accuracy" in s:
                a1, a2 = _best(s["accuracy"], g["accuracy"], True)
                acc = f"{a1} / {a2} ({r['accuracy_input']:.4f})"
            lines.append(f"| {r['model']} | {r['rate']} | {r['round_to']} | {cos[0]} / {cos[1]} | {rl2[0]} / {rl2[1]} "
                         f"| {acc} | ×{s['parameters_ratio']:.3f} | {g['fell_back']} |")
        lines.append("")
    if "scale" in res:
        s = res["scale"]
        lines += [f"## 5. Scale: {s['model']}, {s['parameters']:,} parameters, {s['weight_mb']} MB of weights "
                  f"({s['file_mb']} MB file), structured 50 %", "",
                  "Each run in a fresh process; peak = VmHWM after resetting it (clear_refs 5) once the model is "
                  "loaded; size = the weights' bytes; growth = peak − RSS before loading (the interpreter and "
                  "libraries); transient = peak − RSS once loaded. Goal: seconds, and peak < 3× the model's size.", "",
                  "| what is timed | seconds | load s | RSS before load → loaded MB | peak MB | peak / size | growth / size | transient / size | parameters × |",
                  "|---|---|---|---|---|---|---|---|---|"]
        names = {"driver": "channel removal (`prune_structured`)", "pass": "the whole `Prune` pass (+ zip/zstd sizes)",
                 "stages": "`prune_structured` step by step (below)"}
        for r in s["runs"]:
            if "error" in r:
                lines.append(f"| {names[r['mode']]} | failed: {r['error']} | | | | | | | |")
                continue
            lines.append(f"| {names[r['mode']]} | **{r['seconds']:.1f}** | {r['load_seconds']:.1f} "
                         f"| {r['rss_baseline_mb']:.0f} → {r['rss_loaded_mb']:.0f} | {r['peak_mb']:.0f} "
                         f"| **{r['peak_over_size']:.2f}×** | {r['growth_over_size']:.2f}× | {r['transient_over_size']:.2f}× "
                         f"| ×{r['parameters_ratio']:.3f} |")
        staged = next((r for r in s["runs"] if r.get("stages")), None)
        if staged:
            lines += ["", "Step by step (peak over the RSS before the step, as a multiple of the weights' size): "
                      + "; ".join(f"{st['stage']} {st['seconds']:.2f} s, +{(st['peak_mb'] - st['rss_before_mb']) / s['weight_mb']:.2f}×"
                                  for st in staged["stages"])]
        lines.append("")
    return "\n".join(lines)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: all cores]")
    parser.add_argument("--sections", default="1,2,3,4,5", help="1 and 2 run together")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--scale-timeout", type=int, default=300)
    parser.add_argument("--scale-child", help=argparse.SUPPRESS)
    parser.add_argument("--scale-mode", default="pass", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_child:
        return scale_child(args.scale_child, args.scale_mode)
    global THREADS
    THREADS = args.threads
    sections = set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"runs": args.runs, "threads": args.threads, "cores": os.cpu_count(), "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = [("structured", sections & {"1", "2"}, lambda: section_structured(args.runs, tmp)),
                 ("unstructured", "3" in sections, lambda: section_unstructured(args.runs)),
                 ("merge", "4" in sections, lambda: section_merge(tmp)),
                 ("scale", "5" in sections, lambda: section_scale(tmp, args.scale_timeout))]
        for name, wanted, step in steps:
            if not wanted:
                continue
            start = time.perf_counter()
            got = step()
            res["seconds"][name] = round(time.perf_counter() - start, 1)
            if name == "structured":
                res["structured"], res["versus"] = got
            else:
                res[name] = got
    (args.out / "prune.json").write_text(json.dumps(_clean(res), indent=2) + "\n")
    table = markdown(res, args.runs)
    (args.out / "prune.md").write_text(table)
    print(table)
    print("section seconds:", res["seconds"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
