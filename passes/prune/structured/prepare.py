"""Puts a graph in the form the channel analysis reads: constants folded, weights as initializers, shapes known.

- ``fold``: onnxscript's constant folder turns what exporters compute from constants into
  constants (PaddlePaddle's ``Reshape(bias, [1,C,1,1])``, torch's ``Expand(CastLike(0), Shape(W)[:1])``
  zero biases, ``SplitToSequence``+``SequenceAt`` into ``Split``), then dead nodes go.
- ``lift``: ``Constant`` nodes of the main graph become initializers (paddle2onnx keeps every
  weight there), so that a weight is always ``value.const_value``.
- ``infer_shapes``: onnx shape inference (symbolic dims stay symbolic) after the stale
  intermediate shapes are dropped, so that shapes after a cut are recomputed, not merged; the
  graph's inputs and outputs keep their declared shapes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

logger = logging.getLogger(__name__)


def prepare(model: ir.Model) -> ir.Model:
    """Folds, lifts and infers shapes, in place (idempotent); returns the model."""
    fold(model)
    lift(model)
    unshare_shapes(model)
    infer_shapes(model)
    return model


def fold(model: ir.Model) -> None:
    from onnxscript import optimizer

    try:
        optimizer.fold_constants(model)
        optimizer.remove_unused_nodes(model)
    # An odd graph the folder cannot handle: analyse it as it is. What it raises then: RuntimeError
    # (it wraps an op evaluator's failure in one; onnx_ir's PassError is one), ValueError (shapes of
    # different ranks to merge), onnx_ir's pre/postcondition errors. Anything else is a bug to see.
    except (RuntimeError, ValueError, ir.passes.InvariantError) as exc:
        logger.debug("constant folding skipped: %s", exc)


def lift(model: ir.Model) -> int:
    """Main-graph ``Constant`` nodes become initializers named like their output; returns how many."""
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attributes) != 1:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        tensor = _constant_tensor(node, out.name)
        if tensor is None:
            continue
        value = ir.Value(name=out.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        ir.convenience.replace_all_uses_with(out, value)
        graph.remove(node, safe=True)
        graph.register_initializer(value)
        count += 1
    return count


_ORIGIN = "mcomp.prune.unshared_from"
_SHAPE_OPS = frozenset({"Concat", "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Gather"})


def unshare_shapes(model: ir.Model) -> int:
    """Every Reshape gets its own shape-computing nodes; returns how many were copied.

    Exporters compute a target shape once (``Concat(Shape(x)[0], Shape(x)[1], [768])``) and feed
    every layer's Reshape from it. A cut rewrites one entry of it for one layer only, so the
    shared node would be rewritten once per layer: each Reshape is given a private copy first."""
    count = 0
    for node in list(model.graph):
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
            count += _own(model.graph, node, 1, 0)
    return count


def reshare_shapes(model: ir.Model) -> int:
    """Undoes ``unshare_shapes`` where a cut left the copy as it was (same inputs, same attributes):
    the pruned graph has no more nodes than it needs. Returns how many copies went."""
    graph, count = model.graph, 0
    for node in list(graph):  # graph order: a copied input is merged back before the node that reads it
        origin = node.meta.get(_ORIGIN)
        if origin is None or origin.graph is not graph or list(node.inputs) != list(origin.inputs) \
                or {k: a.value for k, a in node.attributes.items()} != {k: a.value for k, a in origin.attributes.items()}:
            continue
        ir.convenience.replace_all_uses_with(node.outputs[0], origin.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def _own(graph: ir.Graph, user: ir.Node, index: int, depth: int) -> int:
    value = user.inputs[index]
    producer = value.producer() if value is not None else None
    if producer is None or depth > 6 or producer.op_type not in _SHAPE_OPS or len(producer.outputs) != 1 \
            or producer.graph is not graph:
        return 0
    count = 0
    if len(value.uses()) > 1 or value.is_graph_output():
        copy = ir.Node(producer.domain, producer.op_type, list(producer.inputs),
                       [ir.Attr(a.name, a.type, a.value) for a in producer.attributes.values()],
                       name=f"{producer.name or producer.op_type}_{user.name or 'reshape'}", version=producer.version)
        out = copy.outputs[0]
        out.name, out.shape, out.type = f"{value.name}_{user.name or id(user)}", value.shape, value.type
        copy.meta[_ORIGIN] = producer
        graph.insert_after(producer, copy)
        user.replace_input_with(index, out)
        producer, count = copy, 1
    for j in range(len(producer.inputs)):
        count += _own(graph, producer, j, depth + 1)
    return count


def _constant_tensor(node: ir.Node, name: str):
    attr_name, attr = next(iter(node.attributes.items()))
    if attr_name == "value":
        return attr.as_tensor()
    if attr_name == "value_int":
        return ir.tensor(np.array(attr.as_int(), np.int64), name=name)
    if attr_name == "value_ints":
        return ir.tensor(np.array(attr.as_ints(), np.int64), name=name)
    if attr_name == "value_float":
        return ir.tensor(np.array(attr.as_float(), np.float32), name=name)
    if attr_name == "value_floats":
        return ir.tensor(np.array(attr.as_floats(), np.float32), name=name)
    return None  # strings, sparse tensors: left as nodes


def infer_shapes(model: ir.Model) -> bool:
    """Recomputes every intermediate shape of the main graph; on failure keeps the old ones."""
    saved: dict[ir.Value, ir.Shape | None] = {}
    for node in model.graph:
        for value in node.outputs:
            if not value.is_graph_output():
                saved[value] = value.shape
                value.shape = None
    declared = {value: value.shape for value in [*model.graph.inputs, *model.graph.outputs]}
    for value in model.graph.inputs:  # dims written as -1 confuse data propagation: make them symbols
        shape = value.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
            value.shape = ir.Shape([f"_dyn{i}_{value.name}" if isinstance(d, int) and d < 0 else d
                                    for i, d in enumerate(shape)])
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        for _ in range(8):  # onnx leaves a Reshape to a run-time shape without even a rank, a Scaler shapeless
            if not (_fill_reshapes(model) | _fill_ml_ops(model)):
                break
            ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    finally:
        for value, shape in declared.items():
            value.shape = shape
    if all(value.shape is None for value in saved):
        for value, shape in saved.items():
            value.shape = shape
        return False
    return True


def _fill_ml_ops(model: ir.Model) -> bool:
    """Gives the outputs of the ops skl2onnx writes that onnx leaves shapeless (``mcomp.ml_ops``) their shape."""
    from mcomp import ml_ops

    filled = False
    for node in model.graph:
        source = node.inputs[0] if node.inputs else None
        if node.outputs[0].shape is not None or source is None or source.shape is None or source.dtype is None:
            continue
        typed = ml_ops.typed_output(node.domain, node.op_type, source.dtype.value, list(source.shape))
        if typed is not None:
            node.outputs[0].dtype, node.outputs[0].shape = ir.DataType(typed[0]), ir.Shape(typed[1])
            filled = True
    return filled


def _fill_reshapes(model: ir.Model) -> bool:
    """Gives Reshape outputs that inference left shapeless the dims their target shows."""
    from mcomp.passes.prune.structured.layout import shape_entries

    filled = False
    for node in model.graph:
        if node.op_type != "Reshape" or node.outputs[0].shape is not None or len(node.inputs) < 2:
            continue
        entries = shape_entries(node.inputs[1], node.inputs[0], (node, 1))
        data_shape = node.inputs[0].shape
        if entries is None:
            continue
        dims = []
        for i, (kind, v, _) in enumerate(entries):
            if kind == "copy" and data_shape is not None and v < len(data_shape):
                dims.append(data_shape[v])
            elif kind == "const" and v > 0:
                dims.append(v)
            elif kind == "const" and v == 0 and not attr(node, "allowzero", 0) and data_shape is not None:
                dims.append(data_shape[i])
            else:
                dims.append(None)
        node.outputs[0].shape = ir.Shape(dims)
        filled = True
    return filled


# --------------------------------------------------------------------------- small readers


def const(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant value (initializer), or None for a computed one."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return None if value.shape is None else len(value.shape)


def same_dim(a: ir.Value, axis_a: int, b: ir.Value, axis_b: int) -> bool:
    """Whether two tensors have the same symbolic size on these axes (shape inference gave both
    the same name), so they are equal at run time although neither is known."""
    shapes = [v.shape for v in (a, b)]
    if any(s is None for s in shapes) or not (axis_a < len(shapes[0]) and axis_b < len(shapes[1])):
        return False
    da, db = shapes[0][axis_a], shapes[1][axis_b]
    return isinstance(da, ir.SymbolicDim) and da.value is not None and da == db


def dim(value: ir.Value | None, axis: int) -> int | None:
    """A static dim, or None when unknown or symbolic."""
    if value is None:
        return None
    shape = value.const_value.shape if value.const_value is not None else value.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return d if isinstance(d, int) and d >= 0 else None


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def ints_input(node: ir.Node, index: int, attr_name: str | None = None) -> list[int] | None:
    """Integer list from input ``index`` (opset ≥ 10–13 style) or from attribute ``attr_name``."""
    if index < len(node.inputs) and node.inputs[index] is not None:
        arr = const(node.inputs[index])
        return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]
    if attr_name is not None and attr_name in node.attributes:
        return [int(x) for x in attr(node, attr_name)]
    return None
