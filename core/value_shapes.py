"""Concrete shapes of every tensor of a graph at given input shapes: what MACs are counted from.

One inference is not enough for the graphs exporters write. onnx shape inference (with data
propagation) types every standard op but loses the thread in the shape arithmetic of a TorchScript
transformer export (Shape → Gather → Unsqueeze → Concat → Reshape around the head split, the
mask's ConstantOfShape → Where → Expand): BERT's 32 MatMuls all came out unknown. So the shapes
come from up to three inferences, each run only when the ones before left a node unknown:

1. ``onnx``: onnx shape inference, strict mode off, data propagation on;
2. ``symbolic``: onnxruntime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``,
   written for transformer exports: it evaluates that shape arithmetic, and types the
   com.microsoft ops of onnxruntime's fusions, such as Attention). Its shapes fill the gaps the
   first left; where both know a shape, onnx's stands;
3. ``folded``: the graph constant-folded (onnxscript's optimizer), then onnx inference again; the
   count is then taken on the folded graph (its node set differs);
4. ``onnxruntime``: onnxruntime's basic-level offline optimization (its constant folding reaches into
   If branches, which onnxscript's left: silero VAD's network, all inside them, had no count), then
   onnx inference again; counted on that graph.

Each stage yields the graph to count on, the fully known shapes so far, and why the stage failed
(None when it ran): a failure is reported with the count, never raised.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import onnx

from mcomp import ml_ops
from mcomp.errors import short

# What onnx shape inference raises on a graph it cannot type (its C++ errors arrive as these).
SHAPE_ERRORS = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError)


class Stage(NamedTuple):
    """One inference's result: the graph to count on, its known shapes, and why it failed (or None)."""

    name: str
    proto: onnx.ModelProto
    shapes: dict[str, list[int]]
    failure: str | None


def stages(proto: onnx.ModelProto) -> Iterator[Stage]:
    """The inferences of the module docstring in order, lazily: stop iterating once every node
    you need has its shapes, and the costlier ones never run. ``proto``'s inputs should be
    concrete (:func:`with_concrete_inputs`); it is not modified."""
    inferred, failure = onnx_inferred(proto)
    if failure is None:
        inferred = through_contrib_ops(inferred)
    shapes = known_shapes(inferred.graph)
    yield Stage("onnx", inferred, shapes, failure)
    symbolic, failure = _symbolic(proto)  # from the bare graph: onnx's partial value_info could mislead it
    if symbolic is not None:
        shapes = known_shapes(symbolic.graph) | shapes
    yield Stage("symbolic", inferred, shapes, failure)
    folded, failure = _folded(inferred)
    if folded is not None:
        folded, again = onnx_inferred(folded)
        if again is None:
            folded = through_contrib_ops(folded)
        yield Stage("folded", folded, known_shapes(folded.graph), again)
    else:
        yield Stage("folded", inferred, shapes, failure)
    optimized, failure = _ort_folded(proto)
    if optimized is not None:
        optimized, failure = onnx_inferred(optimized)
        yield Stage("onnxruntime", optimized, known_shapes(optimized.graph), failure)


def onnx_inferred(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnx shape inference, or the proto as it was and why inference failed."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True), None
    except SHAPE_ERRORS as exc:
        return proto, f"onnx shape inference failed ({short(exc, 160)})"


# com.microsoft ops of onnxruntime's fusions whose first output has their first input's shape: onnx
# shape inference does not know them, so after a fused SkipLayerNormalization nothing downstream had a
# shape (a fused, int4 BERT: 28 MatMuls uncounted).
SAME_SHAPE_CONTRIB = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "BiasGelu",
                                "FastGelu", "QuickGelu", "BiasAdd", "SimplifiedLayerNormalization"})
# onnxruntime's fusions of a standard op with its activation (the CPU provider's extended level writes
# them for every Conv+Relu and Gemm+Relu of a CNN), and the blocked-layout (NCHWc) ops of its `all`
# level, whose tensors keep 4-D shapes with the channels padded to the block: the output is the
# standard op's, from its first inputs.
FUSED_STANDARD = {"FusedConv": ("Conv", 3), "FusedGemm": ("Gemm", 3), "Conv": ("Conv", 3), "MaxPool": ("MaxPool", 1),
                  "AveragePool": ("AveragePool", 1), "GlobalAveragePool": ("GlobalAveragePool", 1),
                  "GlobalMaxPool": ("GlobalMaxPool", 1)}
