"""``--mode weight-only``: int4/int8 block-wise weights (MatMulNBits; GatherBlockQuantized for tables).

Activations stay float, so nothing is calibrated. MatMul + Add stays MatMul (MatMulNBits replaces
a MatMul with a 2-D constant B). Block-quantized Gather needs opset 21; onnxruntime's quantizer
only relabels the opset (leaving ops whose signature changed since, such as ReduceMean's axes,
invalid), so the graph is converted here — or Gather is left in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from mcomp.opset import upgrade_opset
from mcomp.passes.quantize.schemes.base import register
from mcomp.passes.quantize.schemes.ort import OrtScheme, find_units

GATHER_OPSET = 21
SYMMETRIC = True
ACCURACY_LEVEL = 4  # int8 activations in the kernel: the fast path on x86 and ARM


@register("weight-only")
class WeightOnly(OrtScheme):
    bits: ClassVar[tuple[int, ...]] = (4, 8)
    default_bits: ClassVar[int | None] = 4
    keep_matmul: ClassVar[bool] = True

    def adjust(self) -> None:
        prepared = self.prepared
        if not gather_tables(prepared.proto) or (prepared.opset or 0) >= GATHER_OPSET:
            return
        try:
            prepared.proto = upgrade_opset(prepared.proto, GATHER_OPSET)
            self.notes.append(f"opset upgraded {prepared.opset} → {GATHER_OPSET} (block-quantized Gather needs "
                              "int4 tensors)")
            prepared.opset = GATHER_OPSET
        except ValueError as exc:
            for name in gather_tables(prepared.proto):
                prepared.float_only[name] = f"Gather: block quantization needs opset {GATHER_OPSET} and {exc}"

    def find(self):
        proto = self.prepared.proto
        inits = {t.name: t for t in proto.graph.initializer}
        gathers = [g for g in gather_tables(proto) if g not in self.prepared.float_only]
        self.op_types = ("MatMul", "Gather")
        if not gathers or (self.prepared.opset or 0) < GATHER_OPSET:  # with Gather listed, the quantizer relabels the opset
            self.op_types = ("MatMul",)
        return [u for u in find_units(self.prepared, self.op_types, None)
                if u.params > 0 and _fits(proto, u.name, inits)]

    def describe(self) -> str:
        return (f"weight-only int{self.cfg.bits or self.default_bits}, blocks of {self.cfg.block_size} "
                f"({'symmetric' if SYMMETRIC else 'asymmetric'}), MatMulNBits")

    def _build(self, exclude: set[str], out: Path, only: list[str] | None) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        bits, block = self.cfg.bits or self.default_bits, self.cfg.block_size
        include = [u.name for u in self.units if u.name not in exclude and (only is None or u.name in only)]
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=SYMMETRIC, accuracy_level=ACCURACY_LEVEL,
                                              bits=bits, op_types_to_quantize=self.op_types)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(self.source)), bits=bits, block_size=block,
                                         is_symmetric=SYMMETRIC, accuracy_level=ACCURACY_LEVEL,
                                         nodes_to_exclude=sorted(exclude), nodes_to_include=include or ["-"],
                                         op_types_to_quantize=self.op_types, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), False)


def gather_tables(proto: onnx.ModelProto) -> list[str]:
    """Gather nodes reading a 2-D float initializer (embedding tables)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT]


def _fits(proto: onnx.ModelProto, name: str, inits) -> bool:
    """MatMulNBits takes a 2-D constant B; Gather a 2-D constant table."""
    node = next(n for n in proto.graph.node if n.name == name)
    weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
    return weight in inits and len(inits[weight].dims) == 2
