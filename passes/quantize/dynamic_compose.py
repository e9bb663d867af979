"""Dynamic int8 candidates of MatMul and Gather graphs, composed here rather than by onnxruntime's ``quantize_dynamic``.

Why: ``quantize_dynamic`` loads the whole model, deep-copies it and loads it again for shape inference,
then quantizes each weight column by column in Python. On three 8192×8192 float layers (0.75 GiB) one
candidate took 15 s and the pass peaked at 4.5× the model, and the budget and the guard build several.
Each MatMul is quantized on its own, so a candidate is the float graph with some MatMuls replaced; the
replacement weights are computed once per weight (``kernels.column_int8``, one mapped column slice at a
time for a big model whose weights stay in their file) and kept for every later candidate.

The graph is onnxruntime's, node for node and name for name (``tests/test_quantize_dynamic_compose.py``
checks candidates against its quantizer): per MatMul ``X`` reading ``A`` and weight ``W``, writing ``Y``,
``DynamicQuantizeLinear`` ``A_QuantizeLinear`` (once per ``A``) → ``MatMulInteger`` ``X_quant`` on
``W_quantized``, ``W_zero_point`` → ``Cast`` → ``Mul`` by ``X_quant_scales_mul`` (A's scale × W's).
A Gather ``G`` on a float table ``T`` (an embedding) reads ``T_quantized``, the table in uint8 with one
scale (``kernels.table_uint8``), and writes ``E_quantized``: a quantized MatMul reading ``E`` takes it
as its quantized ``A`` with ``T``'s scale, and ``DequantizeLinear`` ``E_DequantizeLinear`` gives ``E``
back in float, placed before its first float reader (or last, for a graph output), as onnxruntime does.
A table or weight that a quantized node replaced is dequantized the same way for a later float reader (a
tied LM head reading the embedding table). Anything else (Attention, LSTM, a Gemm the scheme did not
rewrite, subgraphs, per-tensor weights, a table two Gathers read) is left to onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from mcomp.external_data import copy_fields, release_tensor
from mcomp.kernels import column_int8, table_uint8
from mcomp.passes.quantize import mapped_source

MIN_OPSET = 11  # DynamicQuantizeLinear


def unsupported(proto: onnx.ModelProto, units, per_channel: bool) -> str | None:
    """Why candidates of ``proto`` go to onnxruntime's quantizer; None when every one can be composed here."""
    if not per_channel:
        return "per-tensor weights"
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        return f"opset {opset}"
    inits = {t.name: t for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        if node.op_type == "Gemm":  # onnxruntime's dynamic quantizer rewrites every Gemm as MatMul + Add
            return "a Gemm"
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return "subgraphs"
    outputs = {o.name for o in proto.graph.output}
    for unit in units:
        node = nodes.get(unit.name)
        if node is not None and unit.op_type == "Gather":
            table = inits.get(node.input[0])
            if table is not None and table.data_type == TensorProto.FLOAT16:
                return f"Gather {node.name!r} reads a float16 table"
            if table is not None and table.data_type == TensorProto.FLOAT:
                others = readers[table.name]
                at = others.index(node)
                if (table.name in outputs or any(r.op_type == "Gather" for r in others if r is not node)
                        or 0 < at < len(others) - 1):
                    # onnxruntime dequantizes the table for readers after the Gather (a tied LM head) and keeps
                    # it float for readers before it; with both, the two would take the same name
                    return (f"Gather {node.name!r} reads a table that is read both before and after it, "
                            "or by another Gather")
            continue  # a table that is not float stays as it is, as onnxruntime leaves it
        if unit.op_type != "MatMul" or node is None:
            return f"a {unit.op_type}"
        weight = inits.get(node.input[1])
        if node.input[0] in inits or weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            return f"MatMul {node.name!r} does not read a float activation times a 2-D float weight"
    return None


@dataclass
class Replacement:
    """What replaces one weight ``W``: ``W_quantized`` (int8), ``W_scale`` (float32 per column), ``W_zero_point``;
    or one table: uint8, one scale and zero point."""

    quantized: TensorProto
    scale: TensorProto
    zero_point: TensorProto


class Composer:
    """Candidates of one prepared graph; each weight is quantized the first time a candidate needs it.

    ``spill``: a file (in the pass's folder) the quantized weights and tables are written to, for a big
    model. A candidate then refers to them there rather than holding them: on a 0.75 GiB LLM-shaped model
    the all-int8 candidate (192 MiB) was held as the replacements, the candidate's copy of them and its
    bytes while onnxruntime made its session, 2.3× the model at peak. A candidate that also reads float
    layers from the input's folder gets its replacements inline (onnxruntime reads one folder)."""

    def __init__(self, prepared: onnx.ModelProto, reduce_range: bool, spill: Path | None = None):
        self.prepared, self.reduce_range, self.spill = prepared, reduce_range, spill
        self.inits = {t.name: t for t in prepared.graph.initializer}
        self.replacements: dict[str, Replacement] = {}
        self._stored = mapped_source.Store(spill)

    def compose(self, quantized: set[str]) -> onnx.ModelProto:
        """The prepared graph with the MatMuls and Gathers named in ``quantized`` replaced by onnxruntime's
        dynamic form."""
        graph = self.prepared.graph
        nodes: list[onnx.NodeProto] = []
        activations: set[str] = set()
        gathered: dict[str, str] = {}  # a quantized Gather's output → its table
        # what a later float reader gets dequantized, as onnxruntime does: a Gather's output, and a weight
        # that a quantized MatMul has replaced (per column: axis -1)
        replaced: dict[str, tuple[list[str], int | None]] = {}
        dequantized: set[str] = set()

        def dequantize(names) -> None:
            for name in names:
                if name in replaced and name not in dequantized:
                    dequantized.add(name)
                    inputs, axis = replaced[name]
                    nodes.append(helper.make_node("DequantizeLinear", inputs, [name], f"{name}_DequantizeLinear",
                                                  axis=axis))

        for node in graph.node:
            if node.name in quantized and node.op_type == "Gather" and self._is_table(node.input[0]):
                table, e = node.input[0], node.output[0]
                self._table(table)
                gathered[e] = table
                replaced[e] = [f"{e}_quantized", f"{table}_scale", f"{table}_zero_point"], None
                replaced[table] = [f"{table}_quantized", f"{table}_scale", f"{table}_zero_point"], None
                quantized_node = onnx.NodeProto()
                quantized_node.CopyFrom(node)
                quantized_node.input[0], quantized_node.output[0] = f"{table}_quantized", f"{e}_quantized"
                nodes.append(quantized_node)
                continue
            if node.name not in quantized or node.op_type != "MatMul":
                dequantize(node.input)
                nodes.append(node)
                continue
            a, w = node.input[0], node.input[1]
            if a in gathered:  # the Gather's uint8 output with its table's scale, as onnxruntime reuses it
                table = gathered[a]
                a_quantized, a_scale, a_zero_point = f"{a}_quantized", f"{table}_scale", f"{table}_zero_point"
            else:
                a_quantized, a_scale, a_zero_point = f"{a}_quantized", f"{a}_scale", f"{a}_zero_point"
                if a not in activations:
                    activations.add(a)
                    nodes.append(helper.make_node("DynamicQuantizeLinear", [a], [a_quantized, a_scale, a_zero_point],
                                                  f"{a}_QuantizeLinear"))
            self._replacement(w)
            replaced[w] = [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"], -1
            name, y = node.name + "_quant", node.output[0]
            nodes += [
                helper.make_node("Mul", [a_scale, f"{w}_scale"], [f"{name}_scales_mul:0"], f"{name}_scales_mul"),
                helper.make_node("MatMulInteger", [a_quantized, f"{w}_quantized", a_zero_point,
                                                   f"{w}_zero_point"], [f"{y}_output_quantized"], name),
                helper.make_node("Cast", [f"{y}_output_quantized"], [f"{y}_output_quantized_cast_output"],
                                 f"{y}_output_quantized_cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{y}_output_quantized_cast_output", f"{name}_scales_mul:0"], [y],
                                 f"{name}_output_scale_mul")]
        dequantize(o.name for o in graph.output)
        out = onnx.ModelProto()
        copy_fields(self.prepared, out, skip={"graph"})
        copy_fields(graph, out.graph, skip={"node", "initializer"})
        out.graph.node.extend(nodes)
        read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
        read -= {name for n in nodes for name in n.output}  # a weight dequantized for its float readers
        for tensor in graph.initializer:
            if tensor.name in read:
                out.graph.initializer.append(tensor)
        for weight in sorted({n.input[1] for n in graph.node if n.name in quantized and n.op_type == "MatMul"}):
            r = self.replacements[weight]
            out.graph.initializer.extend([r.quantized, r.scale, r.zero_point])
        for table in sorted(set(gathered.values())):
            r = self.replacements[table]
            out.graph.initializer.extend([r.scale, r.zero_point, r.quantized])
        if self.spill is not None:
            mapped_source.inline_from(out, self.spill.parent)
        return out

    def _is_table(self, name: str) -> bool:
        """A float initializer: what onnxruntime quantizes under a Gather (``is_valid_quantize_weight``)."""
        return name in self.inits and self.inits[name].data_type == TensorProto.FLOAT

    def _table(self, table: str) -> Replacement:
        if table not in self.replacements:
            tensor = ir.serde.deserialize_tensor(self.inits[table])
            q, scale, zero_point = table_uint8.quantize(tensor.numpy())
            release_tensor(tensor)
            scale_tensor = helper.make_tensor(f"{table}_scale", TensorProto.FLOAT, [], [float(scale)])
            zero_tensor = helper.make_tensor(f"{table}_zero_point", TensorProto.UINT8, [], [int(zero_point)])
            self.replacements[table] = Replacement(self._stored(q, f"{table}_quantized"), scale_tensor, zero_tensor)
        return self.replacements[table]

    def _replacement(self, weight: str) -> Replacement:
        if weight not in self.replacements:
            # onnx_ir views inline bytes and maps a big model's weight from its file (an absolute location)
            tensor = ir.serde.deserialize_tensor(self.inits[weight])
            q, scale = column_int8.quantize(tensor.numpy(), self.reduce_range)
            release_tensor(tensor)
            zeros = np.zeros(scale.shape, np.int8)
            self.replacements[weight] = Replacement(self._stored(q, f"{weight}_quantized"),
                                                    numpy_helper.from_array(scale, f"{weight}_scale"),
                                                    numpy_helper.from_array(zeros, f"{weight}_zero_point"))
        return self.replacements[weight]
