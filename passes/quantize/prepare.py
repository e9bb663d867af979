"""Gets a real-world graph ready for onnxruntime's quantizer, and says what it changed.

- Already-quantized models are detected (and refused unless forced).
- Weights kept as ``Constant`` nodes (paddle2onnx, spox) become initializers: onnxruntime's
  quantizer only quantizes initializers, and a float bias left as a node blocks the fusion.
- Hard-swish written as Add/Clip/Div/Mul becomes HardSwish (onnxscript's rules; opset 14), and
  onnxruntime's offline optimizer at level basic (portable ONNX) folds BatchNorm into Conv and
  constants away, so that Q/DQ do not land between ops that would have been fused.
- The opset is upgraded to 13 where per-channel QDQ needs it (an ``axis`` on Q/DQ).
- A Gemm bias of shape [1, N] (MatMul + a row-vector Add, as tf2onnx writes it, fused by the
  optimizer) becomes [N]: the same broadcast, and onnxruntime's int32-bias check (1.32) indexes
  a per-channel bias by output channel and fails on a 2-D one.
- Shape inference falls back: onnx's where it types every tensor, else symbolic (dynamic dims
  merged), else whatever onnx's found, else none.
- Unnamed nodes get names (exclusions are by name); nodes the scheme must leave in float
  (subgraph holders, recurrent ops) are listed with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from mcomp import evaluate, offline
from mcomp.errors import short
from mcomp.graph import SHAPE_ERRORS, copy, proto_graphs
from mcomp.model import onnx_opset, to_proto
from mcomp.opset import upgrade_opset
from mcomp.sources import BIG_WEIGHTS, weight_bytes
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
    # a node a scheme rewrote (a Gemm as MatMul) → its name and op type in the input, which ``--exclude`` matches too
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)


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


def prepare(model: ir.Model, *, opset: int | None = None, optimize: bool = True, keep_matmul: bool = False,
            spill: Path | None = None, spill_any: bool = False) -> Prepared:
    """A prepared copy (``model`` is not changed): constants lifted, optimized, opset ≥ ``opset``, shapes inferred.

    ``keep_matmul`` stops MatMul + Add becoming Gemm (the dynamic and weight-only kernels take MatMul).
    ``spill``: a big model's MatMul weights stay out of the protobuf, referred to in files
    (``mapped_source.serialize``; written to ``spill`` where the input's file does not hold them);
    ``spill_any``: every big float weight does, whatever reads it (tables too)."""
    work = copy(model)
    notes: list[str] = []
    given = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))  # before the HardSwish fusion's upgrade
    lift_constants(work)
    work = _fuse_hardswish(work, notes)
    if optimize:
        try:
            work, note = offline.offline_optimized_no_bigger(work, "basic", ["CPUExecutionProvider"],
                                                              disabled=["MatMulAddFusion"] if keep_matmul else [])
            notes += [note] if note else []
        except offline.WeightsGrew as exc:
            notes.append(f"{exc}; quantized the graph without its basic graph optimization")
        except (*evaluate.ort_errors(), OSError) as exc:  # an odd graph the offline optimizer rejects: quantize it as it is
            notes.append(f"onnxruntime's basic graph optimization failed before quantization ({short(exc, 160)}); "
                         "quantized the graph as given")
    if spill is not None and weight_bytes(work) >= BIG_WEIGHTS:
        from mcomp.passes.quantize.mapped_source import serialize

        proto = serialize(work, spill, any_reader=spill_any)
    else:
        proto = to_proto(work)
    flatten_gemm_bias(proto)
    before = onnx_opset(proto)
    if opset is not None and before is not None and before < opset:
        proto = upgrade_opset(proto, opset)
        notes.append(f"opset upgraded {before} → {opset} (per-channel Q/DQ needs an axis attribute)")
    proto, how = infer_shapes(proto)
    if how == "onnx-partial":
        notes.append("shape inference incomplete (onnx's left tensors untyped and the symbolic one failed); "
                     "quantized with the types found")
    elif how == "none":
        notes.append("shape inference failed (onnx and symbolic); quantized without inferred shapes")
    name_nodes(proto)
    unshare_biases(proto)
    prepared = Prepared(proto, notes, how, given, onnx_opset(proto))
    prepared.float_only = float_only_nodes(proto)
    return prepared


def flatten_gemm_bias(proto: onnx.ModelProto) -> int:
    """Every Gemm whose bias ``C`` is a [1, N] initializer reads it as [N] (a copy when others read it too);
    returns how many. ``C`` broadcasts to [M, N] either way."""
    inits = {t.name: t for t in proto.graph.initializer}
    graph_inputs = {v.name for v in proto.graph.input}
    readers: dict[str, int] = {}
    for g in proto_graphs(proto.graph):
        for node in g.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
    done = 0
    for node in proto.graph.node:
        bias = inits.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        if bias is None or bias.name in graph_inputs or len(bias.dims) != 2 or bias.dims[0] != 1:
            continue
        if readers[bias.name] > 1:
            flat = onnx.TensorProto()
            flat.CopyFrom(bias)
            flat.name = f"{bias.name}_{node.name or done}_flat"
            proto.graph.initializer.append(flat)
            readers[bias.name] -= 1
            node.input[2], bias = flat.name, flat
        bias.dims[:] = [bias.dims[1]]
        done += 1
    return done


BIASED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})  # whose input 2 onnxruntime quantizes to int32


def unshare_biases(proto: onnx.ModelProto) -> int:
    """Gives each Conv/ConvTranspose/Gemm of the main graph whose bias initializer another node reads too
    a copy of its own, under a name no tensor of the model has; returns how many.

    Why here: onnxruntime's QDQ quantizer copies such a bias itself (each reader's int32 bias has its
    own scale), naming the copy ``<bias><n>`` from the initializers' names alone. tf2onnx shares equal
    constants, and names values ``…/conv1d_25`` and ``…/conv1d_252``: basic-pitch's bias
    ``…conv1d_25`` became ``…conv1d_252``, the name of a Conv's output, and the quantized model fed
    a [36] bias where that output was read (onnxruntime refused it; every static quantization of it
    returned the input)."""
    inits = {t.name: t for t in proto.graph.initializer}
    taken = {v.name for g in proto_graphs(proto.graph) for v in (*g.input, *g.output, *g.initializer)}
    taken |= {name for g in proto_graphs(proto.graph) for n in g.node for name in (*n.input, *n.output)}
    readers: dict[str, int] = {}
    for g in proto_graphs(proto.graph):
        for node in g.node:
            for name in set(node.input):
                readers[name] = readers.get(name, 0) + 1
    copied = 0
    for node in proto.graph.node:
        bias = inits.get(node.input[2]) if node.op_type in BIASED_OPS and len(node.input) > 2 else None
        if bias is None or readers[bias.name] < 2:
            continue
        name = f"{bias.name}_bias_of_{node.name}"
        while name in taken:
            name += "_"
        own = onnx.TensorProto()
        own.CopyFrom(bias)
        own.name = name
        proto.graph.initializer.append(own)
        taken.add(name)
        readers[bias.name] -= 1
        node.input[2] = name
        copied += 1
    return copied


def _fuse_hardswish(model: ir.Model, notes: list[str]) -> ir.Model:
    """``x·Clip(x+3, 0, 6)/6`` (mobile nets' hard-swish, as exporters write it) becomes one HardSwish.

    Four element-wise float ops sit between every pair of convs otherwise, and there Q/DQ pairs
    cannot fuse: the int8 chain breaks at each. onnxscript's rewrite rules do the fusion; HardSwish
    needs opset 14, so the graph is upgraded only when the rules find something to fuse.
    """
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.rules.common import fuse_hardswish_rules

    def fused(m: ir.Model) -> int:
        return sum(1 for n in m.graph if n.op_type in ("HardSwish", "HardSigmoid"))

    before, opset = fused(model), onnx_opset(model) or 0
    try:
        candidate = copy(model) if opset >= 14 else ir.serde.deserialize_model(upgrade_opset(to_proto(model), 14))
        candidate = rewrite(candidate, pattern_rewrite_rules=fuse_hardswish_rules())
    except ValueError:  # a graph the opset converter (or onnx-ir, in the rewriter) rejects: leave it as it is
        return model
    count = sum(1 for n in candidate.graph if n.op_type == "HardSwish") - sum(1 for n in model.graph if n.op_type == "HardSwish")
    if fused(candidate) <= before or count <= 0:
        return model
    notes.append(f"fused {count} hard-swish pattern(s) (Add, Clip, Div, Mul) into HardSwish"
                 + (f"; opset upgraded {opset} → 14 for it" if opset < 14 else ""))
    return candidate


def infer_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Inferred types and shapes, and how: ``onnx`` when onnx's inference types every tensor (fast);
    else ``symbolic`` (onnxruntime's, dynamic dims merged; slow on large graphs); else what onnx's
    inference found (``onnx-partial``), or ``none``. The model returned may be ``proto`` itself, given
    what onnx's inference found (which runs without the weights: ``weights_aside``)."""
    from mcomp.passes.quantize.weights_aside import inferred_into, without_weights

    partial = None
    try:  # onnx's copies of the model hold no weights: they are put back (``weights_aside``)
        partial = onnx.shape_inference.infer_shapes(without_weights(proto), strict_mode=False, data_prop=True)
        if not _untyped(partial):
            return inferred_into(proto, partial), "onnx"
    except SHAPE_ERRORS:
        pass
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # seconds to import (sympy): only here

    with quiet():
        try:
            inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
        except Exception:  # noqa: BLE001 - only onnxruntime's symbolic inference runs here; it raises bare Exception
            inferred = None
    if inferred is not None:
        return inferred, "symbolic"
    return (inferred_into(proto, partial), "onnx-partial") if partial is not None else (proto, "none")


def _untyped(proto: onnx.ModelProto) -> list[str]:
    """Top-level node outputs without an inferred element type."""
    typed = {v.name for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]
             if v.type.tensor_type.elem_type or v.type.HasField("sequence_type") or v.type.HasField("optional_type")}
    return [o for n in proto.graph.node for o in n.output if o and o not in typed]


