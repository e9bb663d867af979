"""Big models: time and memory of mcomp's commands on a model of several 8192×8192 MatMul layers
stored with external data, against what loading and running that model costs anyway.

The model is built here (float32, seeded, one ``<name>.onnx.data`` beside it, written layer by layer
so the builder holds one layer in memory). Each command runs as a subprocess, as a user runs it;
for each the table gives the wall time, that time over the baseline's (``onnx.load`` with its data
plus one onnxruntime session from the file and one run, in a subprocess, measured in the same run),
and the peak memory over the model's size, three ways: the kernel's ``maxrss`` (what ``/usr/bin/time -v``
prints), and the peaks of ``Rss`` and ``Pss`` in ``/proc/PID/smaps_rollup`` sampled every 0.1 s. ``Rss``
counts a page once per mapping: a model mapped twice in one process (the pipeline's input and an
onnxruntime session of the same file) reads as two models while one is in memory. ``Pss`` divides
each page by the mappings that share it, so it counts that page once (a shared library's pages
shared with other processes count in part). Then each output is checked: it has its external data beside it, loads in
onnxruntime from its path and runs, and the report's size row counts the data file; the report's
latency entry (its method, ratio and runs) is copied into the row. The input's files must be unchanged. Writes ``big_models.json`` and ``.md`` to ``--out``. Times are measured, never asserted.

    python benchmarks/big_models.py [--gib 0.75] [--commands optimize,prune] [--out benchmarks/results]
    python benchmarks/big_models.py --gib 2.4        # the over-2 GB case (protobuf's limit)
    python benchmarks/big_models.py --layout llm --commands quantize-dynamic   # an LLM's shape (below)

``--layout llm`` gives the chain an LLM's ends: token ids read rows of a ``[vocab, dim]`` embedding
table (Gather), and the last layer's output is multiplied by the same table transposed (a tied LM
head), as GPT-2 and many LLMs are exported. The table counts as one of the layers in ``--gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

COMMANDS = {
    "inspect": ["inspect"],
    "optimize": ["optimize"],
    "prune-magnitude": ["prune", "--rate", "0.5"],
    "prune-structured": ["prune", "--rate", "0.5", "--method", "structured"],
    "quantize-weight-only": ["quantize", "--mode", "weight-only"],
    "quantize-dynamic": ["quantize", "--mode", "dynamic"],
}
LAYER_BYTES = 8192 * 8192 * 4


def build(path: Path, layers: int, dim: int = 8192, seed: int = 0) -> int:
    """A chain of ``layers`` MatMuls ``[batch, dim] × [dim, dim]`` with every weight in one external
    data file; returns the bytes of the .onnx plus its data."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    inits, nodes, prev = [], [], "x"
    with open(path.parent / data_name, "wb") as fh:
        for i in range(layers):
            weight = rng.standard_normal((dim, dim), dtype=np.float32)
            weight *= np.float32(1 / np.sqrt(dim))
            offset = fh.tell()
            fh.write(weight.tobytes())
            tensor = TensorProto(name=f"w{i}", dims=[dim, dim], data_type=TensorProto.FLOAT,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", offset), ("length", weight.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            inits.append(tensor)
            out = "y" if i == layers - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"matmul{i}"))
            prev = out
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="big_models.py")
    path.write_bytes(model.SerializeToString())
    return stored_bytes(path)


def build_llm(path: Path, layers: int, dim: int = 8192, vocab: int = 8192, seed: int = 0) -> int:
    """``build``'s chain of ``layers`` MatMuls between a Gather on a ``[vocab, dim]`` table (first in the data
    file) reading ids ``[batch]`` and a tied head, ``MatMul(y, Transpose(table))`` → logits ``[batch, vocab]``."""
    build(path, layers, dim, seed)
    chain = onnx.load_model(str(path), load_external_data=False)
    rng = np.random.default_rng(seed + 1)
    data = path.parent / (path.name + ".data")
    offset = data.stat().st_size
    with open(data, "ab") as fh:
        for start in range(0, vocab, 1024):
            fh.write(rng.standard_normal((min(1024, vocab - start), dim), dtype=np.float32).tobytes())
    table = TensorProto(name="table", dims=[vocab, dim], data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", data.name), ("offset", offset), ("length", vocab * dim * 4)):
        table.external_data.add(key=key, value=str(value))
    graph = chain.graph
    graph.initializer.append(table)
    graph.node.insert(0, helper.make_node("Gather", ["table", "ids"], ["x"], name="embedding"))
    graph.node.extend([helper.make_node("Transpose", ["table"], ["table_t"], name="tied"),
                       helper.make_node("MatMul", ["y", "table_t"], ["logits"], name="lm_head")])
    graph.input[0].CopyFrom(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab]))
    path.write_bytes(chain.SerializeToString())
    return stored_bytes(path)