CONTRIB_DOMAINS = ("com.microsoft", "com.microsoft.nchwc")
TYPED_HERE = (*CONTRIB_DOMAINS, ml_ops.ML_DOMAIN)  # the domains whose ops are typed here (scikit-learn's: ml_ops)
# Each round types the contrib ops whose inputs the previous one reached (a run of them at once), then onnx
# infers the standard ops after them: a CNN at onnxruntime's `all` level alternates NCHWc and standard ops
# about once per block (PP-OCR's direction classifier: 35 ReorderOutput), and 8 rounds left 44 of its convs uncounted.
_CONTRIB_ROUNDS = 64


def through_contrib_ops(inferred: onnx.ModelProto) -> onnx.ModelProto:
    """``inferred`` with the outputs of the element-wise contrib ops above, of MatMulNBits (A's
    leading dims and N) and of scikit-learn's shape-keeping ops (``ml_ops``) typed as value_info, and
    onnx inference run again from them, until nothing more is learnt. A graph without such ops is
    returned as it is."""
    graph = inferred.graph
    if not any(n.domain in TYPED_HERE for n in graph.node):
        return inferred
    padded = _reordered_channels(graph)
    typed_before: set[str] = set()  # typed in an earlier round, maybe with a dim the data decides (a Tokenizer's)
    for _ in range(_CONTRIB_ROUNDS):
        types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]}
        types.update({t.name: t.data_type for t in graph.initializer})
        shapes = known_shapes(graph)
        added = []
        for node in graph.node:
            if node.domain not in TYPED_HERE or not node.input or not node.output or node.output[0] in shapes \
                    or node.output[0] in typed_before:
                continue
            typed = _contrib_output(node, shapes, types, padded)
            if typed is not None:  # known at once to the contrib ops after it: a chain of them takes one round
                typed_before.add(node.output[0])
                added.append(onnx.helper.make_tensor_value_info(node.output[0], typed[0], typed[1]))
                types[node.output[0]], shapes[node.output[0]] = typed
        if not added:
            return inferred
        graph.value_info.extend(added)
        again, failure = onnx_inferred(inferred)
        if failure is not None:
            return inferred
        inferred, graph = again, again.graph
    return inferred


def _reordered_channels(graph: onnx.GraphProto) -> dict[str, int]:
    """The channel count of each NCHWc ``ReorderInput``'s output, padded to onnxruntime's block (8 or 16 by
    the CPU), read from the blocked Conv it feeds: its weight's input channels × group. An output read by
    no such Conv (a pooling) keeps its input's channels, which is all a pooling's shape needs."""
    weights = {t.name: list(t.dims) for t in graph.initializer}
    padded = {}
    for node in graph.node:
        if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv" and len(node.input) > 1 \
                and len(weights.get(node.input[1], ())) > 1:
            group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            padded[node.input[0]] = weights[node.input[1]][1] * group
    return padded


