"""Reshape targets computed from shapes at run time, made constant.

Exporters often build a Reshape's target as ``Concat(Slice(Shape(X), 0, 1), [-1], ...)``: the
graph reads a dimension back from a tensor to pass it on. Each element of such a target is
either a constant, a dimension of some tensor, or unknown; ``shape_elements`` tells which.
``MaterializeReshapeTarget`` then writes the target as a constant: a dimension that is static
becomes its value, a dimension of the Reshape's own input at the same position becomes ``0``
("copy", exact), and a single element still unknown becomes ``-1`` (inferred from the element
count). The last is exact whenever the tensor is not empty; for a tensor with a zero dimension
``-1`` cannot be inferred (onnxscript's ``materialize_reshape_shape_rule`` makes the same trade).
The dead ``Shape → … → Concat`` chain is then removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

_INT_TYPES = frozenset({ir.DataType.INT32, ir.DataType.INT64})
_MAX_DEPTH = 12  # nodes followed back from a Reshape target
_MAX_ELEMENTS = 64  # longer integer tensors are no shapes


@dataclass(frozen=True)
class Dim:
    """Dimension ``index`` of tensor ``value``, read at run time."""

    value: ir.Value
    index: int


Element = int | Dim | None  # a known integer, a dimension of a tensor, or unknown


def shape_elements(value: ir.Value | None, depth: int = 0) -> list[Element] | None:
    """The elements of a 0-D/1-D integer tensor built from shapes and constants; None if its length is unknown."""
    if value is None or depth > _MAX_DEPTH:
        return None
    if value.const_value is not None and not value.is_graph_input():
        array = value.const_value.numpy()
        if array.ndim > 1 or array.size > _MAX_ELEMENTS or array.dtype.kind not in "iu":
            return None
        return [int(v) for v in array.reshape(-1)]
    node = value.producer()
    handler = _HANDLERS.get(node.op_type) if node is not None and node.domain in ("", "ai.onnx") else None
    elements = handler(node, depth + 1) if handler is not None else None
    if elements is None and value.shape is not None and value.shape.is_static() and len(value.shape) <= 1:
        length = value.shape[0] if len(value.shape) == 1 else 1
        return [None] * length if length <= _MAX_ELEMENTS else None
    return elements


def _shape(node: ir.Node, depth: int) -> list[Element] | None:
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
    dims = list(range(len(x.shape)))[start:end]
    return [x.shape[i] if isinstance(x.shape[i], int) else Dim(x, i) for i in dims]


def _passthrough(node: ir.Node, depth: int) -> list[Element] | None:
    return shape_elements(node.inputs[0], depth)


def _cast(node: ir.Node, depth: int) -> list[Element] | None:
    if ir.DataType(node.attributes.get_int("to", 0)) not in _INT_TYPES:
        return None
    return shape_elements(node.inputs[0], depth)


def _one_element(node: ir.Node, depth: int) -> list[Element] | None:
    """Squeeze/Unsqueeze: the values stay as they are; only a single element is followed."""
    elements = shape_elements(node.inputs[0], depth)
    return elements if elements is not None and len(elements) == 1 else None


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]


def _slice(node: ir.Node, depth: int) -> list[Element] | None:
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    starts, ends = _constant_ints(inputs[1]), _constant_ints(inputs[2])
    axes = _constant_ints(inputs[3]) if inputs[3] is not None else [0]
    steps = _constant_ints(inputs[4]) if inputs[4] is not None else [1]
    if starts is None or ends is None or axes not in ([0], [-1]) or steps != [1] or len(starts) != 1:
        return None
    elements = shape_elements(inputs[0], depth)
    return None if elements is None else elements[starts[0]:ends[0]]  # ONNX clamps as Python does


def _gather(node: ir.Node, depth: int) -> list[Element] | None:
    indices = _constant_ints(node.inputs[1])
    elements = shape_elements(node.inputs[0], depth)
    if indices is None or elements is None or node.attributes.get_int("axis", 0) not in (0, -1):
        return None
    if any(not -len(elements) <= i < len(elements) for i in indices):
        return None
    return [elements[i] for i in indices]


def _concat(node: ir.Node, depth: int) -> list[Element] | None:
    if node.attributes.get_int("axis", 0) not in (0, -1):
        return None
    result: list[Element] = []
    for value in node.inputs:
        elements = shape_elements(value, depth)
        if elements is None:
            return None
        result += elements
    return result


_HANDLERS = {"Shape": _shape, "Identity": _passthrough, "Cast": _cast, "Squeeze": _one_element,
             "Unsqueeze": _one_element, "Slice": _slice, "Gather": _gather, "Concat": _concat}


def reshape_target(x: ir.Value, shape: ir.Value, allowzero: int) -> list[int] | str:
    """The constant that can replace ``shape`` as the target of ``Reshape(x, shape)``, or why there is none."""
    elements = shape_elements(shape)
    if elements is None:
        return "the target is not built from shapes and constants of known length"
    target: list[int | None] = [_resolve(e, x, position, allowzero) for position, e in enumerate(elements)]
    unknown = target.count(None)
    if unknown > 1:
        return f"{unknown} elements of the target are unknown"
    if unknown == 1:
        if -1 in target:
            return "one element is unknown and another is already -1"
        if allowzero and 0 in target:
            return "one element is unknown and another is a literal 0"
        target = [-1 if t is None else t for t in target]
    return target


def _resolve(element: Element, x: ir.Value, position: int, allowzero: int) -> int | None:
    if not isinstance(element, Dim):
        return element
    dim = element.value.shape[element.index]
    if isinstance(dim, int):
        return dim
    if allowzero:
        return None
    # With allowzero=0, 0 copies the input's dimension at the same position.
    if element.value is x and element.index == position:
        return 0
    if x.shape is not None and position < len(x.shape) and _same_named_dim(dim, x.shape[position]):
        return 0
    return None


def _same_named_dim(a, b) -> bool:
    return isinstance(a, ir.SymbolicDim) and isinstance(b, ir.SymbolicDim) and a.value is not None and a.value == b.value


class MaterializeReshapeTarget(RewriteRuleClassBase):
    """Replaces ``Reshape(X, Concat(Shape(...)-derived, constants))`` with ``Reshape(X, constant)``."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context, x, shape, out, **_):
        result = MatchResult()
        if shape.const_value is not None:
            return result.fail("the target is already a constant")
        target = reshape_target(x, shape, out.producer().attributes.get_int("allowzero", 0))
        return result.fail(target) if isinstance(target, str) else result

    def rewrite(self, op, x, shape, out, **_):
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        target = op.Constant(value=ir.tensor(np.array(reshape_target(x, shape, allowzero), dtype=np.int64)))
        return op.Reshape(x, target, allowzero=allowzero) if allowzero else op.Reshape(x, target)
