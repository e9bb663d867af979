"""onnxruntime's offline graph optimizer: the session writes the graph it would run.

``basic`` keeps to standard ONNX ops and runs anywhere; ``extended`` and ``all`` add
onnxruntime-specific fused ops (and, for ``all`` on CPU, a hardware-specific NCHWc layout),
so their output is tied to onnxruntime and to the provider it was made for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from mcomp.model import to_bytes

PORTABLE_LEVELS = ("basic",)


def optimize_offline(model: ir.Model, level: str, providers: list[str]) -> ir.Model:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    with tempfile.TemporaryDirectory(prefix="mcomp-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(to_bytes(model), options, providers=providers)
        proto = onnx.load(str(out))
    return ir.serde.deserialize_model(proto)
