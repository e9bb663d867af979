"""Benchmarks mcomp's commands on GPT-2 with its real 50,257-token vocabulary (issue 13).

GPT-2 from ``tests/transformer_models.py`` (4 layers, hidden 256, 4 heads, FFN 1024, random weights
from a fixed seed, exported by torch.onnx at opset 18) with ``--vocab`` tokens (default 50257): its
logits for ``--batch`` sequences of ``--seq`` tokens (default 16×128) are 0.4 GB a feed, which made
every fidelity check, calibration and distillation step slow. Each command runs as a user runs it, a
CLI subprocess under ``/usr/bin/time -v`` (wall seconds and peak RSS as measured, nothing assumed),
on one ``.npz`` of input_ids (evaluation data with another seed for ``compare`` and ``distill``):

- ``optimize``, ``optimize --level all``;
- ``quantize`` (static), ``--mode dynamic``, ``--mode weight-only`` (int4);
- ``prune --method structured --rate 0.5``;
- ``distill`` of the pruned model against the original, ``--epochs 1``;
- ``compare`` of the original against the dynamic-quantized model;
- onnxruntime's own ``quantize_dynamic`` and ``quantize_static`` (MinMax on the same data, QDQ) on
  the same file, for the work that mcomp's quantize does around them.

    python benchmarks/gpt2_vocab.py [--vocab 50257] [--batch 16] [--seq 128] [--only quantize,compare]
                                    [--timeout 900] [--out DIR]

Writes ``gpt2_vocab.json`` and ``.md`` under ``benchmarks/results`` (or ``--out``), with the
machine's load average at the start and the end (latency and wall times are sensitive to it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import transformer_models as tm  # noqa: E402

MCOMP = [sys.executable, "-m", "mcomp"]

# name → (arguments after the program, files it needs made first by an earlier command)
COMMANDS = {
    "optimize": (["optimize", "model.onnx", "--data", "data.npz", "-o", "opt.onnx"], []),
    "optimize --level all": (["optimize", "model.onnx", "--data", "data.npz", "--level", "all", "-o", "opt_all.onnx"], []),
    "quantize": (["quantize", "model.onnx", "--data", "data.npz", "-o", "q_static.onnx"], []),
    "quantize --mode dynamic": (["quantize", "model.onnx", "--data", "data.npz", "--mode", "dynamic",
                                 "-o", "q_dynamic.onnx"], []),
    "quantize --mode weight-only": (["quantize", "model.onnx", "--data", "data.npz", "--mode", "weight-only",
                                     "--bits", "4", "-o", "q_int4.onnx"], []),
    "prune --method structured --rate 0.5": (["prune", "model.onnx", "--data", "data.npz", "--method", "structured",
                                              "--rate", "0.5", "-o", "pruned.onnx"], []),
    "distill": (["distill", "pruned.onnx", "--teacher", "model.onnx", "--data", "data.npz", "--eval-data", "eval.npz",
                 "--epochs", "1", "-o", "distilled.onnx"], ["pruned.onnx"]),
    "compare": (["compare", "model.onnx", "q_dynamic.onnx", "--data", "eval.npz", "--json"], ["q_dynamic.onnx"]),
}

ORT_DYNAMIC = """
from onnxruntime.quantization import quantize_dynamic, QuantType
quantize_dynamic("model.onnx", "ort_dynamic.onnx", weight_type=QuantType.QInt8)
"""

ORT_STATIC = """
import numpy as np
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat

class Reader(CalibrationDataReader):
    def __init__(self):
        self.feeds = iter([dict(np.load("data.npz"))])
    def get_next(self):
        return next(self.feeds, None)

