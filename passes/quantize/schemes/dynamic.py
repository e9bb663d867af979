"""``--mode dynamic``: int8 weights, activations quantized at run time (MatMul, attention, LSTM).

No calibration: onnxruntime's ``quantize_dynamic`` builds the candidates. MatMul + Add stays
MatMul (its dynamic kernel takes MatMul), and LSTM is quantized here (DynamicQuantizeLSTM),
unlike in static mode where recurrent ops stay float.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from mcomp.passes.quantize.schemes.base import register
from mcomp.passes.quantize.schemes.ort import OrtScheme, find_units


@register("dynamic")
class Dynamic(OrtScheme):
    keep_matmul: ClassVar[bool] = True
    takes_per_channel: ClassVar[bool] = True
    op_types: ClassVar[tuple[str, ...]] = ("MatMul", "Attention", "LSTM", "Gather")

    def adjust(self) -> None:
        lstm = {n.name for n in self.prepared.proto.graph.node if n.op_type == "LSTM"}
        self.prepared.float_only = {k: v for k, v in self.prepared.float_only.items() if k not in lstm}

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
