"""Per-layer quantization error: where the quantized model's activations leave the float model's.

Both models are run on the same feeds with every quantized node's output (and its inputs)
exposed. A layer's error is the noise ratio ‖q − f‖² / ‖f‖² of its output; what the layer
*adds* is that minus the worst noise already present at its inputs, which is what sending
the layer back to float can recover. Layers are ranked by the noise they add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mcomp.kernels import quant as qk
from mcomp.kernels.fidelity import cosine


@dataclass
class LayerError:
    name: str
    op_type: str
    params: int
    macs: int | None
    noise: float  # noise ratio at the output
    added: float  # noise ratio added by this layer
    cosine: float

    def row(self) -> dict:
        return {"node": self.name, "op_type": self.op_type, "params": self.params, "macs": self.macs,
                "sqnr_db": _db(self.noise), "added_noise_db": _db(self.added), "cosine": round(self.cosine, 6)}


def layer_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, units, feeds, providers,
                 progress=None) -> list[LayerError]:
    """Errors of ``units`` (nodes of ``reference``), ranked by the noise each adds (largest first);
    ``progress(description, done, total)`` hears of each of the two models run with its tensors exposed."""
    report = progress or (lambda description, done, total: None)
    nodes = {n.name: n for n in reference.graph.node}
    skip = {t.name for t in reference.graph.initializer} | {i.name for i in reference.graph.input}
    wanted = {}
    for unit in units:
        node = nodes.get(unit.name)
        if node is None or not node.output:
            continue
        wanted[unit.name] = (node.output[0], [i for i in node.input if i and i not in skip])
    seen = _as_consumed(candidate)
    folded = {}  # a Relu/Clip folded into the Q after its producer: compare after the activation
    for node in reference.graph.node:
        if node.op_type in ("Relu", "Clip") and node.input[0] not in seen and node.output[0] in seen:
            folded[node.input[0]] = node.output[0]
    tensors = sorted({folded.get(t, t) for out, ins in wanted.values() for t in [out, *ins]} & set(seen))
    report("quantize: per-layer errors", 0, 2)
    ref_values = _run_exposed(reference, tensors, feeds, providers)
    report("quantize: per-layer errors", 1, 2)
    cand_values = _run_exposed(candidate, sorted({seen[t] for t in tensors}), feeds, providers)
    stats = {}
    for t in tensors:
        r, c = ref_values.get(t), cand_values.get(seen[t])
        if r is None or c is None or r.shape != c.shape or r.dtype.kind != "f":
            continue
        stats[t] = (qk.noise_ratio(r, c), cosine(r, c))
    wanted = {k: (folded.get(out, out), [folded.get(i, i) for i in ins]) for k, (out, ins) in wanted.items()}
    out = []
    for unit in units:
        if unit.name not in wanted or wanted[unit.name][0] not in stats:
            continue
        output, inputs = wanted[unit.name]
        noise, cos = stats[output]
        before = max((stats[i][0] for i in inputs if i in stats), default=0.0)
        out.append(LayerError(unit.name, unit.op_type, unit.params, unit.macs, noise, max(noise - before, 0.0), cos))
    out.sort(key=lambda e: (-e.added, -e.noise))
    return out


def _run_exposed(proto: onnx.ModelProto, tensors: list[str], feeds, providers) -> dict[str, np.ndarray]:
    """Runs ``proto`` with ``tensors`` as extra outputs; arrays concatenated over feeds (flattened)."""
    from mcomp.evaluate import run_exposed
    from mcomp.passes.quantize.mapped_source import as_source

    exposed = run_exposed(proto, tensors, feeds, providers, source=as_source)
    return {t: np.concatenate([v.ravel() for v in values]) for t, values in exposed.items()}


def _as_consumed(proto: onnx.ModelProto) -> dict[str, str]:
    """Float tensor name → the candidate's tensor that consumers read: its dequantized copy where
    the quantizer put a Q/DQ pair on it (and may have removed a Relu/Clip folded into the Q), else itself."""
    names = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        names.update(node.output)
    out = {n: n for n in names}
    for name in names:
        if name.endswith(DQ_SUFFIX):
            out[name[: -len(DQ_SUFFIX)]] = name
    return out


DQ_SUFFIX = "_DequantizeLinear_Output"


def _db(ratio: float) -> float | None:
    db = qk.ratio_to_db(ratio)
    return None if db == float("inf") else round(db, 2)


@dataclass
class Group:
    """A compute layer with the element-wise/pass-through nodes that follow it: sent back to float together."""

    name: str
    members: list[str]
    damage: float | None = None  # 1 − fidelity of a model where only this group is quantized


def layer_groups(proto: onnx.ModelProto, units, limit: int = 24) -> list[Group]:
    """Units grouped by the compute layer they follow (graph order); at most ``limit`` groups (adjacent merged)."""
    by_name = {u.name: u for u in units}
    owner: dict[str, int] = {}  # tensor → group index
    groups: list[Group] = []
    for node in proto.graph.node:
        unit = by_name.get(node.name)
        if unit is None:
            continue
        if unit.compute:
            index = len(groups)
            groups.append(Group(node.name, []))
        else:
            index = next((owner[i] for i in node.input if i in owner), None)
            if index is None:
                index = len(groups)
                groups.append(Group(node.name, []))
        groups[index].members.append(node.name)
        for out in node.output:
            owner[out] = index
    return merge(groups, limit)


def merge(groups: list[Group], limit: int) -> list[Group]:
    """At most ``limit`` groups: neighbours (in graph order) merged into equal runs."""
    if len(groups) <= limit:
        return groups
    size = -(-len(groups) // limit)
    merged = []
    for i in range(0, len(groups), size):
        chunk = groups[i:i + size]
        name = chunk[0].name if len(chunk) == 1 else f"{chunk[0].name} … {chunk[-1].name}"
        merged.append(Group(name, [m for g in chunk for m in g.members]))
    return merged


def rank_groups(groups: list[Group], build, evaluator, base: set[str], metric: str = "cosine",
                progress=None) -> list[Group]:
    """Each group's damage when it alone is quantized; the most damaging first. A candidate is built and
    scored per group, minutes on a large model: ``progress(description, done, total)`` hears of each."""
    for k, group in enumerate(groups):
        if progress is not None:
            progress("quantize: per-layer sensitivity", k, len(groups))
        score = evaluator.score(build(base, only=group.members))
        value = score.top1 if metric == "top1" and score.top1 is not None else score.fidelity
        group.damage = 1.0 - (value if value is not None else 1.0)
    return sorted(groups, key=lambda g: -(g.damage or 0.0))
