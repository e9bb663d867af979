"""Weights in the form MatMulNBits takes: it replaces only a MatMul whose B is a 2-D constant.

Exporters write the same product in other forms, and weight-only quantization would leave those
layers float (on GPT-2 every projection: the int4 model was then barely smaller than the input).
On the prepared copy, before its units are listed:

- ``Gemm(A, B, C)`` with ``transA = 0`` (GPT-2's Conv1D layers as torch exports them) becomes
  ``MatMul(A, alpha·op(B)) + beta·C``: the same arithmetic, so a layer that stays float is a
  MatMul + Add where the input had a Gemm.
- ``MatMul(A, Transpose(W))`` with ``W`` a 2-D initializer (a tied LM head reading the embedding
  table) reads ``Wᵀ`` as its own initializer. The table is then stored twice, once per consumer
  (the Gather's block-quantized table and MatMulNBits' weights); both in int4 still take ×0.28 of
  the one float table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from mcomp.external_data import release_tensor

FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass
class Rewritten:
    gemm: int  # Gemms now MatMul (+ Add)
    # MatMul name → (the Transpose node it read, or None where others still read it; its former B input):
    # a MatMul left float reads the table through the Transpose again, so no float table is stored twice
    transposed: dict[str, tuple[onnx.NodeProto | None, str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"gemm": self.gemm, "transposed": len(self.transposed)}


def rewrite(proto: onnx.ModelProto) -> Rewritten:
    """Rewrites ``proto``'s top-level graph in place."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for out in graph.output:
        readers[out.name] = readers.get(out.name, 0) + 1
    return Rewritten(_gemms(graph, inits), _transposed_tables(graph, inits, readers))


def _attr(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _constant_2d(inits, name: str) -> onnx.TensorProto | None:
    t = inits.get(name)
    return t if t is not None and len(t.dims) == 2 and t.data_type in FLOATS else None


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    """``tensor``'s values, inline or in a big model's file (an absolute location, which onnx's reader refuses)."""
    return ir.serde.deserialize_tensor(tensor).numpy()


def _add_init(graph, inits, name: str, array: np.ndarray) -> str:
    while name in inits:
        name += "_"
    tensor = numpy_helper.from_array(array, name)
    graph.initializer.append(tensor)
    inits[name] = tensor
    return name


def _gemms(graph, inits) -> int:
    done = 0
    nodes = list(graph.node)
    rebuilt: list[onnx.NodeProto] = []
    for node in nodes:
        b = _constant_2d(inits, node.input[1]) if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") else None
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (b is None or _attr(node, "transA", 0) or (bias is not None and beta != 1.0 and bias not in inits)
                or not node.name):
            rebuilt.append(node)
            continue
        weight = b.name
        if _attr(node, "transB", 0) or alpha != 1.0:
            array = _array(b)
            array = (array.T if _attr(node, "transB", 0) else array) * np.asarray(alpha, array.dtype)
            weight = _add_init(graph, inits, f"{b.name}_{node.name}_matmul", np.ascontiguousarray(array))
        if bias is not None and beta != 1.0:
            c = _array(inits[bias])
            bias = _add_init(graph, inits, f"{bias}_{node.name}_beta", c * np.asarray(beta, c.dtype))
        product = node.output[0] if bias is None else f"{node.output[0]}_matmul"
        rebuilt.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if bias is not None:
            rebuilt.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(rebuilt)
        _drop_unread(graph, inits)
    return done


def _transposed_tables(graph, inits, readers) -> dict[str, tuple[onnx.NodeProto | None, str]]:
    producers = {o: n for n in graph.node for o in n.output}
    done, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] in inits:
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose":
            continue
        table = _constant_2d(inits, transpose.input[0])
        if table is None or list(_attr(transpose, "perm", [1, 0])) != [1, 0]:
            continue
        flipped = f"{table.name}_T"
        if flipped not in inits:
            source = ir.serde.deserialize_tensor(table)
            _add_init(graph, inits, flipped, np.ascontiguousarray(source.numpy().T))
            release_tensor(source)  # a big table's mapped pages, read once here
        readers[node.input[1]] -= 1
        if readers[node.input[1]] == 0:
            dropped.add(transpose.output[0])
        kept = onnx.NodeProto()  # a copy: a node of ``proto`` would keep its whole arena (every weight) alive
        kept.CopyFrom(transpose)
        done[node.name] = (kept, node.input[1])
        node.input[1] = flipped
    done = {name: (t if t.output[0] in dropped else None, b) for name, (t, b) in done.items()}
    if dropped:
        kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in dropped)]
        del graph.node[:]
        graph.node.extend(kept)
        kept_info = [v for v in graph.value_info if v.name not in dropped]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return done


def _drop_unread(graph, inits) -> None:
    """Initializers no node reads any more (a Gemm's B replaced by its transposed copy)."""
    from mcomp.graph import proto_graphs

    read = {v.name for v in [*graph.output, *graph.input]}
    for g in proto_graphs(graph):
        read |= {name for node in g.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for name in set(inits) - read:
            del inits[name]
