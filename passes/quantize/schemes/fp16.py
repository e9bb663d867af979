"""``--mode fp16``: float16 weights and compute, float32 model inputs and outputs by default.

Every node is a unit, but the latency guard only tries the whole candidate: float16 pays as a
whole or not at all (a Cast pair at every boundary between float16 and float32 nodes).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from mcomp.passes.quantize.schemes.base import Unit, register
from mcomp.passes.quantize.schemes.ort import OrtScheme, params


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
        model = convert_float_to_float16(onnx.load(str(self.source)), keep_io_types=self.cfg.keep_io_types,
                                         node_block_list=sorted(exclude), disable_shape_infer=False)
        onnx.save_model(model, str(out))