def feed_of(layout: str, dim: int) -> dict:
    """The one feed the baseline, the checks and ``--input-shape`` use: name → (dtype, shape)."""
    return {"ids": ("int64", [1])} if layout == "llm" else {"x": ("float32", [1, dim])}


def stored_bytes(path: Path) -> int:
    """The .onnx plus the data files it names (each once)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    files = {e.value for t in onnx.external_data_helper._get_all_tensors(proto) for e in t.external_data
             if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


BASELINE = """
import json, sys, numpy as np, onnx, onnxruntime as ort
onnx.load(sys.argv[1])
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
session.run(None, {k: np.ones(shape, dtype) for k, (dtype, shape) in json.loads(sys.argv[2]).items()})
"""

CHECK = """
import json, sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
y = session.run(None, {k: np.ones(shape, dtype) for k, (dtype, shape) in json.loads(sys.argv[2]).items()})[0]
print(json.dumps({"shape": list(y.shape), "finite": bool(np.isfinite(y).all())}))
"""


def run_measured(argv: list[str], cwd: Path) -> dict:
    """Runs ``argv``: wall seconds, exit code, maxrss (the kernel's counter, from ``wait4``) and the peaks
    of the sampled smaps ``Rss`` and ``Pss``, in bytes, and the tail of its stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, done = {"Rss:": 0, "Pss:": 0}, threading.Event()

    def sample() -> None:
        rollup = f"/proc/{proc.pid}/smaps_rollup"
        while not done.is_set():
            try:
                with open(rollup) as fh:
                    for line in fh:
                        key = line[:4]
                        if key in peak:
                            peak[key] = max(peak[key], int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    for reader in readers:
        reader.join()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(seconds, 2), "rc": proc.returncode, "peak_rss": peak["Rss:"], "peak_pss": peak["Pss:"],
            "maxrss": usage.ru_maxrss * 1024,
            "stderr": b"".join(err).decode(errors="replace")[-2000:]}


def check_output(path: Path, feed: dict) -> dict:
    """Whether the output has external data beside it and loads and runs in onnxruntime from its path."""
    proto = onnx.load_model(str(path), load_external_data=False)
    external = any(onnx.external_data_helper.uses_external_data(t)
                   for t in onnx.external_data_helper._get_all_tensors(proto))
    got = subprocess.run([sys.executable, "-c", CHECK, str(path), json.dumps(feed)], capture_output=True, text=True)
    runs = got.returncode == 0 and json.loads(got.stdout.strip().splitlines()[-1])["finite"]
    return {"external_data": external, "bytes": stored_bytes(path), "onnx_bytes": path.stat().st_size,
            "loads_and_runs": bool(runs), "error": None if runs else got.stderr.strip()[-300:]}


def bench(args) -> dict:
    layers = max(1, round(args.gib * (1 << 30) / (args.dim * args.dim * 4)))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "big.onnx"
    feed = feed_of(args.layout, args.dim)
    if args.layout == "llm":
        layers = max(1, layers - round(args.vocab * args.dim * 4 / (args.dim * args.dim * 4)))
        size = build_llm(model, layers, args.dim, args.vocab)
    else:
        size = build(model, layers, args.dim)
    inputs = [model, work / "big.onnx.data"]
    before = [(p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
    ends = f" between a {args.vocab}×{args.dim} table's Gather and its tied head" if args.layout == "llm" else ""
    print(f"model: {layers} × MatMul {args.dim}×{args.dim} float32{ends}, {size / (1 << 30):.2f} GiB, in {work}",
          flush=True)
    baseline = run_measured([sys.executable, "-c", BASELINE, str(model), json.dumps(feed)], work)
    print(f"baseline (onnx.load + session + run): {baseline['seconds']} s", flush=True)
    rows = []
    for name in args.commands:
        output = work / f"big.{name}.onnx"
        argv = [sys.executable, "-m", "mcomp", *COMMANDS[name], str(model)]
        if name != "inspect":
            argv += ["-o", str(output)]
            for name_, (_, shape) in feed.items():
                argv += ["--input-shape", f"{name_}={','.join(map(str, shape))}"]
        result = run_measured(argv, work)
        row = {"command": " ".join(["mcomp", *COMMANDS[name]]), **result,
               "x_baseline": round(result["seconds"] / baseline["seconds"], 2),
               "peak_rss_x_model": round(result["peak_rss"] / size, 2),
               "peak_pss_x_model": round(result["peak_pss"] / size, 2),
               "maxrss_x_model": round(result["maxrss"] / size, 2)}
        if name != "inspect" and result["rc"] == 0:
            row["output"] = check_output(output, feed)
            report = json.loads(output.with_name(output.stem + ".report.json").read_text())
            row["size_row"] = {"input": report["input"]["bytes"], "output": report["output"]["bytes"]}
            latency = report.get("latency") or {}
            row["latency"] = {"method": latency.get("method"), "ratio": latency.get("ratio"),
                              "runs": [(latency.get(k) or {}).get("runs") for k in ("reference", "candidate")]}
        rows.append(row)
        print(f"{row['command']}: {row['seconds']} s (×{row['x_baseline']}), peak RSS ×{row['peak_rss_x_model']} "
              f"(Pss ×{row['peak_pss_x_model']}) "
              f"(maxrss ×{row['maxrss_x_model']}), rc {row['rc']}", flush=True)
        if not args.keep:
            for f in work.glob(f"big.{name}.*"):
                f.unlink()
    unchanged = before == [(p.stat().st_size, p.stat().st_mtime_ns) for p in inputs]
    return {"model": {"layers": layers, "dim": args.dim, "dtype": "float32", "bytes": size, "external_data": True,
                      "layout": args.layout, **({"vocab": args.vocab} if args.layout == "llm" else {})},
            "baseline": {"what": "onnx.load (with data) + one onnxruntime session from the path + one run, batch 1",
                         **baseline},
            "commands": rows, "input_unchanged": unchanged,
            "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "platform": platform.platform(),
                        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)},
            "feed_shape": {name: shape for name, (_, shape) in feed.items()}}


def markdown(doc: dict) -> str:
    m, b = doc["model"], doc["baseline"]
    ends = f" between a {m['vocab']}×{m['dim']} table's Gather and its tied head" if m.get("layout") == "llm" else ""
    lines = [f"# Big models: {m['layers']} × MatMul {m['dim']}×{m['dim']} float32{ends}, external data, "
             f"{m['bytes'] / (1 << 30):.2f} GiB",
             "",
             f"Baseline (onnx.load with its data + one onnxruntime session from the file + one run, feed "
             f"{doc['feed_shape']}): {b['seconds']} s, peak RSS {b['peak_rss'] / m['bytes']:.2f}× the model "
             f"(Pss {b['peak_pss'] / m['bytes']:.2f}×) "
             f"(maxrss {b['maxrss'] / m['bytes']:.2f}×). Machine: {doc['machine']['cpus']} cores, "
             f"{doc['machine']['memory_gib']} GiB, load average at the end {doc['machine']['load_average_at_end'][0]:.1f}.",
             "",
             "| command | exit | time | × baseline | peak RSS × model (smaps) | peak PSS × model (smaps) | "
             "maxrss × model | output | external data | loads and runs | size row in → out |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["commands"]:
        out = r.get("output") or {}
        size = r.get("size_row")
        mib = f"{out['bytes'] / (1 << 20):,.0f} MiB" if out else "—"
        lines.append(
            f"| `{r['command']}` | {r['rc']} | {r['seconds']} s | ×{r['x_baseline']} | {r['peak_rss_x_model']}× | "
            f"{r.get('peak_pss_x_model', '—')}× | {r['maxrss_x_model']}× | {mib} | "
            f"{out.get('external_data', '—')} | "
            f"{out.get('loads_and_runs', '—')} | "
            + (f"{size['input']:,} → {size['output']:,} |" if size else "— |"))
    timed = [r for r in doc["commands"] if (r.get("latency") or {}).get("method") and r["latency"]["ratio"]]
    if timed:
        lines += ["", "The reports' latency entries (each report states its method in full):", ""]
        lines += [f"- `{r['command']}`: ×{r['latency']['ratio']:.3f}, runs (reference, candidate) "
                  f"{r['latency']['runs']}, {r['latency']['method'].split(';')[0]}" for r in timed]
    lines += ["", f"Input files unchanged: {doc['input_unchanged']}.",
              "Peak RSS (smaps) counts a resident page once per mapping of it, so a file mapped twice in one "
              "process counts twice; peak PSS counts it once (both sampled every 0.1 s). maxrss is the kernel's "
              "counter "
              "that `/usr/bin/time -v` prints. Memory-mapped weights are clean page-cache pages, counted in both. "
              "mcomp's latency measurement resets the kernel's high-water mark to read each session's peak, so "
              "maxrss misses any peak before it: read the smaps column.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=0.75, help="model size in GiB (layers of 256 MiB)")
    parser.add_argument("--dim", type=int, default=8192, help="MatMul size (8192: 256 MiB a layer)")
    parser.add_argument("--layout", choices=("chain", "llm"), default="chain",
                        help="chain: MatMuls only; llm: between an embedding table's Gather and its tied head")
    parser.add_argument("--vocab", type=int, default=8192, help="--layout llm: the table's rows")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, of {', '.join(COMMANDS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON and Markdown")
    parser.add_argument("--workdir", default=None, help="where the model and outputs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    args.commands = [c for c in args.commands.split(",") if c]
    unknown = set(args.commands) - set(COMMANDS)
    if unknown:
        parser.error(f"unknown command(s) {sorted(unknown)}; choose from {', '.join(COMMANDS)}")
    made = args.workdir is None
    if made:
        args.workdir = tempfile.mkdtemp(prefix="mcomp-big-")
    try:
        doc = bench(args)
    finally:
        if made and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "big_models.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "big_models.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
