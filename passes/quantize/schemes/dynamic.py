"""``--mode dynamic``: int8 weights, activations quantized at run time (MatMul, attention, LSTM).

No calibration. MatMul + Add stays MatMul (its dynamic kernel takes MatMul), and LSTM is quantized
here (DynamicQuantizeLSTM), unlike in static mode where recurrent ops stay float. A graph whose units
are all MatMuls on 2-D float weights gets its candidates from ``dynamic_compose`` (onnxruntime's graph,
composed per candidate from weights quantized once; a big model's float weights stay in their file);
any other from onnxruntime's ``quantize_dynamic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable

import onnx

from mcomp.passes.quantize import mapped_source
from mcomp.passes.quantize.weights_aside import data_bytes
from mcomp.passes.quantize.schemes.base import register
from mcomp.passes.quantize.schemes.ort import OrtScheme, find_units, tidy


@register("dynamic")
class Dynamic(OrtScheme):
    keep_matmul: ClassVar[bool] = True
    takes_per_channel: ClassVar[bool] = True
    spills: ClassVar[bool] = True
    spills_any: ClassVar[bool] = True  # tables too: the composer maps them, onnxruntime's path reads them back
    op_types: ClassVar[tuple[str, ...]] = ("MatMul", "Attention", "LSTM", "Gather")

    def adjust(self) -> None:
        lstm = {n.name for n in self.prepared.proto.graph.node if n.op_type == "LSTM"}
        self.prepared.float_only = {k: v for k, v in self.prepared.float_only.items() if k not in lstm}
        self._gemms_as_matmul()
        _gathers_first(self.prepared.proto)

    def _gemms_as_matmul(self) -> None:
        """Every Gemm as MatMul (+ Add), by onnxruntime's own rewrite, which its dynamic quantizer applies first.

        Done here, its MatMuls are units like any other: the budget and ``--exclude`` reach them, and so
        does the composer (GPT-2's projections, a ViT head). Left to the quantizer, they were quantized
        unseen in a whole candidate, and never in one that names its nodes. A weight the rewrite transposes
        (``transB``) is read inline first where a big model keeps it in a file: the transposed copy is new.
        """
        proto = self.prepared.proto
        gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
        if not gemms:
            return
        inits = {t.name: t for t in proto.graph.initializer}
        for node in gemms:
            if node.input[1] in inits and any(a.name == "transB" and a.i for a in node.attribute):
                mapped_source.inline(inits[node.input[1]])
        from onnxruntime.quantization.onnx_model import ONNXModel

        ONNXModel(proto).replace_gemm_with_matmul()
        left = sum(n.op_type == "Gemm" for n in proto.graph.node)
        matmuls = {n.name for n in proto.graph.node if n.op_type == "MatMul"}
        self.prepared.aliases.update({f"{g.name}_MatMul": (g.name, "Gemm") for g in gemms
                                      if f"{g.name}_MatMul" in matmuls})
        self.details["gemm_as_matmul"] = len(gemms) - left
        if len(gemms) > left:
            self.notes.append(f"{len(gemms) - left} Gemm rewritten as MatMul + Add, as onnxruntime's dynamic "
                              "quantizer does (its kernel takes MatMul)")

    def setup(self, model, calibration) -> None:
        from mcomp.passes.quantize.dynamic_compose import Composer, unsupported

        super().setup(model, calibration)
        proto = self.prepared.proto
        why = unsupported(proto, [u for u in self.units if u.name not in self.user], self.per_channel)
        if why is None and len(mapped_source.reference_folders(proto)) > 1:
            why = "weights in two folders"  # a candidate is read from one (``mapped_source.as_source``)
        big = bool(mapped_source.reference_folders(proto))  # its weights stay in files: so do the int8 ones
        self.composer = None if why else Composer(proto, self.target.reduce_range,
                                                  self.workdir / "quantized.weights" if big else None)
        self.composes = self.composer is not None
        if why:
            self.fits_one_protobuf(sum(data_bytes(t) for t in proto.graph.initializer))
            mapped_source.inline_rest(proto)  # onnxruntime's quantizer reads a big model's weights inline
        self.details["builder"] = "mcomp: composed MatMul/Gather graph" if why is None else f"onnxruntime's quantize_dynamic ({why})"

    def build(self, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> onnx.ModelProto:
        if self.composer is None:
            return super().build(exclude, only)
        self.builds += 1
        chosen = {u.name for u in self.units} if only is None else set(only)
        return tidy(self.composer.compose(chosen - set(exclude) - set(self.prepared.float_only)))

    def find(self):
        return [u for u in find_units(self.prepared, self.op_types, None) if u.params > 0]

    def describe(self) -> str:
        return (f"dynamic: int8 weights ({'per-channel' if self.per_channel else 'per-tensor'}), "
                "uint8 activations quantized at run time")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(self.source), str(out), op_types_to_quantize=list(self.op_types),
                         per_channel=self.per_channel, reduce_range=self.target.reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude), nodes_to_quantize=only,
                         extra_options={"MatMulConstBOnly": True})


def _gathers_first(proto: onnx.ModelProto) -> None:
    """Moves a node that reads an embedding table before its Gather does (onnxruntime's optimizer puts a tied
    head's ``Transpose(table)`` first) to just after the Gather, where its outputs' readers all come later.

    Both quantizers (onnxruntime's and the composer) give a reader placed after the Gather the uint8 table
    dequantized, and one placed before it the float table, stored beside the uint8 one: on a 0.75 GiB
    LLM-shaped model the dynamic int8 model was 470 MB where it is 201 MB with the Transpose after."""
    nodes = list(proto.graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return  # a subgraph may read an outer value where the top-level order does not show it
    tables = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    moved = False
    for gather in [n for n in nodes if n.op_type == "Gather" and n.input[0] in tables]:
        at = nodes.index(gather)
        for reader in [n for n in nodes[:at] if gather.input[0] in n.input]:
            outputs = set(reader.output)
            if any(outputs & set(n.input) for n in nodes[:at + 1] if n is not reader):
                continue  # read before the Gather: it stays
            nodes.remove(reader)
            at = nodes.index(gather)
            nodes.insert(at + 1, reader)
            moved = True
    if moved:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