def _broadcast(a, b) -> list[int] | None:
    if a is None or b is None:
        return None
    try:
        return list(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


def _qlinear_conv(ins: list, attrs: dict) -> list[int] | None:
    """onnxruntime's QLinearConv (x at 0, w at 3; NHWC under ``channels_last``): the output of a Conv of
    those shapes, by the standard formula (auto_pad, pads, strides, dilations)."""
    x, w = ins[0], ins[3] if len(ins) > 3 else None
    if x is None or w is None or len(x) < 3 or len(w) != len(x):
        return None
    last = bool(attrs.get("channels_last"))
    spatial = x[1:-1] if last else x[2:]
    k = len(spatial)
    kernel = list(attrs.get("kernel_shape") or w[2:])
    strides, dilations = list(attrs.get("strides") or [1] * k), list(attrs.get("dilations") or [1] * k)
    pads = list(attrs.get("pads") or [0] * (2 * k))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    out = []
    for i, size in enumerate(spatial):
        span = dilations[i] * (kernel[i] - 1) + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[i]))
        elif auto == "VALID":
            out.append((size - span) // strides[i] + 1)
        else:
            out.append((size + pads[i] + pads[i + k] - span) // strides[i] + 1)
    return [x[0], *out, w[0]] if last else [x[0], w[0], *out]


def _qlinear_pool(ins: list, attrs: dict) -> list[int] | None:
    x = ins[0]
    if x is None or len(x) < 3:
        return None
    return [x[0], *[1] * (len(x) - 2), x[-1]] if attrs.get("channels_last") else [*x[:2], *[1] * (len(x) - 2)]


def _qgemm(ins: list, attrs: dict) -> list[int] | None:
    a, b = ins[0], ins[3] if len(ins) > 3 else None
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    return [a[1] if attrs.get("transA") else a[0], b[0] if attrs.get("transB") else b[1]]


# onnxruntime's quantized contrib ops of a QDQ model optimized at `all` (QLinearConv NHWC and the int8 ops
# around it): onnx inference types none, so a QDQ CNN's every conv was uncounted (PP-OCR's classifier: 54).
QLINEAR_RULES = {
    "QLinearConv": _qlinear_conv,
    "QLinearAdd": lambda ins, attrs: _broadcast(ins[0], ins[3] if len(ins) > 3 else None),
    "QLinearMul": lambda ins, attrs: _broadcast(ins[0], ins[3] if len(ins) > 3 else None),
    "QLinearGlobalAveragePool": _qlinear_pool,
    "QLinearSoftmax": lambda ins, attrs: ins[0],
    "QLinearSigmoid": lambda ins, attrs: ins[0],
    "QLinearLeakyRelu": lambda ins, attrs: ins[0],
    "QGemm": _qgemm,
}


def _contrib_output(node: onnx.NodeProto, shapes: dict, types: dict,
                    padded: dict[str, int]) -> tuple[int, list[int]] | None:
    """(element type, shape) of the first output of a contrib op we know the rule of, once its inputs are known."""
    ins = [shapes.get(name) for name in node.input]
    if ins and ins[0] is not None and node.input[0] in types:  # scikit-learn's (ml_ops): a dim may stay None
        typed = ml_ops.typed_output(node.domain, node.op_type, types[node.input[0]], ins[0])
        if typed is not None:
            return typed
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in QLINEAR_RULES and node.input and node.input[0] in types:
        shape = QLINEAR_RULES[node.op_type](ins, attrs)
        return None if shape is None else (types[node.input[0]], shape)
    if node.op_type == "DynamicQuantizeLSTM" and ins[0] is not None and len(ins[0]) == 3 and attrs.get("hidden_size") \
            and node.input[0] in types:  # the LSTM's Y: [seq, directions, batch, hidden]
        directions = 2 if attrs.get("direction") in (b"bidirectional", "bidirectional") else 1
        return types[node.input[0]], [ins[0][0], directions, ins[0][1], int(attrs["hidden_size"])]
    if node.op_type == "ReorderInput" and ins[0] is not None and len(ins[0]) > 2 and node.input[0] in types:
        given = ins[0]  # NCHW, or NHWC with channels_last: NCHWc out, its channels padded to the block
        n, channels, spatial = (given[0], given[-1], given[1:-1]) if attrs.get("channels_last") else \
            (given[0], given[1], given[2:])
        return types[node.input[0]], [n, padded.get(node.output[0], channels), *spatial]
    if node.op_type in SAME_SHAPE_CONTRIB and ins[0] is not None and node.input[0] in types:
        return types[node.input[0]], ins[0]
    if node.op_type == "MatMulNBits" and ins[0] is not None and attrs.get("N") and node.input[0] in types:
        return types[node.input[0]], ins[0][:-1] + [int(attrs["N"])]
    if node.op_type in FUSED_STANDARD:
        return _as_standard_op(node, shapes, types)
    if node.op_type == "Upsample" and node.domain == "com.microsoft.nchwc" and ins[0] is not None \
            and node.input[0] in types and len(attrs.get("scales") or ()) == len(ins[0]):
        # a Resize of a blocked tensor by whole factors (YOLOX's neck at `all`: its 47 convs after it uncounted)
        return types[node.input[0]], [d * int(k) for d, k in zip(ins[0], attrs["scales"])]
    if node.op_type == "ReorderOutput" and ins[0] is not None and node.input[0] in types:  # NCHWc back to NCHW/NHWC
        n, spatial, channels = ins[0][0], ins[0][2:], int(attrs.get("channels", ins[0][1]))
        return types[node.input[0]], [n, *spatial, channels] if attrs.get("channels_last") else [n, channels, *spatial]
    if node.op_type == "GatherBlockQuantized" and len(ins) > 2 and ins[0] is not None and ins[1] is not None \
            and node.input[2] in types:  # the scales' type is the output's (the data is int4)
        axis = int(attrs.get("gather_axis", 0)) % len(ins[0])
        return types[node.input[2]], ins[0][:axis] + ins[1] + ins[0][axis + 1:]
    return None


def _as_standard_op(node: onnx.NodeProto, shapes: dict, types: dict) -> tuple[int, list[int]] | None:
    """A fused op's output typed by onnx's own rule for the op it fuses (a one-node model of that op,
    inferred): padding, strides, dilations, auto_pad and transposes are then read exactly as onnx does."""
    op, arity = FUSED_STANDARD[node.op_type]
    inputs = list(node.input[:arity])
    present = [name for name in inputs if name]
    if any(shapes.get(name) is None or name not in types for name in present):
        return None
    attrs = [a for a in node.attribute if not a.name.startswith("activation")]
    alone = onnx.helper.make_node(op, inputs, ["out"])
    alone.attribute.extend(attrs)
    graph = onnx.helper.make_graph(
        [alone], "fused", [onnx.helper.make_tensor_value_info(n, types[n], shapes[n]) for n in dict.fromkeys(present)],
        [onnx.helper.make_empty_tensor_value_info("out")])
    try:
        typed = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
                                                  strict_mode=True)
    except SHAPE_ERRORS:
        return None
    shape = known_shapes(typed.graph).get("out")
    return (types[node.input[0]], shape) if shape is not None else None


def with_concrete_inputs(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    """``proto`` (changed in place) with every graph input's dims set: from ``input_shapes`` where
    given, else its static dims, else 1."""
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        wanted = (input_shapes or {}).get(inp.name)
        for i, dim in enumerate(dims):
            if wanted is not None and i < len(wanted):
                dim.ClearField("dim_param")
                dim.dim_value = int(wanted[i])
            elif not dim.HasField("dim_value") or dim.dim_value < 0:
                dim.ClearField("dim_param")
                dim.dim_value = 1
    return proto


def known_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Fully known shapes of the tensors of ``graph`` and its subgraphs."""
    from mcomp.graph import proto_graphs

    shapes: dict[str, list[int]] = {}
    for g in proto_graphs(graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = [d.dim_value for d in t.shape.dim]
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
    return shapes


def _symbolic(proto: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """onnxruntime's symbolic shape inference, keeping what it found when it could not finish.

    Its public ``infer_shapes`` raises on an incomplete result and first saves the model as
    ``sym_shape_infer_temp.onnx`` in the working directory, so its three steps are called here as
    that function calls them (onnxruntime is pinned in constraints.txt). Its warnings ("Only
    support models of opset 7 and above" …) are kept off the terminal: the count says what failed.
    """
    try:
        module = _symbolic_module()
    except (ImportError, OSError) as exc:  # sympy missing: it comes with torch, a dependency, but say so
        return None, f"symbolic shape inference unavailable ({short(exc, 120)})"
    SymbolicShapeInference = module.SymbolicShapeInference
    if (module.get_opset(proto) or 0) < 7:
        return None, "symbolic shape inference needs opset 7 or newer"
    proto = _constants_as_tensors(proto)
    log = logging.getLogger(SymbolicShapeInference.__module__)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_, None
    except Exception as exc:  # noqa: BLE001 - third-party inference on an odd graph: keep the other stages
        return None, f"symbolic shape inference failed ({short(exc, 160)})"
    finally:
        log.setLevel(level)


# A Constant's value in any of its attribute spellings, as the tensor its ``value`` attribute holds.
_CONSTANT_TENSORS = {"value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64,
                     "value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT}


def _constants_as_tensors(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto``, or a copy of it whose Constants hold their value as a tensor: onnxruntime's symbolic
    inference reads only ``value``, and failed on a ``value_ints`` Constant ("'NoneType' object has no
    attribute 'HasField'"), which onnxscript's folding writes into a structured-pruned SLANet's Loop."""
    from mcomp.graph import proto_graphs

    def spelled_otherwise(node: onnx.NodeProto) -> bool:
        return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and any(
            a.name in _CONSTANT_TENSORS for a in node.attribute)

    if not any(spelled_otherwise(n) for g in proto_graphs(proto.graph) for n in g.node):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for graph in proto_graphs(copy.graph):
        for node in graph.node:
            if not spelled_otherwise(node):
                continue
            attr = next(a for a in node.attribute if a.name in _CONSTANT_TENSORS)
            value = onnx.helper.get_attribute_value(attr)
            dims = [] if attr.name in ("value_int", "value_float") else [len(value)]
            values = [value] if not dims else list(value)
            tensor = onnx.helper.make_tensor("value", _CONSTANT_TENSORS[attr.name], dims, values)
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", tensor))
    return copy


@functools.cache
def _symbolic_module():
    """``onnxruntime/tools/symbolic_shape_infer.py`` loaded from its file: importing it by name runs
    ``onnxruntime.tools.__init__``, which imports torch (seconds, for every ``mcomp inspect``)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnxruntime is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tools" / "symbolic_shape_infer.py"
    loader = importlib.util.spec_from_file_location("mcomp._ort_symbolic_shape_infer", path)
    if loader is None or loader.loader is None:
        raise ImportError(f"no symbolic shape inference in {path.parent}")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _folded(proto: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """``proto`` constant-folded by onnxscript's optimizer (shapes computed from constants become
    constants), or None and why the folder failed."""
    import onnx_ir as ir
    from onnxscript import optimizer

    try:
        model = ir.serde.deserialize_model(proto)
        optimizer.optimize(model, num_iterations=2)
        return ir.serde.serialize_model(model), None
    except Exception as exc:  # noqa: BLE001 - only onnx-ir/onnxscript code runs in this block
        return None, f"constant folding failed ({short(exc, 160)})"


def _ort_folded(proto: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """``proto`` through onnxruntime's basic offline optimization (standard ops only), or None and why it
    failed. The graph counted has its big weights set aside (``graph.macs``), so no weight is written."""
    import tempfile

    import onnxruntime as ort

    # Folded with the inputs' dims left open: onnxruntime types both branches of an If, and at the dims of
    # one (silero's 16 kHz input) the other's LSTM is mistyped and the session refused. Set back after.
    given = {}
    loose = onnx.ModelProto()
    loose.CopyFrom(proto)
    _weights_as_inputs(loose)
    for inp in loose.graph.input:
        dims = inp.type.tensor_type.shape.dim
        given[inp.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        for i, dim in enumerate(dims):
            dim.dim_param = f"{inp.name}_{i}"
    try:
        with tempfile.TemporaryDirectory(prefix="mcomp-macs-") as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
            options.log_severity_level = 4  # the graph may not run (weights set aside): only its folding is read
            ort.InferenceSession(loose.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base; the count says why
        return None, f"onnxruntime's folding failed ({short(exc, 160)})"
    del optimized.graph.value_info[:]  # typed at open dims: inferred again at the given ones
    for inp in optimized.graph.input:
        for dim, value in zip(inp.type.tensor_type.shape.dim, given.get(inp.name, [])):
            if value is not None:
                dim.dim_value = value
    return optimized, None


_FOLDED_BYTES = 1024  # initializers above this reach onnxruntime as typed inputs: shapes need no weights


def _weights_as_inputs(proto: onnx.ModelProto) -> None:
    """Initializers of more than ``_FOLDED_BYTES`` (or in external files) become typed graph inputs, as
    onnx-ir's ``call_onnx_api`` does for ``graph.macs``: ``macs_by_node`` passes whole protos, and a big
    model's session would have written every weight again to be read for its shapes."""
    inputs = {v.name for v in proto.graph.input}
    kept = []
    for tensor in proto.graph.initializer:
        stored = len(tensor.raw_data) or tensor.ByteSize()
        if tensor.data_location != onnx.TensorProto.EXTERNAL and stored <= _FOLDED_BYTES:
            kept.append(tensor)
        elif tensor.name not in inputs:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


__all__ = ["SHAPE_ERRORS", "SAME_SHAPE_CONTRIB", "Stage", "stages", "onnx_inferred", "through_contrib_ops",
           "with_concrete_inputs", "known_shapes"]
