"""Benchmarks ``mcomp.heap.reused_heap`` in distillation: seconds per epoch and peak memory with a
training step's freed buffers kept for the next step, against glibc's default (each buffer over
its mmap threshold unmapped when freed and faulted in again at the next step).

A CNN on 224×224 images (the sizes where a step's buffers pass glibc's 32 MiB mmap threshold;
a digits- or MNIST-sized CNN's stay under it and are unaffected), random weights, cut by 30 % with
``mcomp prune --method structured`` and distilled from itself for ``--epochs`` on ``--images``
synthetic images at a fixed rate, once per mode, in fresh processes, alternating ``--repeats``
times. Peak memory is the process's high-water mark (``VmHWM``). Times are measured, never asserted.

    python benchmarks/distill_heap.py [--epochs 2] [--images 256] [--repeats 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Runs the CLI in this process after, for the "default" mode, making reused_heap a no-op; then prints the
# process's peak resident memory (VmHWM), which ru_maxrss of a parent does not give per child.
CHILD = """
import contextlib, sys
if sys.argv[1] == "default":
    import mcomp.heap
    mcomp.heap.reused_heap = contextlib.nullcontext
from mcomp.cli.main import run
sys.argv = ["mcomp", *sys.argv[2:]]
try:
    run()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("VmHWM", [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1], file=sys.stderr)
sys.exit(code)
"""


def cnn() -> torch.nn.Module:
    layers, width = [], 3
    for out, stride in ((32, 2), (64, 1), (64, 2), (128, 1), (128, 2)):
        layers += [torch.nn.Conv2d(width, out, 3, stride, 1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
        width = out
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        torch.onnx.export(cnn().eval(), (torch.zeros(1, 3, 224, 224),), str(work / "t.onnx"), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=True)
        rng = np.random.default_rng(0)
        np.savez(work / "train.npz", x=rng.standard_normal((args.images, 3, 224, 224), dtype=np.float32))
        mcomp = [sys.executable, "-m", "mcomp"]
        subprocess.run([*mcomp, "prune", "t.onnx", "--method", "structured", "--rate", "0.3", "-o", "s.onnx", "-q"],
                       cwd=work, check=True)
        for repeat in range(args.repeats):
            for mode in ("default", "reused"):
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CHILD, mode, "distill", "s.onnx", "--teacher", "t.onnx",
                                       "--data", "train.npz", "--epochs", str(args.epochs), "--lr", "0.001",
                                       "--json", "-o", "d.onnx"], cwd=work, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"{mode}: exit {proc.returncode}: {proc.stderr[-2000:]}")
                step = next(s for s in json.loads(proc.stdout)["steps"] if s["pass"] == "distill")
                peak = int(re.search(r"VmHWM (\d+)", proc.stderr).group(1)) * 1024
                rows.append({"repeat": repeat, "mode": mode, "wall_s": round(wall, 2),
                             "s_per_epoch": step["changes"]["seconds_per_epoch"], "peak_gib": round(peak / 2**30, 2)})
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill_heap.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| repeat | mode | s/epoch | wall s | peak GiB |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['repeat']} | {r['mode']} | {r['s_per_epoch']} | {r['wall_s']} | {r['peak_gib']} |" for r in rows]
    (args.out / "distill_heap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
