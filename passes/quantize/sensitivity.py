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


def layer_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, units, feeds, providers) -> list[LayerError]:
    """Errors of ``units`` (nodes of ``reference``), ranked by the noise each adds (largest first)."""
    nodes = {n.name: n for n in reference.graph.node}
    skip = {t.name for t in reference.graph.initializer} | {i.name for i in reference.graph.input}
    wanted = {}
    for unit in units:
        node = nodes.get(unit.name)
        if node is None or not node.output:
            continue
        wanted[unit.name] = (node.output[0], [i for i in node.input if i and i not in skip])
    tensors = sorted({t for out, ins in wanted.values() for t in [out, *ins]})
    cand_names = _all_tensor_names(candidate)
    tensors = [t for t in tensors if t in cand_names]
    ref_values = _run_exposed(reference, tensors, feeds, providers)
    cand_values = _run_exposed(candidate, tensors, feeds, providers)
    stats = {}
    for t in tensors:
        r, c = ref_values.get(t), cand_values.get(t)
        if r is None or c is None or r.shape != c.shape or r.dtype.kind != "f":
            continue
        stats[t] = (qk.noise_ratio(r, c), cosine(r, c))
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
    from mcomp.session import make_session

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    session = make_session(model.SerializeToString(), providers, optimization="basic")
    names = [o.name for o in session.get_outputs()]
    index = {n: i for i, n in enumerate(names)}
    collected: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds:
        values = session.run(None, feed)
        for t in tensors:
            if t in index:
                collected[t].append(np.asarray(values[index[t]]).ravel())
    return {t: np.concatenate(v) for t, v in collected.items() if v}


def _all_tensor_names(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        names.update(node.output)
    return names


def _db(ratio: float) -> float | None:
    db = qk.ratio_to_db(ratio)
    return None if db == float("inf") else round(db, 2)
