"""What each node of a model costs in time on the target provider, from onnxruntime's profiler.

NetAdapt chooses per-layer cuts by measured latency, not by operation counts: two convolutions
with the same MACs can differ several-fold in time (depthwise against dense, a 1×1 against a 3×3,
memory-bound against compute-bound), and a cost that counts MACs cuts where it saves the least
time. Timing every candidate cut (NetAdapt's lookup tables) costs a session per cut; the profiler
gives every node's kernel time in one session, and a cut of a node's channels saves about its
time times the share cut, as ``allocation.CostModel`` already models for MACs.

The session runs at onnxruntime's ``all`` level, the level mcomp's sessions (and onnxruntime's
default) run the model at: on an AVX-512 CPU its blocked-layout (NCHWc) kernels made the MNIST
CNN 4.5× faster than the ``basic`` level, and differently per layer (the first convolution, 1 → 16
channels, was half the time at ``basic`` and a sixth at ``all``), so times at ``basic`` cut for a
kernel mix the deployed model does not run. ``all`` renames what it rewrites; :func:`graph_node`
maps a kernel's name back to the node of the graph it computes. Times of nodes that do not map
(layout reorders, memory copies) are counted apart by the caller, not spread over the groups.
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

    # evaluate's session options (its ``all`` level, quiet logs, the threads), which mcomp's sessions run
    # with; the profiler needs its own session, so there is no public way in but the private builder.
    from mcomp.evaluate import _options, ort_errors
    from mcomp.sources import reads_data

    options = _options(threads)
    with tempfile.TemporaryDirectory(prefix="mcomp-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        reads_data(options, model)
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


# Ops onnxruntime folds into the convolution before them (the fused kernel is named after the last one's output).
_FUSED_AFTER_CONV = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "Add", "Sum",
                               "BatchNormalization"})
_CONVS = frozenset({"Conv", "FusedConv"})
_FUSED_DEPTH = 3  # Conv → BatchNormalization → Add → Relu


def graph_node(kernel: str, producers: dict) -> str | None:
    """The name of the node of the graph a kernel of the ``all`` level computes, or None (a reorder).

    ``producers`` maps each tensor name to the node writing it. A kernel keeps its node's name, or
    gets ``fused <name>`` (FusedConv, FusedGemm) or ``<name>/<fusion>`` (the first of the nodes
    fused), or, for a blocked-layout kernel, the name of the
    tensor it writes plus ``_nchwc``: a convolution fused with what follows it (BatchNormalization,
    a residual Add, its activation) is named after the last one's output, and is attributed to the
    convolution, whose channels are what its time scales with."""
    name = kernel[len("fused "):] if kernel.startswith("fused ") else kernel
    if not name.endswith("_nchwc"):
        # a node an optimizer fused from several is named "<first node>/<fusion>" (GatherSliceToSplitFusion)
        head, _, fusion = name.partition("/")
        return head if fusion and head in {n.name for n in producers.values()} else name
    node = producers.get(name[: -len("_nchwc")])
    if node is None:
        return None
    frontier = [node]
    for _ in range(_FUSED_DEPTH):
        if any(n.op_type in _CONVS for n in frontier):
            return next(n for n in frontier if n.op_type in _CONVS).name
        frontier = [producers[v.name] for n in frontier if n.op_type in _FUSED_AFTER_CONV
                    for v in n.inputs if v is not None and v.name in producers]
    conv = next((n for n in frontier if n.op_type in _CONVS), None)
    return (conv or node).name


__all__ = ["NodeTimes", "graph_node", "profile", "RUNS"]
