"""Opset conversion, in one place: down from 18 (torch's exporter) and up (the quantizer).

Why mcomp has its own conversions rather than only ``onnx.version_converter``:

- torch 2.13's ``torch.export``-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which
  mcomp uses for nn.Modules and ``.pt2`` programs) has no implementations below opset 18: a model
  comes out at 18 at least, whatever opset was asked for. Going down to 17 (mcomp's default) is
  left to us.
- onnx's version converter cannot do that 18 -> 17 step: its C converter has no 18 -> 17 adapter
  for Split, and on ReduceMean & co. (whose ``axes`` became an input in 18) it leaves an invalid
  attribute behind. :func:`downgrade_18_to_17` rewrites what changed between 17 and 18 itself;
  lower targets then continue with onnx's converter (:func:`downgrade_opset`). Callers that
  export (:mod:`mcomp.torch_io`) keep the model at 18, with a warning, when this fails.
- Upwards, onnx's converter is good enough: the quantizer raises old models to opset 13 (the
  per-channel QuantizeLinear/DequantizeLinear need an ``axis`` attribute) or 14 (HardSwish), and
  :func:`upgrade_opset` only wraps it, with the checker and a one-line reason on failure.
- What onnxruntime writes (its offline optimizer, its quantizers, its float16 converter) declares an
  opset import for every domain it knows (``com.microsoft``, ``ai.onnx.ml``, ``org.pytorch.aten`` …)
  whether or not a node uses it: the model then looks as if it needed onnxruntime, and strict
  runtimes refuse the unknown domains. Every pass that writes such a graph ends with
  :func:`drop_unused_opsets`.

:func:`mcomp.model.onnx_opset` (re-exported here) reads a model's default-domain opset.
"""

from __future__ import annotations

import math

import onnx

from mcomp.errors import short
from mcomp.model import onnx_opset

__all__ = ["downgrade_18_to_17", "downgrade_opset", "drop_unused_opsets", "onnx_opset", "upgrade_opset"]


def drop_unused_opsets(model):
    """Removes the opset imports of domains that no node (in any graph or function) uses, from an
    ``onnx_ir.Model``, in place; the default domain stays. Returns ``model``."""
    import onnx_ir as ir
    import onnx_ir.passes.common as ir_passes

    ir.passes.PassManager([ir_passes.RemoveUnusedOpsetsPass()])(model)
    return model


# Inline float initializers from this size are held aside while onnx's converter runs (``upgrade_opset``).
HELD_FROM = 1 << 20
FLOATS = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
          onnx.TensorProto.DOUBLE: 8}  # bytes an element


def upgrade_opset(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """onnx's version converter; raises ValueError with the reason when it cannot convert; ``proto`` is unchanged.

    The converter and the checker each take the whole protobuf into C++ and back: on an LLM-shaped
    graph with its 256 MiB embedding table inline (weight-only raises opset 18 to 21), that was four
    more copies of the table at once. The graph is converted with its big float initializers as empty
    stubs (no adapter that raises an opset reads a float weight's values; were one to fail on a stub,
    the conversion is retried whole), then the converted graph takes them back one tensor at a time.
    Float initializers in files are stubs too: a big model's prepared graph refers to them by absolute
    paths, which the checker refuses (weight-only's Gather tables then stayed float on every big model)."""
    light, held = _held_aside(proto)
    try:
        converted = _converted(light, target, checked=lambda m: _emptied(m, held))
    except ValueError:
        if not held:
            raise
        converted = _converted(proto, target)
        held = {}
    by_name = {t.name: t for t in proto.graph.initializer}
    for tensor in converted.graph.initializer:
        if tensor.name in held:
            tensor.CopyFrom(by_name[tensor.name])
    return converted


def _converted(proto: onnx.ModelProto, target: int, checked=lambda m: m) -> onnx.ModelProto:
    """``proto`` at opset ``target``, and ``checked(converted)`` passed through onnx's checker."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(checked(converted))
    except Exception as exc:
        raise ValueError(f"cannot upgrade opset to {target}: {short(exc, 160)}") from None
    return converted


def _held_aside(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``proto`` whose top-level float initializers in files, and inline ones of ``HELD_FROM`` bytes
    or more, are stubs (their shape, and a file name that does not exist: the converter reads neither), and
    their names; their bytes are never read. Only float weights: the adapters read integer initializers
    (shapes, axes), never a float weight's values."""
    from mcomp.external_data import copy_fields

    light = onnx.ModelProto()
    copy_fields(proto, light, skip={"graph"})
    copy_fields(proto.graph, light.graph, skip={"initializer"})
    held = set()
    for tensor in proto.graph.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        size = math.prod(tensor.dims) * FLOATS.get(tensor.data_type, 0)  # not ByteSize(): 1 s on 0.5 GiB
        if tensor.data_type not in FLOATS or not (external or size >= HELD_FROM):
            light.graph.initializer.add().CopyFrom(tensor)
            continue
        stub = light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                           data_location=onnx.TensorProto.EXTERNAL)
        stub.external_data.add(key="location", value="mcomp-held-aside")
        held.add(tensor.name)
    return light, held


