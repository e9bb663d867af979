"""Dynamic int8 on real transformer exports: mcomp's composer against onnxruntime's ``quantize_dynamic``.

Each model (``tests/transformer_models``: BERT, GPT-2, ViT, exported by torch's dynamo exporter) is
quantized by the quantize pass twice, each in a fresh subprocess: once as it runs (the graph composed
by mcomp: ``dynamic_compose``), once with the composer switched off, so every candidate is built by
onnxruntime's quantizer. The latency guard is off and the budget is the default, so both build the
same candidates. For each: the pass's seconds, the subprocess's peak RSS (``ru_maxrss``, which
includes the loaded model and onnxruntime's sessions for the fidelity checks), which builder ran,
and whether the two written models are the same graph with the same weights (``fingerprint``). Times are
measured, never asserted.

    python benchmarks/dynamic_builders.py [--models bert,gpt2,vit] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once(name: str, composer: bool) -> dict:
    """Runs in the subprocess: one pass over ``name``; prints its figures as JSON."""
    sys.path.insert(0, str(ROOT / "tests"))
    import onnx_ir as ir
    import transformer_models as tm

    from mcomp.model import load
    from mcomp.pass_base import Context
    from mcomp.passes.quantize import Quantize, dynamic_compose

    if not composer:
        dynamic_compose.unsupported = lambda *args: "switched off by the benchmark"
    model = load(tm.build(name).path).model
    start = time.perf_counter()
    result = Quantize(mode="dynamic", latency_guard=False)(model, Context(providers=["CPUExecutionProvider"]))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "builder": result.details.get("builder"), "quantized_ops": result.details.get("quantized_ops"),
            "candidates": result.details.get("candidates_built"), "fingerprint": fingerprint(ir.serde.serialize_model(result.model))}


def fingerprint(proto) -> str:
    """sha256 over the nodes (sorted: the builders order independent nodes differently) and every initializer's
    name, type, shape and bytes: equal when the two models are the same graph with the same weights."""
    from onnx import helper, numpy_helper

    digest = hashlib.sha256()
    for node in sorted(proto.graph.node, key=lambda n: n.name):
        attrs = sorted((a.name, repr(helper.get_attribute_value(a))) for a in node.attribute)
        digest.update(repr((node.name, node.op_type, list(node.input), list(node.output), attrs)).encode())
    for tensor in sorted(proto.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(tensor)
        digest.update(repr((tensor.name, str(array.dtype), array.shape)).encode() + array.tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert,gpt2,vit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--once", nargs=2, metavar=("MODEL", "COMPOSER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(once(args.once[0], args.once[1] == "on")))
        return
    rows = []
    for name in args.models.split(","):
        runs = {}
        for composer in ("on", "off"):
            done = subprocess.run([sys.executable, __file__, "--once", name, composer], capture_output=True, text=True,
                                  check=True)
            runs[composer] = json.loads(done.stdout.strip().splitlines()[-1])
        on, off = runs["on"], runs["off"]
        rows.append({"model": name, "mcomp": on, "onnxruntime": off, "same_model": on["fingerprint"] == off["fingerprint"]})
        print(f"{name}: composer {on['seconds']} s, {on['peak_mib']} MiB ({on['builder']}); onnxruntime "
              f"{off['seconds']} s, {off['peak_mib']} MiB; same model: {rows[-1]['same_model']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dynamic_builders.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | quantized | builder | pass s (mcomp / onnxruntime) | peak RSS MiB (mcomp / onnxruntime) | "
             "same model |", "|---|---|---|---:|---:|:---:|"]
    for r in rows:
        on, off = r["mcomp"], r["onnxruntime"]
        lines.append(f"| {r['model']} | {on['quantized_ops']} | {on['builder']} | {on['seconds']} / {off['seconds']} "
                     f"(×{on['seconds'] / off['seconds']:.2f}) | {on['peak_mib']} / {off['peak_mib']} | "
                     f"{'yes' if r['same_model'] else 'NO'} |")
    (args.out / "dynamic_builders.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
