"""Benchmarks ``mcomp quantize`` against onnxruntime's ``quantize_static`` on real third-party models.

For each model (the embedded digits CNN and the real-model fixtures): mcomp's default (static,
latency- and accuracy-guarded) against onnxruntime's ``quantize_static`` with its defaults
(QDQ, int8 activations and weights, per-tensor) and with its best hand-tuned setting (uint8
activations, int8 weights, per-tensor), all calibrated on the same realistic feeds, and
against the fp32 input: latency ratio to the input measured interleaved in one run (spinning
off, with the A/A noise floor), fidelity on held-out realistic feeds (the whole-output cosine
and the worst slice along each output's channel-like axes, ``mcomp.evaluate.fidelity``), file
size ratio, and seconds to quantize. "mcomp before" is mcomp as it was before per-slice
fidelity: whole-output cosine for its budget and no shared-scale check (``--fidelity whole
--max-range-ratio 1e12``). The detector (a YOLOv8n-style net built from Ultralytics' yaml,
random weights) also gets the cosine of its class-score rows; the OCR recognizer the share of
held-out text lines whose greedy CTC decoding is the same string as the fp32 model's. A second table gives the size modes: k-means
4-bit weight sharing (deployable size with Huffman-coded indices) and int4 weight-only.
Writes ``benchmarks/results/quantize.json`` and ``.md``. Times are measured, never asserted.

    python benchmarks/quantize.py [--models ppocr-det,silero-vad] [--runs 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import realmodels  # noqa: E402
import yolo_style  # noqa: E402

from mcomp import bench, data, evaluate, graph, model as model_io  # noqa: E402
from mcomp.embedded import builtin_path  # noqa: E402
from mcomp.kernels.fidelity import cosine, per_slice  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.quantize import Quantize  # noqa: E402
from mcomp.session import resolve_providers  # noqa: E402

CPU = resolve_providers("cpu")


def digits_case():
    with np.load(builtin_path("digits-train")) as f:
        train = f["image"]
    with np.load(builtin_path("digits-eval")) as f:
        images, labels = f["image"], f["labels"]
    calib = [{"image": train[i * 32:(i + 1) * 32]} for i in range(8)]
    held = [{"image": images[i * 32:(i + 1) * 32]} for i in range(16)]
    return "digits-cnn", builtin_path("digits"), calib, held, labels[:512]


def real_case(name: str):
    rm = realmodels.fetch(name)
    return name, rm.path, [rm.feeds(seed=k) for k in range(8)], [rm.feeds(seed=100 + k) for k in range(4)], None


def yolo_case(folder: Path):
    path = yolo_style.build(folder / "yolov8n-style.onnx")
    feed = lambda k: {yolo_style.INPUT_NAME: yolo_style.images(1, seed=k)}  # noqa: E731
    return "yolov8n-style", path, [feed(k) for k in range(8)], [feed(100 + k) for k in range(4)], None


class Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def peer(path: Path, feeds, out: Path, **options) -> tuple[float, str | None]:
    from onnxruntime.quantization import quantize_static

    start = time.perf_counter()
    try:
        quantize_static(str(path), str(out), Reader(feeds), **options)
        evaluate.session(out, CPU)  # "writes models onnxruntime refuses to load" counts as a failure
    except Exception as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return time.perf_counter() - start, None


def fidelity(label: str, ref_path: Path, cand: str, feeds) -> dict:
    """Whole-output and worst-slice cosine (mcomp's own figures), plus the model's own meaning where known:
    a detector's class-score rows, an OCR recognizer's decoded strings."""
    ref, got = evaluate.session(ref_path, CPU), evaluate.session(cand, CPU)
    dataset = data.Dataset(feeds, None, False, "held-out")
    outs_r, outs_c = evaluate.run(ref, dataset, "reference"), evaluate.run(got, dataset, "candidate")
    names = [o.name for o in ref.get_outputs()]
    summary = evaluate.fidelity(outs_r, outs_c, names)["summary"]
    worst = summary["worst_slice"]
    out = {"cosine": _round(summary["cosine"]), "slice_cosine": _round(summary["slice_cosine"]),
           "worst_slice": None if worst is None else f"{worst['output']}[axis {worst['axis']}][{worst['index']}]"}
    r, c = np.concatenate(outs_r[0]), np.concatenate(outs_c[0])
    if label.startswith("yolo"):  # rows 4… of [1, 84, anchors] are the class scores
        rows = per_slice(r[:, 4:], c[:, 4:], 1)
        out.update(score_rows_cosine=_round(cosine(r[:, 4:], c[:, 4:])),
                   worst_score_row_cosine=_round(min((x["cosine"] for x in rows), default=1.0)))
    if label == "ppocr-rec":
        same = [a == b for a, b in zip(ctc_strings(r), ctc_strings(c))]
        out["ctc_string_agreement"] = round(float(np.mean(same)), 4)
    return out


def ctc_strings(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, classes] scores: arg-max per step, repeats merged, blanks (0) dropped."""
    strings = []
    for best in probs.argmax(-1):
        merged = [int(k) for i, k in enumerate(best) if k != 0 and (i == 0 or k != best[i - 1])]
        strings.append(tuple(merged))
    return strings


def _round(value):
    return None if value is None else round(float(value), 6)


def accuracy(path: str, feeds, labels) -> float | None:
    if labels is None:
        return None
    sess = evaluate.session(path, CPU)
    logits = np.concatenate([sess.run(None, f)[0] for f in feeds])
    return float(np.mean(logits.argmax(-1) == labels))


def row(label: str, path: Path, calib, held, labels, runs: int, tmp: Path) -> dict:
    from onnxruntime.quantization import QuantType

    loaded = model_io.load(path)
    ds = data.Dataset(calib, None, False, "realistic feeds")
    start = time.perf_counter()
    result = Quantize()(graph.copy(loaded.model), Context(data={"calibration": ds, "evaluation": ds}, providers=CPU))
    ours_seconds = time.perf_counter() - start
    ours = str(model_io.save(result.model, tmp / f"{label}.mcomp.onnx").path)
    start = time.perf_counter()
    before = Quantize(max_range_ratio=1e12)(graph.copy(loaded.model), Context(
        data={"calibration": ds, "evaluation": ds}, providers=CPU, fidelity="whole"))
    before_path = str(model_io.save(before.model, tmp / f"{label}.mcomp-before.onnx").path)
    candidates = {"mcomp": (ours, ours_seconds, None), "mcomp-before": (before_path, time.perf_counter() - start, None)}
    for name, options in (("ort-default", {}),
                          ("ort-u8s8", {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8})):
        out = tmp / f"{label}.{name}.onnx"
        seconds, error = peer(path, calib, out, **options)
        candidates[name] = (str(out), seconds, error)
    loadable = [(k, v[0]) for k, v in candidates.items() if v[2] is None]
    timing = bench.interleaved([("fp32", str(path)), *loadable], held[:4], providers=CPU, warmup=5, runs=runs)
    ratios = {m.label: m.ratio for m in timing.models[1:]}
    entry = {"model": label, "fp32": {"bytes": path.stat().st_size, "p50_ms": round(timing.models[0].p50_ms, 4),
                                      "accuracy": accuracy(str(path), held, labels)},
             "noise_floor": timing.noise_floor.to_dict()}
    for name, (cand, seconds, error) in candidates.items():
        if error is not None:
            entry[name] = {"error": error, "seconds": round(seconds, 2)}
            continue
        entry[name] = {"latency_ratio": round(ratios[name], 4), **fidelity(label, path, cand, held),
                       "size_ratio": round(Path(cand).stat().st_size / path.stat().st_size, 4),
                       "seconds": round(seconds, 2), "accuracy": accuracy(cand, held, labels)}
    for name, res in (("mcomp", result), ("mcomp-before", before)):
        m = {**res.details, "summary": res.summary, "notes": res.notes}
        if not res.modified:  # the input itself: its ratio is 1 by construction, the measurement is A/A noise
            entry[name].update(measured_ratio=entry[name]["latency_ratio"], latency_ratio=1.0)
        entry[name].update(modified=res.modified, summary=m.get("summary"),
                           weight_ratio=(m.get("quantized_weight_bytes") or {}).get("ratio"),
                           quantized_ops=m.get("quantized_ops"), notes=m.get("notes"),
                           shared_scale=m.get("shared_scale"))
    held_ds = data.Dataset(held, None, False, "realistic feeds")
    entry["kmeans4"] = size_mode(loaded.model, "kmeans", held_ds, bits=4, min_fidelity=0)
    entry["kmeans4_budget"] = size_mode(loaded.model, "kmeans", held_ds, bits=4)
    return entry


def size_mode(model, mode: str, dataset=None, **options) -> dict:
    start = time.perf_counter()
    ctx = Context(data={"evaluation": dataset} if dataset is not None else {}, providers=CPU)
    try:
        result = Quantize(mode=mode, latency_guard=False, **options)(graph.copy(model), ctx)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"}
    m = {**result.details, "summary": result.summary}
    out = {"seconds": round(time.perf_counter() - start, 2), "summary": m.get("summary"),
           "cosine": (m.get("fidelity") or {}).get("cosine")}
    if mode == "kmeans":
        b = m["bytes"]
        out.update(float32=b["float32"], deployable_huffman=b["deployable_huffman"],
                   deployable_fixed=b["deployable_fixed_width"], ratio_huffman=round(b["float32"] / b["deployable_huffman"], 2),
                   ratio_fixed=round(b["float32"] / b["deployable_fixed_width"], 2), onnx_zstd=b["onnx_zstd"],
                   shared_layers=sum(layer["shared"] for layer in m["layers"]), layers=len(m["layers"]))
    else:
        out.update(weight_ratio=(m.get("quantized_weight_bytes") or {}).get("ratio"), modified=result.modified)
    return out


def matmul_heavy():
    """A MatMul-heavy MLP (none of the real models is): 4 × [1024, 1024] MatMuls, for int4 weight-only."""
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    dims, nodes, inits, prev = (512, 1024, 1024, 1024, 512), [], [], "x"
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(onnx.helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(onnx.helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    graph = onnx.helper.make_graph(nodes, "mlp", [onnx.helper.make_tensor_value_info("x", 1, ["N", dims[0]])],
                                   [onnx.helper.make_tensor_value_info(prev, 1, ["N", dims[-1]])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def _cell(entry: dict, key: str, fmt: str) -> str:
    if "error" in entry:
        return "fails"
    value = entry.get(key)
    return "–" if value is None else format(value, fmt)


def markdown(rows: list[dict], wo: dict, runs: int) -> str:
    order = ("mcomp", "mcomp-before", "ort-default", "ort-u8s8")

    def four(r, key, fmt, prefix=""):
        cells = [f"{prefix}{_cell(r[k], key, fmt)}" for k in order]
        cells[0] = f"**{cells[0]}**"
        return " / ".join(cells)

    lines = [f"# mcomp quantize vs onnxruntime quantize_static ({runs} interleaved rounds, CPU, spinning off)", "",
             "Each cell: mcomp / mcomp before per-slice fidelity (whole-output budget, no shared-scale check) / "
             "ORT default (QDQ S8S8 per-tensor) / ORT U8S8 (uint8 activations, int8 weights, per-tensor: its best "
             "hand-tuned setting). Latency and size as a ratio to the fp32 input (lower is better), measured "
             "interleaved in one run; cosine on held-out realistic inputs: whole = lowest cosine of a flattened "
             "output, worst slice = lowest cosine of a slice along an output's channel-like axes (a detector's "
             "class rows, a recognizer's time steps; the whole output where it has none).", "",
             "| model | fp32 p50 ms | latency (A/A p10–p90) | whole cosine | worst-slice cosine | size | seconds "
             "| mcomp kept |",
             "|---|---:|---|---|---|---|---|---|"]
    for r in rows:
        m, f = r["mcomp"], r["noise_floor"]
        compute = {k: v for k, v in (m.get("quantized_ops") or {}).items() if k in ("Conv", "ConvTranspose", "MatMul", "Gemm")}
        kept = "int8 " + ", ".join(f"{k} {v}" for k, v in compute.items()) if m.get("modified") else "input (unchanged)"
        if m.get("shared_scale"):
            kept += "; float: " + ", ".join(w["node"] for w in m["shared_scale"])
        lines.append(
            f"| {r['model']} | {r['fp32']['p50_ms']:.2f} | {four(r, 'latency_ratio', '.3f', '×')} "
            f"({f['p10']:.2f}–{f['p90']:.2f}) | {four(r, 'cosine', '.4f')} | {four(r, 'slice_cosine', '.4f')} "
            f"| {four(r, 'size_ratio', '.3f', '×')} | {four(r, 'seconds', '.1f')} | {kept} |")
    meaning = [r for r in rows if any(k in r["mcomp"] for k in ("score_rows_cosine", "ctc_string_agreement"))]
    if meaning:
        lines += ["", "What the outputs mean (same order of columns):", "",
                  "| model | figure | mcomp / before / ORT default / ORT U8S8 |", "|---|---|---|"]
        for r in meaning:
            for key, label in (("score_rows_cosine", "cosine of the class-score rows, together"),
                               ("worst_score_row_cosine", "worst class-score row cosine"),
                               ("ctc_string_agreement", "held-out lines decoded to the fp32 model's string")):
                if key in r["mcomp"]:
                    lines.append(f"| {r['model']} | {label} | {four(r, key, '.4f')} |")
    acc = [r for r in rows if r["fp32"]["accuracy"] is not None]
    for r in acc:
        lines += ["", f"{r['model']} accuracy (held-out): fp32 {r['fp32']['accuracy']:.2%}, mcomp "
                      f"{r['mcomp'].get('accuracy', 0):.2%}, ORT default {r['ort-default'].get('accuracy') or 0:.2%}, "
                      f"ORT U8S8 {r['ort-u8s8'].get('accuracy') or 0:.2%}"]
    lines += ["", "## Size modes", "",
              "k-means 4-bit weight sharing (no retraining): deployable size = codebooks + Huffman-coded indices "
              "+ float32 for the rest, as a reduction of the float32 parameter bytes; cosine on held-out inputs.", "",
              "| model | all layers shared: ×size (Huffman / fixed), cosine | default budget (cosine ≥ 0.98): layers shared, ×size (Huffman), cosine | seconds |",
              "|---|---|---|---:|"]
    for r in rows:
        k, b = r["kmeans4"], r["kmeans4_budget"]
        first = k["error"] if "error" in k else f"×{k['ratio_huffman']} / ×{k['ratio_fixed']}, {k['cosine']:.4f}"
        second = b["error"] if "error" in b else (f"{b['shared_layers']}/{b['layers']}, ×{b['ratio_huffman']}, "
                                                  f"{b['cosine']:.4f}")
        lines.append(f"| {r['model']} | {first} | {second} | {k.get('seconds', '–')} / {b.get('seconds', '–')} |")
    lines += ["", "| MatMul-heavy model | weight-only int4 (block 32) weight bytes | cosine | int8 static weight bytes |",
              "|---|---:|---:|---:|",
              f"| MLP 512→1024³→512 (synthetic) | ×{wo['int4'].get('weight_ratio')} smaller | {wo['int4'].get('cosine')} "
              f"| ×{wo['int8'].get('weight_ratio')} smaller |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(["yolov8n-style", *realmodels.all_models()]))
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # onnxruntime's quantizer warns per node
    names = [n for n in args.models.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [digits_case()] + [yolo_case(Path(tmp)) if n == "yolov8n-style" else real_case(n) for n in names]
        for label, path, calib, held, labels in cases:
            print(f"quantize: {label} …", file=sys.stderr)
            rows.append(row(label, Path(path), calib, held, labels, args.runs, Path(tmp)))
    mlp = matmul_heavy()
    rng = np.random.default_rng(0)
    feeds = data.Dataset([{"x": rng.standard_normal((1, 512)).astype(np.float32)} for _ in range(8)], None, False, "rand")
    wo = {"int4": size_mode(mlp, "weight-only", bits=4, block_size=32, min_fidelity=0)}
    static = Quantize(latency_guard=False, min_fidelity=0)(graph.copy(mlp), Context(
        data={"calibration": feeds, "evaluation": feeds}, providers=CPU))
    wo["int8"] = {"weight_ratio": static.details["quantized_weight_bytes"]["ratio"]}
    doc = {"runs": args.runs, "rows": rows, "matmul_heavy": wo}
    (args.out / "quantize.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    table = markdown(rows, wo, args.runs)
    (args.out / "quantize.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
