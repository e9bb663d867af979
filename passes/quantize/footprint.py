"""Memory at load: what loading a model into an onnxruntime session adds to a fresh process.

Measured in a child process per model, so that neither the quantizer's allocations nor a session
loaded earlier in this process (whose freed pages the allocator reuses) hide or inflate it: one
helper interpreter imports onnxruntime and forks a child per model, which resets its peak-RSS mark,
creates the session from the file (parsing, initializers, MatMulNBits' pre-packed weights) and
reports its peak and resident RSS growth. Host memory only (Linux ``/proc``): a GPU provider's device memory is not in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Reads and resets the peak RSS with ``mcomp.bench``'s helpers, as the latency benchmark does. That
# module imports nothing heavy (numpy, which onnxruntime imports anyway); importing it before the fork
# moves every row's growth by about -0.5 MB (the allocator's state), the empty session's too, so the
# ratio of net peaks stays.
SCRIPT = r"""
import os
import sys
import onnxruntime as ort
from mcomp.bench import reset_peak, status_kb

for path in sys.argv[1:]:  # one forked child per model: onnxruntime is imported once, each load starts clean
    read, write = os.pipe()
    if os.fork() == 0:
        base = status_kb("VmRSS")
        reset_peak()  # where it cannot, the peak includes the parent's, which is near ``base``
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        os.write(write, f"{int(status_kb('VmHWM') - base)} {int(status_kb('VmRSS') - base)}".encode())
        os._exit(0)
    os.close(write)
    print(os.read(read, 100).decode() or "-", flush=True)
    os.wait()
"""
TIMEOUT_S = 300


def at_load(paths: list[Path]) -> list[dict] | None:
    """``{"peak_mb", "resident_mb"}`` of loading each of ``paths`` in a CPU session; None where it cannot
    be measured (no ``/proc``, no ``fork``, a model the child could not load)."""
    if not Path("/proc/self/status").exists() or not hasattr(os, "fork"):
        return None
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, paths)], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split("\n")[: len(paths)]
    if done.returncode != 0 or len(lines) < len(paths) or any(len(line.split()) != 2 for line in lines):
        return None
    return [{"peak_mb": round(int(line.split()[0]) / 1024, 1), "resident_mb": round(int(line.split()[1]) / 1024, 1)}
            for line in lines]


def empty_model() -> bytes:
    """One Identity node: what any session costs (thread pools, allocators), apart from the model."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [value], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def compare(reference: bytes | str | Path, candidate: bytes | str | Path, workdir: Path) -> dict | None:
    """Memory at load of the input and of the candidate, with what was measured; None off Linux.
    ``ratio`` compares the peaks net of an empty session's (``session_mb``), which both include.
    Each model: its bytes, or the path of a file (a big one with its data beside it, loaded as it
    is rather than written again inline)."""
    written = {"empty": empty_model()}
    for name, model in (("input", reference), ("output", candidate)):
        if isinstance(model, bytes):
            written[name] = model
    paths = {name: workdir / f"footprint-{name}.onnx" for name in written}
    for name, data in written.items():
        paths[name].write_bytes(data)
    found = at_load([paths["empty"], paths.get("input") or Path(reference), paths.get("output") or Path(candidate)])
    for path in paths.values():
        path.unlink()
    if found is None:
        return None
    empty, before, after = found
    net = [max(x["peak_mb"] - empty["peak_mb"], 0.1) for x in (before, after)]
    return {"input": before, "output": after, "session_mb": empty["peak_mb"], "ratio": round(net[1] / net[0], 3),
            "what": "RSS growth of a process (forked after importing onnxruntime) creating an onnxruntime CPU "
                    "session from the file: peak during load, resident after; ratio of the peaks net of an "
                    "empty session's"}
