"""Benchmarks mcomp's passes against peer tools on real third-party models.

For graph optimization: ``mcomp optimize`` (level basic, portable) against onnxslim
(a benchmark-only dependency) and against the input — node count (all graphs), file size,
latency ratio to the input measured interleaved in one run (spinning off, with the A/A
noise floor), and the max output difference on realistic inputs. Writes
``benchmarks/results/optimize.json`` and ``.md``. Times are measured, never asserted.

    python benchmarks/run.py [--models ppocr-det,silero-vad] [--runs 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import realmodels  # noqa: E402

from mcomp import bench, data, evaluate, graph, model as model_io  # noqa: E402
from mcomp.embedded import builtin_path  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.optimize import Optimize  # noqa: E402
from mcomp.session import input_specs, resolve_providers  # noqa: E402


def digits_case():
    path = builtin_path("digits")
    with np.load(builtin_path("digits-eval")) as f:
        images = f["image"]
    feeds = [{"image": images[i * 32:(i + 1) * 32]} for i in range(4)]
    return "digits-cnn (embedded)", path, feeds


def real_case(name: str):
    rm = realmodels.fetch(name)
    return name, rm.path, [rm.feeds(seed=k) for k in range(4)]


def max_diff(ref_path: Path, cand: bytes | str, feeds) -> float:
    """The largest |candidate − reference| over every float output and feed (mcomp's fidelity figure)."""
    cpu = ["CPUExecutionProvider"]
    ref, got = evaluate.session(ref_path, cpu), evaluate.session(cand, cpu)
    dataset = data.Dataset(feeds)
    outs_r, outs_c = evaluate.run(ref, dataset, "reference"), evaluate.run(got, dataset, "candidate")
    summary = evaluate.fidelity(outs_r, outs_c, [o.name for o in ref.get_outputs()])["summary"]
    return summary["max_abs_error"] or 0.0


def optimize_row(label: str, path: Path, feeds, runs: int, tmp: Path) -> dict:
    import onnxslim

    loaded = model_io.load(path)
    start = time.perf_counter()
    ds = data.Dataset(feeds[:2], None, False, "realistic feeds")
    result = Optimize(level="basic")(graph.copy(loaded.model), Context(data={"evaluation": ds}))
    mcomp_seconds = time.perf_counter() - start
    ours_path = model_io.save(result.model, tmp / f"{label}.mcomp.onnx").path

    start = time.perf_counter()
    slim = onnxslim.slim(onnx.load(str(path)))
    slim_seconds = time.perf_counter() - start
    slim_path = tmp / f"{label}.onnxslim.onnx"
    onnx.save(slim, str(slim_path))

    timing = bench.interleaved([("input", str(path)), ("mcomp", ours_path), ("onnxslim", str(slim_path))], feeds,
                               providers=resolve_providers("cpu"), warmup=5, runs=runs)
    ratios = {m.label: m.ratio for m in timing.models}
    slim_model = ir.serde.deserialize_model(slim)
    return {
        "model": label,
        "input": {"nodes": graph.node_count(loaded.model), "bytes": path.stat().st_size,
                  "p50_ms": timing.models[0].p50_ms},
        "mcomp": {"nodes": graph.node_count(result.model), "bytes": Path(ours_path).stat().st_size,
                  "latency_ratio": ratios["mcomp"], "max_abs_diff": max_diff(path, ours_path, feeds),
                  "seconds": round(mcomp_seconds, 3),
                  "stages_rejected": [s["name"] for s in result.details["stages"] if s["rejected"]]},
        "onnxslim": {"nodes": graph.node_count(slim_model), "bytes": slim_path.stat().st_size,
                     "latency_ratio": ratios["onnxslim"], "max_abs_diff": max_diff(path, str(slim_path), feeds),
                     "seconds": round(slim_seconds, 3)},
        "noise_floor": timing.noise_floor.to_dict(),
        "inputs": {s.name: list(feeds[0][s.name].shape) for s in input_specs(loaded.model)},
    }


def markdown(rows: list[dict], runs: int) -> str:
    lines = [f"# mcomp optimize vs onnxslim ({runs} interleaved rounds, CPU, spinning off)", "",
             "| model | nodes in → mcomp / onnxslim | bytes in → mcomp / onnxslim | latency ×input mcomp / onnxslim (A/A p10–p90) | max abs diff mcomp / onnxslim | seconds mcomp / onnxslim |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        i, m, s, f = r["input"], r["mcomp"], r["onnxslim"], r["noise_floor"]
        lines.append(f"| {r['model']} | {i['nodes']} → **{m['nodes']}** / {s['nodes']} | {i['bytes']:,} → {m['bytes']:,} / {s['bytes']:,} "
                     f"| ×{m['latency_ratio']:.3f} / ×{s['latency_ratio']:.3f} ({f['p10']:.2f}–{f['p90']:.2f}) "
                     f"| {m['max_abs_diff']:.2g} / {s['max_abs_diff']:.2g} | {m['seconds']} / {s['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(realmodels.all_models()))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [digits_case()] + [real_case(n) for n in args.models.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path, feeds in cases:
            print(f"optimize: {label} …", file=sys.stderr)
            rows.append(optimize_row(label.split(" ")[0], path, feeds, args.runs, Path(tmp)))
    (args.out / "optimize.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, args.runs)
    (args.out / "optimize.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