def _emptied(proto: onnx.ModelProto, held: set[str]) -> onnx.ModelProto:
    """A copy of a converted stub graph for the checker, which looks for a stub's file: each stub an empty
    tensor (the checker reads a tensor's fields, not its shape against the graph's)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for tensor in out.graph.initializer:
        if tensor.name in held:
            name, data_type = tensor.name, tensor.data_type
            tensor.Clear()
            tensor.name, tensor.data_type = name, data_type
            tensor.dims.append(0)
    return out


def downgrade_opset(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Brings a model from opset 18 (where torch's exporter starts) down to ``target``, or raises.

    The 18 -> 17 step is :func:`downgrade_18_to_17`; lower targets continue with onnx's converter.
    The result passes onnx's full check. A model already at ``target`` or below (or without a
    default-domain opset) is returned as it is; one at another opset than 18 raises ValueError.
    """
    from onnx import version_converter

    current = onnx_opset(proto)
    if current is None or current <= target:
        return proto
    if current != 18:
        raise ValueError(f"unexpected opset {current}")
    converted = downgrade_18_to_17(proto)
    if target < 17:
        converted = version_converter.convert_version(converted, target)
    onnx.checker.check_model(converted, full_check=True)
    return converted


_REDUCE_AXES_INPUT_18 = frozenset(
    {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
     "ReduceMin", "ReduceProd", "ReduceSumSquare"}
)  # axes became an input in opset 18 (ReduceSum did so in 13)


def downgrade_18_to_17(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites what changed between opsets 17 and 18 into its opset-17 form, or raises.

    Reduce* take constant ``axes`` as an attribute again; Split trades ``num_outputs`` for
    explicit sizes (the split axis must be statically known); Resize and Pad
    are accepted only without their opset-18 extras. Anything else new in 18 fails the checker.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if len(model.functions):
        raise ValueError("the model has local functions")
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name == "value_ints":
                    consts[node.output[0]] = np.array(list(a.ints), dtype=np.int64)
    shapes: dict[str, list] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for i in graph.initializer:
        shapes[i.name] = list(i.dims)

    def attr(node, name):
        return next((a for a in node.attribute if a.name == name), None)

    def drop_attr(node, name):
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)

    def visit(g) -> None:
        for node in g.node:
            for a in node.attribute:  # subgraphs (If, Loop, Scan)
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)
            if node.domain not in ("", "ai.onnx"):
                continue
            op = node.op_type
            if op in _REDUCE_AXES_INPUT_18:
                noop = attr(node, "noop_with_empty_axes")
                axes_name = node.input[1] if len(node.input) > 1 else ""
                if axes_name:
                    if axes_name not in consts:
                        raise ValueError(f"{op} {node.name!r}: axes are computed, not constant")
                    axes = [int(v) for v in np.asarray(consts[axes_name]).reshape(-1)]
                    del node.input[1:]
                    if axes:
                        node.attribute.append(helper.make_attribute("axes", axes))
                    elif noop is not None and noop.i:
                        raise ValueError(f"{op} {node.name!r}: noop_with_empty_axes")
                elif noop is not None and noop.i:
                    raise ValueError(f"{op} {node.name!r}: noop_with_empty_axes")
                drop_attr(node, "noop_with_empty_axes")
            elif op == "Split":
                num = attr(node, "num_outputs")
                if num is None:
                    continue
                drop_attr(node, "num_outputs")
                n = int(num.i)
                axis_attr = attr(node, "axis")
                axis = int(axis_attr.i) if axis_attr is not None else 0
                shape = shapes.get(node.input[0])
                dim = None
                if shape is not None and -len(shape) <= axis < len(shape):
                    dim = shape[axis]
                # Always explicit sizes, even for equal parts: onnxruntime (1.32) merges two
                # size-less Splits of one tensor that differ only in their number of outputs.
                if dim is None:
                    raise ValueError(f"Split {node.name!r}: num_outputs on an axis of unknown size")
                chunk = -(-dim // n)
                sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
                name = f"{node.output[0]}__split_sizes"
                graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
                del node.input[1:]
                node.input.append(name)
            elif op == "Resize":
                for name, default in (("antialias", 0), ("keep_aspect_ratio_policy", b"stretch")):
                    a = attr(node, name)
                    if a is not None and (a.i if name == "antialias" else a.s) != default:
                        raise ValueError(f"Resize {node.name!r}: {name} is new in opset 18")
                    drop_attr(node, name)
                if attr(node, "axes") is not None:
                    raise ValueError(f"Resize {node.name!r}: axes is new in opset 18")
            elif op == "Pad" and len(node.input) > 3 and node.input[3]:
                raise ValueError(f"Pad {node.name!r}: axes is new in opset 18")
            elif op in ("ScatterElements", "ScatterND"):
                r = attr(node, "reduction")
                if r is not None and r.s in (b"max", b"min"):
                    raise ValueError(f"{op} {node.name!r}: reduction {r.s.decode()} is new in opset 18")

    visit(graph)
    # drop the constants that only fed the axes inputs rewritten above
    used = set(o.name for o in graph.output)

    def collect(g) -> None:
        for node in g.node:
            used.update(node.input)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)
                for sub in a.graphs:
                    collect(sub)

    collect(graph)
    kept_init = [i for i in graph.initializer if i.name in used]
    if len(kept_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept_init)
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] not in used)]
    if len(kept_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept_nodes)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 17
    return model