quantize_static("model.onnx", "ort_static.onnx", Reader(), quant_format=QuantFormat.QDQ)
"""

ORT_WORK = {"quantize": "onnxruntime quantize_static", "quantize --mode dynamic": "onnxruntime quantize_dynamic"}


def timed(argv: list[str], cwd: Path, timeout: int) -> dict:
    """Wall seconds, peak RSS (MiB) and exit status of ``argv`` under ``/usr/bin/time -v``."""
    start = time.perf_counter()
    try:
        done = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": None, "rc": None,
                "note": f"did not finish in {timeout} s"}
    seconds = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    row = {"seconds": round(seconds, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024) if rss else None,
           "rc": done.returncode}
    if done.returncode:
        lines = [l for l in done.stderr.splitlines() if l.strip() and not l.startswith("\t")]
        row["note"] = lines[-1][:200] if lines else ""
    elif "compare" in argv:
        row["compared"] = _compared(done.stdout)
    return row


def _compared(stdout: str) -> dict | None:
    """What the comparison says it compared: examples, feeds and its notes (a cut to fewer feeds is one)."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    data = report.get("data") or {}
    summary = (report.get("fidelity") or {}).get("summary") or {}
    return {"samples": data.get("samples"), "feeds": data.get("feeds"), "notes": data.get("notes", []),
            "cosine": summary.get("cosine"), "worst_slice": summary.get("worst_slice")}


def prepare(folder: Path, vocab: int, batch: int, seq: int) -> dict:
    model = tm.build("gpt2", vocab=vocab)
    shutil.copy(model.path, folder / "model.onnx")
    np.savez(folder / "data.npz", **model.feeds(batch=batch, seq=seq, seed=0))
    np.savez(folder / "eval.npz", **model.feeds(batch=batch, seq=seq, seed=1))
    return {**model.config, "batch": batch, "seq": seq,
            "logits_mib_per_feed": round(batch * seq * vocab * 4 / 2**20)}


def markdown(setup: dict, rows: dict, loads: dict) -> str:
    lines = [f"# GPT-2, vocabulary {setup['vocab']}: mcomp's commands", "",
             f"{setup['layers']} layers, hidden {setup['hidden']}, {setup['batch']} sequences of {setup['seq']} tokens "
             f"(logits {setup['logits_mib_per_feed']} MiB a feed). Load average {loads['start']} at the start, "
             f"{loads['end']} at the end; {os.cpu_count()} CPUs.", "",
             "| command | seconds | peak RSS (MiB) | onnxruntime, same work (s) | peak RSS (MiB) | note |",
             "|---|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        if name.startswith("onnxruntime"):
            continue
        ort = rows.get(ORT_WORK.get(name, ""), {})
        note = row.get("note", "")
        if row.get("compared"):
            seen = row["compared"]
            note = "; ".join([f"compared {seen['samples']} examples in {seen['feeds']} feed(s)", *seen["notes"]])
        lines.append(f"| `mcomp {name}` | {row['seconds']} | {row['peak_rss_mib']} | {ort.get('seconds', '')} | "
                     f"{ort.get('peak_rss_mib', '')} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--only", default="", help="comma-separated command names (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one command may take")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    loads = {"start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpt2-vocab-") as tmp:
        folder = Path(tmp)
        setup = prepare(folder, args.vocab, args.batch, args.seq)
        for name, (argv, needs) in COMMANDS.items():
            if chosen and not any(name == c or name.startswith(c + " ") for c in chosen):
                continue
            for need in needs:  # an earlier command's output, made here when that command was not chosen
                if not (folder / need).exists():
                    maker = next(n for n, (a, _) in COMMANDS.items() if need in a and a[0] != argv[0])
                    timed([*MCOMP, *COMMANDS[maker][0]], folder, args.timeout)
            rows[name] = timed([*MCOMP, *argv], folder, args.timeout)
            print(name, rows[name], flush=True)
        for name, script, twin in (("onnxruntime quantize_dynamic", ORT_DYNAMIC, "quantize --mode dynamic"),
                                   ("onnxruntime quantize_static", ORT_STATIC, "quantize")):
            if chosen and twin not in rows and name not in chosen:
                continue
            rows[name] = timed([sys.executable, "-c", script], folder, args.timeout)
            print(name, rows[name], flush=True)
    loads["end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result = {"setup": setup, "load_average": loads, "commands": rows}
    (args.out / "gpt2_vocab.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpt2_vocab.md").write_text(markdown(setup, rows, loads))
    print(markdown(setup, rows, loads))


if __name__ == "__main__":
    main()