def float_only_nodes(proto: onnx.ModelProto) -> dict[str, str]:
    """Top-level nodes that stay float, with the reason: subgraph holders, recurrent ops, and (under
    ``force``) what is already quantized."""
    out = {}
    dequantized = {o for n in proto.graph.node if n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear") for o in n.output}
    for node in proto.graph.node:
        if node.op_type in QUANTIZED_OPS or any(i in dequantized for i in node.input):
            out[node.name] = "already quantized (reads dequantized values, or is a quantized op)"
            continue
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


@contextlib.contextmanager
def quiet():
    """onnxruntime's quantization tools log per node, and sessions made inside them log per initializer;
    a pass never prints (design §3). Everything changed here is process-wide, so it is restored on exit:
    onnxruntime's default logger severity, ``logging.disable`` and ``sys.stdout``."""
    with ort_log_severity(3):
        disabled = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
        finally:
            logging.disable(disabled)


_severity = [2]  # onnxruntime's default logger starts at 2 (warning); mcomp tracks what it sets


@contextlib.contextmanager
def ort_log_severity(level: int):
    """onnxruntime's default logger at ``level`` for the block, then back to what it was. onnxruntime
    has no getter (1.32), so the previous level is the one this function last set, or the default."""
    import onnxruntime as ort

    getter = getattr(ort, "get_default_logger_severity", None)
    previous = getter() if getter is not None else _severity[0]
    ort.set_default_logger_severity(level)
    _severity[0] = level
    try:
        yield
    finally:
        ort.set_default_logger_severity(previous)
        _severity[0] = previous
