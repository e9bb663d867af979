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

The models and measuring helpers are in ``prune_cases.py``, the Markdown tables in ``prune_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prune_cases import (CPU, R18_SHAPE, conv_widths, digits_accuracy, digits_eval, digits_feeds, export,  # noqa: E402
                         fidelity, folded, ort_ops, outputs, params_macs, r18_feeds, realmodels, resnet18,
                         torch_pruning_resnet, vgg_wide)
from prune_tables import markdown  # noqa: E402

from mcomp import bench, data, graph, model as model_io, summary  # noqa: E402
from mcomp.embedded import builtin_path  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.prune import Prune  # noqa: E402

THREADS: int | None = None  # onnxruntime's default (all cores) unless --threads
SMALL = {"digits-cnn", "ppocr-cls"}  # ~1 ms per run: 4× the rounds, as cheap as the others
PPOCR = ("ppocr-det", "ppocr-rec", "ppocr-cls")


def prune(model, ctx=None, **options):
    """Prunes a copy and returns (result, wall seconds)."""
    start = time.perf_counter()
    result = Prune(**options)(graph.copy(model), ctx or Context())
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
    achieved = result.details["achieved"]
    start = time.perf_counter()  # the same cut without the pass's zip/zstd size accounting
    prune_structured(graph.copy(loaded.model), rate=0.5, importance="l1", round_to=8, input_shapes=shapes)
    cut_seconds = time.perf_counter() - start
    runs = runs * 4 if label in SMALL else runs
    models = [("input", str(path)), ("mcomp", model_io.to_bytes(result.model)), *(extra or [])]
    timing, ratios = latency(models, feeds, runs)
    return {"model": label, "parameters": [result.details["parameters_before"], result.details["parameters_after"]],
            "parameters_ratio": achieved["parameters_ratio"], "macs_ratio": achieved["macs_ratio"],
            "macs": [result.details["macs_before"], result.details["macs_after"]],
            "latency_ratio": ratios["mcomp"], "input_p50_ms": round(timing.models[0].p50_ms, 3),
            "noise_floor": timing.noise_floor.to_dict(), "rounds": runs, "seconds": round(seconds, 3),
            "cut_seconds": round(cut_seconds, 3),
            "groups_cut": sum(1 for g in result.details["groups"] if g["channels_after"] < g["channels_before"]),
            "groups": len(result.details["groups"]), "left_whole": result.details["left_whole_reasons"],
            "_timing": timing, "_ratios": ratios, "_model": result.model}


def section_structured(runs: int, tmp: Path) -> tuple[list[dict], dict]:
    rows = []
    print("structured: digits …", file=sys.stderr)
    rows.append(structured_row("digits-cnn", builtin_path("digits"), digits_feeds(), {"image": (32, 1, 8, 8)}, runs))

    print("structured: ResNet-18 export + Torch-Pruning …", file=sys.stderr)
    net = resnet18()
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
                sizes = result.details["compressed_bytes"]
                entry = {"model": label, "method": method, "rate": rate,
                         "sparsity": result.details["achieved"]["sparsity"],
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
        export(resnet18(), R18_SHAPE, r18)
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
                    pruned = graph.copy(model)
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
        params = (result.details["parameters_before"], result.details["parameters_after"])
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
             ("MACs (graph.macs)", lambda: graph.macs(model, shapes).total),
             ("find groups", lambda: find_groups(model, prepared=True)),
             ("cut", lambda: driver.cut(model, 0.5, importance="l1", round_to=8, groups=got["find groups"])),
             ("parameters after", lambda: summary.tensor_counts(model)[0].parameters),
             ("MACs after", lambda: graph.macs(model, shapes).total)]
    for name, step in steps:
        Path("/proc/self/clear_refs").write_text("5")
        before, start = _status_kb("VmRSS"), time.perf_counter()
        got[name] = step()
        out.append({"stage": name, "seconds": round(time.perf_counter() - start, 3), "rss_before_mb": before / 1024,
                    "peak_mb": _status_kb("VmHWM") / 1024})
    return out, (got["parameters (tensor_counts)"], got["parameters after"])


def section_scale(tmp: Path, timeout: int) -> dict:
    print("scale: VGG-wide export …", file=sys.stderr)
    path = export(vgg_wide(), (1, 3, 64, 64), tmp / "vgg_wide.onnx")
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
