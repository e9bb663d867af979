"""Benchmarks per-group pruning rates: ``allocation: sensitivity`` against one uniform rate, at equal MACs.

For each model and each MAC target (−30 %, −50 %; ``--target macs``, so both allocations remove
the same share, up to the rounding to 8 channels), structured l1 pruning with uniform rates (the
rate bisected to the target) and with rates allocated from each group's measured sensitivity:

- the digits CNN (``builtin:digits``): sensitivity probed on 64 training examples
  (``builtin:digits-train``), accuracy and worst-slice cosine on the 540 held-out ones;
- PP-OCRv4 det (``tests/realmodels.py``, a trained third-party model, 256², batch 1): probes on 8
  rendered text pages, worst-slice cosine of the probability map on 8 other pages.

Latency: the input and both pruned models interleaved in one run (``mcomp.bench.interleaved``,
spinning off), with the A/A noise floor; the ratio between the two pruned models is the figure
that says whether the allocation cost speed, since both went through the same graph preparation.
Times are measured, never asserted.

    python benchmarks/prune_allocation.py [--runs 60] [--threads N] [--models digits,ppocr-det] [--out DIR]

Writes ``benchmarks/results/prune_allocation.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import realmodels  # noqa: E402

from mcomp import bench, data, evaluate, graph, model as model_io  # noqa: E402
from mcomp.model import to_bytes  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.prune import Prune  # noqa: E402
from mcomp.session import resolve_providers  # noqa: E402

CPU = resolve_providers("cpu")
TARGETS = (0.3, 0.5)
ALLOCATIONS = ("uniform", "sensitivity")
SMALL = {"digits"}  # well under a millisecond per run: 4× the rounds, as cheap as the others


def digits_case():
    """(model, probe data, held-out data, latency feeds, input shapes)."""
    model = model_io.load("builtin:digits").model
    train, held_out = data.load("builtin:digits-train", model), data.load("builtin:digits-eval", model)
    images = np.concatenate([f["image"] for f in held_out.feeds])
    feeds = [{"image": images[i * 32:(i + 1) * 32]} for i in range(4)]  # batch 32: compute, not call overhead
    return model, train, held_out, feeds, None


def det_case():
    det = realmodels.fetch("ppocr-det")
    model = model_io.load(det.path).model
    probe = data.Dataset([det.feeds(seed=s) for s in range(8)], source="ppocr-det pages 0–7")
    held_out = data.Dataset([det.feeds(seed=s) for s in range(100, 108)], source="ppocr-det pages 100–107")
    return model, probe, held_out, held_out.feeds[:4], det.input_shapes


CASES = {"digits": digits_case, "ppocr-det": det_case}


def quality(reference, candidate, held_out) -> dict:
    ref_s, cand_s = evaluate.session(reference, CPU), evaluate.session(candidate, CPU)
    ref, cand = evaluate.run(ref_s, held_out), evaluate.run(cand_s, held_out)
    fid = evaluate.fidelity(ref, cand, [o.name for o in ref_s.get_outputs()])["summary"]
    out = {"slice_cosine": round(fid["slice_cosine"], 6), "cosine": round(fid["cosine"], 6)}
    acc_ref, acc = evaluate.accuracy(ref, held_out), evaluate.accuracy(cand, held_out)
    if acc_ref is not None:
        out.update(accuracy=round(acc, 4), accuracy_input=round(acc_ref, 4))
    return out


def run_case(name: str, runs: int, threads: int | None) -> list[dict]:
    model, probe, held_out, feeds, shapes = CASES[name]()
    ctx = Context(data={"calibration": probe, "evaluation": held_out}, input_shapes=shapes, threads=threads,
                  providers=CPU)
    rows = []
    for target in TARGETS:
        pruned, row = {}, {"model": name, "target_macs": target}
        for alloc in ALLOCATIONS:
            start = time.perf_counter()
            result = Prune(method="structured", rate=target, target="macs", allocation=alloc)(graph.copy(model), ctx)
            seconds = time.perf_counter() - start
            pruned[alloc] = to_bytes(result.model)
            rates = [r for r in result.details["group_rates"].values()]
            row[alloc] = {"macs_ratio": result.details["achieved"]["macs_ratio"],
                          "parameters_ratio": result.details["achieved"]["parameters_ratio"],
                          "seconds": round(seconds, 2), "rates": [round(min(rates), 3), round(max(rates), 3)],
                          "group_rates": result.details["group_rates"],
                          **({"candidates": result.details["allocation"]["candidates"],
                              "chosen": result.details["allocation"]["chosen"]} if "allocation" in result.details else {}),
                          **quality(model, result.model, held_out)}
            print(f"{name} −{target:.0%} MACs {alloc}: {json.dumps({k: v for k, v in row[alloc].items() if k != 'group_rates'})}",
                  flush=True)
        rounds = runs * 4 if name in SMALL else runs
        timing = bench.interleaved([("input", to_bytes(model)), *((a, pruned[a]) for a in ALLOCATIONS)], feeds,
                                   providers=CPU, threads=threads, runs=rounds)
        row["rounds"] = rounds
        stats = {m.label: m for m in timing.models}
        for alloc in ALLOCATIONS:
            row[alloc]["latency_ratio"] = round(stats[alloc].ratio, 4)
        row["input_p50_ms"] = round(stats["input"].p50_ms, 3)
        row["sensitivity_over_uniform_latency"] = round(stats["sensitivity"].ratio / stats["uniform"].ratio, 4)
        floor = timing.noise_floor
        row["noise_floor"] = {"median": round(floor.median, 4), "p10": round(floor.p10, 4), "p90": round(floor.p90, 4)}
        print(f"{name} −{target:.0%} MACs latency ×input: uniform {row['uniform']['latency_ratio']:.3f}, "
              f"sensitivity {row['sensitivity']['latency_ratio']:.3f} (A/A {floor.p10:.3f}–{floor.p90:.3f})", flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], runs: int, threads) -> str:
    lines = [f"# Per-group pruning rates: sensitivity allocation vs uniform ({runs} interleaved rounds, 4× for "
             f"digits; CPU, "
             f"{os.cpu_count()} cores, onnxruntime threads {threads or 'default'}, spinning off)", "",
             "Structured l1, round_to 8, `--target macs`: both allocations remove the same share of MACs. "
             "Quality on held-out data (digits: 540 examples; PP-OCR det: 8 pages not used by the probes). "
             "Latency ×input: the input and both pruned models interleaved in one run.", "",
             "| model | MACs target | allocation | MACs × | params × | accuracy | worst-slice cosine | "
             "rates min–max | latency ×input (A/A p10–p90) | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        floor = row["noise_floor"]
        for alloc in ALLOCATIONS:
            r = row[alloc]
            acc = f"{r['accuracy']:.2%} (input {r['accuracy_input']:.2%})" if "accuracy" in r else "—"
            lines.append(f"| {row['model']} | −{row['target_macs']:.0%} | {alloc} | ×{r['macs_ratio']:.3f} "
                         f"| ×{r['parameters_ratio']:.3f} | {acc} | {r['slice_cosine']:.4f} "
                         f"| {r['rates'][0]:.2f}–{r['rates'][1]:.2f} | ×{r['latency_ratio']:.3f} "
                         f"({floor['p10']:.3f}–{floor['p90']:.3f}) | {r['seconds']:.1f} |")
    lines += ["", "Sensitivity over uniform latency (same preparation, so the allocation's own effect): " + ", ".join(
        f"{r['model']} −{r['target_macs']:.0%}: ×{r['sensitivity_over_uniform_latency']:.3f}" for r in rows), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = [row for name in args.models.split(",") for row in run_case(name, args.runs, args.threads)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_allocation.json").write_text(json.dumps({"runs": args.runs, "threads": args.threads,
                                                                "cpus": os.cpu_count(), "rows": rows}, indent=2))
    (args.out / "prune_allocation.md").write_text(markdown(rows, args.runs, args.threads))
    print(f"wrote {args.out / 'prune_allocation.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
