"""What each node of a model costs in time on the target provider, from onnxruntime's profiler.

NetAdapt chooses per-layer cuts by measured latency, not by operation counts: two convolutions
with the same MACs can differ several-fold in time (depthwise against dense, a 1×1 against a 3×3,
memory-bound against compute-bound), and a cost that counts MACs cuts where it saves the least
time. Timing every candidate cut (NetAdapt's lookup tables) costs a session per cut; the profiler
gives every node's kernel time in one session, and a cut of a node's channels saves about its
time times the share cut, as ``allocation.CostModel`` already models for MACs.

The session runs at onnxruntime's ``basic`` level: its fusions there (Conv with BatchNormalization,
with a bias Add) keep the surviving node's name, so each kernel time maps back to a node of the
graph; the layout rewrites of ``all`` rename nodes. Times of nodes that do not map (fused away,
memory copies) are counted apart by the caller, not spread over the groups.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcomp.errors import BadInput, short

WARMUP = 3  # runs before the profiled ones: first runs allocate and pick kernels
RUNS = 20  # profiled runs; each node's time is its median over them


@dataclass(frozen=True)
class NodeTimes:
    """Median kernel time per node name (µs) and what was run."""

    per_node: dict[str, float]
    runs: int
    provider: str


def profile(model: bytes | str, feed: dict[str, np.ndarray], providers: list[str], threads: int | None = None,
            runs: int = RUNS) -> NodeTimes:
    """Per-node kernel times of ``model`` (serialized, or a path; node names must be unique) on ``feed``."""
    import onnxruntime as ort

    from mcomp.evaluate import ort_errors

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="mcomp-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        try:
            session = ort.InferenceSession(model, options, providers=providers)
            for _ in range(WARMUP + runs):
                session.run(None, feed)
            path = session.end_profiling()
        except ort_errors() as exc:
            raise BadInput(f"prune: onnxruntime cannot time the model per node ({short(exc, 200)})") from None
        events = json.loads(Path(path).read_text())
    return _per_node(events, runs, providers[0])


def _per_node(events: list[dict], runs: int, provider: str) -> NodeTimes:
    """Median per-run kernel time of each node from the profiler's trace events, the warm-up runs
    (the first events of each node) left out."""
    by_node: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        by_node.setdefault(event["name"][: -len("_kernel_time")], []).append(float(event.get("dur", 0)))
    per_node = {}
    for name, durations in by_node.items():
        per_run = max(1, len(durations) // (WARMUP + runs))  # a node inside a loop runs several times per run
        timed = durations[WARMUP * per_run:] or durations
        per_node[name] = statistics.median(timed) * per_run
    return NodeTimes(per_node, runs, provider)


__all__ = ["NodeTimes", "profile", "RUNS"]
