"""Ops that would force one 8-bit scale onto values whose ranges differ by orders of magnitude stay float.

A static QDQ model gives each activation tensor one scale. Where a tensor joins values of very
different ranges, the small ones round away: a YOLOv8 head ``Concat``s box coordinates (0–320 px)
and sigmoid class probabilities (0–1) into one output; onnxruntime's quantizer gives that Concat
a uint8 scale of 1.26, and every class score becomes 0 while the whole-output cosine stays 0.9995.

Two checks, both on the calibration feeds run through the float model:

- a ``Concat`` whose inputs' ranges differ by more than ``ratio`` stays float: each input keeps the
  scale of its own producer and is dequantized before the float Concat (requantized per input);
- a graph output whose slices along a channel-like axis (``kernels.fidelity.channel_axes``) differ
  in range by more than ``ratio`` is not quantized: its producer stays float, and so do the
  pass-through ops (Transpose, Reshape …) that lead to it, since they would share its scale.

onnxruntime's quantizer has no such check (its ``TensorQuantOverrides`` would take hand-set scales
per tensor), which is why this module exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mcomp.errors import BadInput
from mcomp.kernels.fidelity import channel_axes
from mcomp.passes.quantize.target import PASS_THROUGH_OPS

RANGE_RATIO = 16.0  # above this, the narrowest range keeps fewer than 256/16 = 16 of the 8-bit levels
CHECK_FEEDS = 8  # calibration feeds run through the float model for the ranges


@dataclass(frozen=True)
class WideRange:
    """One node kept float, with the ranges that forced it."""

    node: str
    op_type: str
    tensor: str  # the graph output or the Concat output
    compared: str  # "inputs" (of a Concat) or "slices" (of a graph output)
    ranges: list[float]  # the widths (max − min, zero included) of the inputs or slices compared
    ratio: float
    kept_float: tuple[str, ...]  # the node itself and the pass-through ops before a graph output

    def reason(self) -> str:
        return (f"shared 8-bit scale over {self.compared} whose ranges differ ×{self.ratio:.0f} "
                f"({min(self.ranges):.3g} to {max(self.ranges):.3g}): the small ones would round to zero")

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "tensor": self.tensor, "compared": self.compared, "ratio": round(self.ratio, 1),
                "narrowest": float(f"{min(self.ranges):.4g}"), "widest": float(f"{max(self.ranges):.4g}"),
                "kept_float": list(self.kept_float)}


def find(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], providers: list[str],
         ratio: float = RANGE_RATIO) -> list[WideRange]:
    """The Concats and graph outputs of ``proto`` (top-level graph) that one scale would break."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    concats = [n for n in proto.graph.node if n.op_type == "Concat" and n.domain in ("", "ai.onnx")]
    constants = {t.name for t in proto.graph.initializer}
    tensors = sorted({i for n in concats for i in n.input if i and i not in constants})
    outputs = [o.name for o in proto.graph.output]
    values = _run(proto, tensors, outputs, feeds[:CHECK_FEEDS], providers)
    found: dict[str, WideRange] = {}
    for node in concats:
        widths = [_width(values[i]) for i in node.input if i in values]
        spread = _spread(widths)
        if spread > ratio:
            found[node.name] = WideRange(node.name, node.op_type, node.output[0], "inputs", widths, spread,
                                         (node.name,))
    for name in outputs:
        value = values.get(name)
        if value is None or name not in producer:
            continue
        for axis in channel_axes(value):
            moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
            widths = [_width(row) for row in moved]
            spread = _spread(widths)
            if spread > ratio:
                chain = _chain_to(producer[name], producer)
                head = chain[-1]
                if head.name not in found:
                    found[head.name] = WideRange(head.name, head.op_type, name, "slices", widths, spread,
                                                 tuple(n.name for n in chain))
                break
    return list(found.values())


def _chain_to(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``node`` and, while it only moves values, its producers: the ops that would share the output's scale."""
    chain = [node]
    while chain[-1].op_type in PASS_THROUGH_OPS and chain[-1].input and chain[-1].input[0] in producer:
        chain.append(producer[chain[-1].input[0]])
    return chain


def _width(value: np.ndarray) -> float:
    """The range an asymmetric 8-bit grid must span: max − min, with zero included."""
    if value.size == 0:
        return 0.0
    finite = value[np.isfinite(value)]
    if finite.size == 0:
        return 0.0
    return float(max(finite.max(), 0.0) - min(finite.min(), 0.0))


def _spread(widths: list[float]) -> float:
    """Widest over narrowest non-zero range (an all-zero input costs nothing to share a scale with)."""
    nonzero = [w for w in widths if w > 0]
    if len(nonzero) < 2:
        return 1.0
    return max(nonzero) / min(nonzero)


def _run(proto: onnx.ModelProto, tensors: list[str], outputs: list[str], feeds, providers) -> dict[str, np.ndarray]:
    """The float model's values of ``tensors`` (flattened) and ``outputs`` (joined on the batch axis)."""
    from mcomp.evaluate import run_exposed

    out = {}
    try:
        exposed = run_exposed(proto, sorted(set(tensors) | set(outputs)), feeds, providers, which="input")
    except BadInput as exc:
        raise BadInput(f"quantize: {exc}") from None
    for name, arrays in exposed.items():
        if arrays[0].dtype.kind != "f":
            continue
        if name in outputs and all(a.ndim and a.shape[1:] == arrays[0].shape[1:] for a in arrays):
            out[name] = np.concatenate(arrays, axis=0)
        else:
            out[name] = np.concatenate([a.ravel() for a in arrays])
    return out
