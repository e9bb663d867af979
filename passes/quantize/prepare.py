"""Gets a real-world graph ready for onnxruntime's quantizer, and says what it changed.

- Already-quantized models are detected (and refused unless forced).
- Weights kept as ``Constant`` nodes (paddle2onnx, spox) become initializers: onnxruntime's
  quantizer only quantizes initializers, and a float bias left as a node blocks the fusion.
- onnxruntime's offline optimizer at level basic (portable ONNX) folds BatchNorm into Conv and
  constants away, so that Q/DQ do not land between ops that would have been fused.
- The opset is upgraded to 13 where per-channel QDQ needs it (an ``axis`` on Q/DQ).
- Shape inference falls back: symbolic (with dynamic dims merged) → onnx → none.
- Nodes the scheme must leave in float (subgraph holders, recurrent ops) are listed with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from mcomp.model import onnx_opset, to_proto
from mcomp.passes.quantize.target import FLOAT_ONLY

QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulNBits", "MatMulIntegerToFloat", "QGemm", "QLinearAdd",
    "QLinearMul", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "GatherBlockQuantized",
})


@dataclass
class Prepared:
    proto: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    shape_inference: str = "none"
    opset_before: int | None = None
    opset: int | None = None
    float_only: dict[str, str] = field(default_factory=dict)  # node name → reason it stays float


def quantized_ops(model: ir.Model) -> dict[str, int]:
    """Ops that show the model is already quantized (Q/DQ, integer kernels), with their counts."""
    found: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in QUANTIZED_OPS:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    return found


def lift_constants(model: ir.Model) -> None:
    """Every tensor ``Constant`` node becomes an initializer (weights, biases, shapes alike)."""
    ir.passes.PassManager([ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)])(model)


def prepare(model: ir.Model, *, opset: int | None = None, optimize: bool = True) -> Prepared:
    """A prepared copy (``model`` is not changed): constants lifted, optimized, opset ≥ ``opset``, shapes inferred."""
    from mcomp.model import copy

    work = copy(model)
    notes: list[str] = []
    lift_constants(work)
    if optimize:
        try:
            work = _ort_basic(work)
        except Exception as exc:  # an odd graph the offline optimizer rejects: quantize it as it is
            notes.append(f"onnxruntime's basic graph optimization failed before quantization ({_short(exc)}); "
                         "quantized the graph as given")
    proto = to_proto(work)
    before = onnx_opset(proto)
    if opset is not None and before is not None and before < opset:
        proto = upgrade_opset(proto, opset)
        notes.append(f"opset upgraded {before} → {opset} (per-channel Q/DQ needs an axis attribute)")
    proto, how = infer_shapes(proto)
    if how != "symbolic":
        notes.append("symbolic shape inference failed; used onnx shape inference" if how == "onnx"
                     else "shape inference failed (symbolic and onnx); quantized without inferred shapes")
    prepared = Prepared(proto, notes, how, before, onnx_opset(proto))
    prepared.float_only = float_only_nodes(proto)
    return prepared


def upgrade_opset(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """onnx's version converter; raises ValueError with the reason when it cannot convert."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ValueError(f"cannot upgrade opset to {target}: {_short(exc)}") from None
    return converted


def infer_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Shapes by symbolic inference (dynamic dims merged), else onnx's, else none; and which one worked."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        with _quiet():
            inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
        if inferred is not None:
            return inferred, "symbolic"
    except Exception:
        pass
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False), "onnx"
    except Exception:
        return proto, "none"


def float_only_nodes(proto: onnx.ModelProto) -> dict[str, str]:
    """Top-level nodes that stay float, with the reason: subgraph holders and recurrent ops."""
    out = {}
    for node in proto.graph.node:
        subgraphs = [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        if subgraphs:
            inner = sum(_count_nodes(a.g) if a.type == onnx.AttributeProto.GRAPH else sum(_count_nodes(g) for g in a.graphs)
                        for a in subgraphs)
            out[node.name] = (f"{node.op_type} with subgraphs ({inner} nodes inside): control flow is "
                              "left in float (onnxruntime's quantizer does not calibrate across branches)")
        elif node.op_type in FLOAT_ONLY:
            out[node.name] = FLOAT_ONLY[node.op_type]
    return out


def name_nodes(proto: onnx.ModelProto) -> None:
    """Gives every unnamed top-level node a unique name, so that nodes can be excluded by name."""
    seen = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _count_nodes(graph: onnx.GraphProto) -> int:
    total = len(graph.node)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                total += _count_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                total += sum(_count_nodes(g) for g in a.graphs)
    return total


def _ort_basic(model: ir.Model) -> ir.Model:
    """onnxruntime's offline optimizer at level basic: standard ONNX ops only, any provider."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    from mcomp.model import to_bytes

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="mcomp-quant-") as tmp:
        out = Path(tmp) / "basic.onnx"
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(to_bytes(model), options, providers=["CPUExecutionProvider"])
        return ir.serde.deserialize_model(onnx.load(str(out)))


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantization tools log warnings per node; a pass never prints (design §3)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # sessions made inside the quantizer log per initializer
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        root.setLevel(level)


quiet = _quiet


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
