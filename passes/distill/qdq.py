"""A QDQ student stays quantized: its integer weights are trained as float shadows.

onnxruntime's static quantizer (and mcomp quantize) stores each weight as an integer
initializer feeding a ``DequantizeLinear``; integer tensors cannot be trained. ``expose``
puts a float copy of each such weight in front of a new ``QuantizeLinear`` with the same
scale and zero point, so the torch copy trains it through fake quantization (rounding with
a straight-through estimator). ``restore`` rounds the trained floats back into the original
integer tensors and removes what ``expose`` added: node count, names and scales are as
before, and the ONNX model computes exactly what the trained module computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

_INT_RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255), ir.DataType.INT16: (-32768, 32767),
               ir.DataType.UINT16: (0, 65535), ir.DataType.INT32: (-(2**31), 2**31 - 1)}


@dataclass
class Shadow:
    quantized: ir.Value  # the integer initializer
    shadow: ir.Value  # its float copy (a new initializer)
    quantize: ir.Node  # the QuantizeLinear that expose added
    consumers: list[tuple[ir.Node, int]]  # (DequantizeLinear, input 0) rewired to the new Q
    scale: ir.Value
    zero_point: ir.Value | None
    added_zero_point: bool
    axis: int
    block: int


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _broadcast(p: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    if p.size == 1:
        return p.reshape(())
    a = axis % len(shape)
    if block and p.ndim == len(shape):
        return np.repeat(p, block, axis=a).take(np.arange(shape[a]), axis=a)
    view = [1] * len(shape)
    view[a] = -1
    return p.reshape(view)


def expose(model: ir.Model) -> list[Shadow]:
    """Float shadows for the integer weights of the main graph's DequantizeLinear nodes."""
    graph = model.graph
    found: dict[int, Shadow] = {}
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        q = node.inputs[0]
        if q is None or q.name not in graph.initializers or q.const_value is None:
            continue
        if q.const_value.dtype not in _INT_RANGES or _const(node.inputs[1]) is None:
            continue
        if id(q) in found:
            found[id(q)].consumers.append((node, 0))
            node.replace_input_with(0, found[id(q)].quantize.outputs[0])
            continue
        found[id(q)] = _shadow(graph, node, q)
    return list(found.values())


def _shadow(graph: ir.Graph, dq: ir.Node, q: ir.Value) -> Shadow:
    axis = dq.attributes.get_int("axis", 1)
    block = dq.attributes.get_int("block_size", 0)
    scale_v = dq.inputs[1]
    zp_v = dq.inputs[2] if len(dq.inputs) > 2 else None
    ints = _const(q)
    scale = _const(scale_v)
    zp = _const(zp_v)
    added = zp is None
    if added:  # QuantizeLinear without a zero point would produce uint8
        zp_v = ir.Value(name=_fresh(graph, f"{q.name}.zero_point"),
                        const_value=ir.Tensor(np.zeros(scale.shape, ints.dtype)))
        graph.register_initializer(zp_v)
        zp = np.zeros(scale.shape, ints.dtype)
    floats = ((ints.astype(np.float64) - _broadcast(zp, ints.shape, axis, block))
              * _broadcast(scale, ints.shape, axis, block)).astype(scale.dtype)
    shadow = ir.Value(name=_fresh(graph, f"{q.name}.float"), const_value=ir.Tensor(floats))
    graph.register_initializer(shadow)
    attributes = {"axis": axis}
    if block:
        attributes["block_size"] = block
    node = ir.node("QuantizeLinear", [shadow, scale_v, zp_v], attributes=attributes,
                   name=_fresh_node(graph, f"{q.name}.requantize"), num_outputs=1)
    node.outputs[0].name = _fresh(graph, f"{q.name}.requantized")
    node.outputs[0].dtype = q.const_value.dtype
    graph.insert_before(dq, node)
    dq.replace_input_with(0, node.outputs[0])
    return Shadow(q, shadow, node, [(dq, 0)], scale_v, zp_v, added, axis, block)


def for_shapes(model: ir.Model) -> ir.Model:
    """A copy of ``model`` that onnxruntime loads, for learning its output shapes only: each QuantizeLinear that
    writes a type the op cannot write at the model's opset (``expose`` trains a bias stored as int32 through one:
    mcomp's torch copy runs it, onnxruntime refuses it) becomes a Cast to that type, of the same shape. A time-
    major recognizer's QDQ student (ddddocr) is run by onnxruntime to find its outputs' example axes."""
    from mcomp.graph import copy

    opset = model.opset_imports.get("", 0)
    refused = {ir.DataType.INT32} | ({ir.DataType.INT16, ir.DataType.UINT16} if opset < 21 else set())
    probe = copy(model)
    for node in list(probe.graph):
        out = node.outputs[0] if node.outputs else None
        if node.op_type != "QuantizeLinear" or out is None or out.dtype not in refused:
            continue
        cast = ir.node("Cast", [node.inputs[0]], attributes={"to": out.dtype}, name=node.name, num_outputs=1)
        probe.graph.insert_before(node, cast)
        out.replace_all_uses_with(cast.outputs[0])
        cast.outputs[0].name, cast.outputs[0].dtype = out.name, out.dtype
        probe.graph.remove(node, safe=True)
    return probe


def restore(model: ir.Model, shadows: list[Shadow]) -> int:
    """Rounds each trained shadow into its integer tensor and removes the shadows; returns how
    many integer tensors changed."""
    graph = model.graph
    changed = 0
    for s in shadows:
        old = s.quantized.const_value
        lo, hi = _INT_RANGES[old.dtype]
        floats = _const(s.shadow)  # rounded as the fake quantization did: in the scale's dtype
        scale = _broadcast(_const(s.scale).astype(floats.dtype), floats.shape, s.axis, s.block)
        zp = _broadcast(_const(s.zero_point).astype(np.float64), floats.shape, s.axis, s.block)
        ints = np.clip(np.round(floats / scale).astype(np.float64) + zp, lo, hi).astype(old.numpy().dtype)
        if not np.array_equal(ints, old.numpy()):
            changed += 1
        s.quantized.const_value = ir.Tensor(ints, dtype=old.dtype, name=old.name)
        for node, index in s.consumers:
            node.replace_input_with(index, s.quantized)
        graph.remove(s.quantize, safe=True)
        graph.initializers.pop(s.shadow.name)
        if s.added_zero_point:
            graph.initializers.pop(s.zero_point.name)
    return changed


def _fresh(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}.{k}", k + 1
    return name


def _fresh_node(graph: ir.Graph, base: str) -> str:
    taken = {n.name for n in graph}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}.{k}", k + 1
    return name


def count_qdq(model: ir.Model) -> dict[str, int]:
    ops = [n.op_type for n in model.graph]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}
