"""Which outputs are class scores, read from the graph: a linear head's raw logits (and, for
distillation's losses, which outputs a Softmax or a Sigmoid makes).

The report gives top-1 agreement where an output is class scores. From the values alone that is
safe only for ``[N, C]`` outputs and for (log-)softmax over the last axis: raw logits of rank 3
look like any feature map (a conv's ``[N, C, H, W]`` has a last axis too, and top-1 over it means
nothing). Yet raw logits are what many real models emit:

- a CTC text recognizer's ``[T, N, classes]`` (ddddocr's ``common.onnx``: Gemm → Reshape; its
  int8 copy kept cosine 0.988 while 2 % of the strings it read changed);
- a language model's ``[N, T, vocab]`` (a MatMul on the tied embedding table's transpose).

The graph says which: the output comes from a MatMul or Gemm on a constant weight, through ops
that keep its last axis (a bias Add, a scale, Reshape, Transpose, Squeeze, Cast). The head's
out-features are returned, and the caller checks them against the output's last axis as it ran.
"""

from __future__ import annotations

import onnx_ir as ir

# ops an output may pass through after its head and still hold the head's classes on its last axis
# (Reshape and Transpose may move them: the caller compares the last axis with the head's width)
_CARRY = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Dropout"}
_SCALE = {"Add", "Sub", "Mul", "Div"}  # a bias or a scale: one input computed, the other constant
_WEIGHT_FORMS = {"Transpose", "Cast", "DequantizeLinear", "Identity"}  # a tied head's Wᵀ, a QDQ weight
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_DEPTH = 8  # ops walked back from an output: a head is near the end or it is not a head


def linear_heads(model: ir.Model) -> dict[str, int]:
    """Output name → out-features of the linear head that computes it, for outputs that come from one."""
    found = {}
    for output in model.graph.outputs:
        width = _head_width(output)
        if width is not None and width >= 2:
            found[output.name] = width
    return found


def softmax_outputs(model: ir.Model) -> set[str]:
    """Outputs made by a Softmax or LogSoftmax over the last axis."""
    out = set()
    for v in model.graph.outputs:
        node = v.producer()
        if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.attributes.get_int("axis", -1) in (
                -1, len(v.shape or ()) - 1):
            out.add(v.name)
    return out


def sigmoid_outputs(model: ir.Model) -> set[str]:
    """Outputs a Sigmoid makes, directly or through ops that keep its values (``_CARRY``, and the Q/DQ
    pair after it in a QDQ model): every element a probability of its own."""
    out = set()
    for v in model.graph.outputs:
        node = v.producer()
        while node is not None and node.op_type in _CARRY | _QDQ and node.inputs and node.inputs[0] is not None:
            node = node.inputs[0].producer()
        if node is not None and node.op_type == "Sigmoid":
            out.add(v.name)
    return out


def _head_width(value: ir.Value) -> int | None:
    for _ in range(_DEPTH):
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx", "com.microsoft"):
            return None
        if node.op_type in ("MatMul", "Gemm"):
            return _width(node)
        if node.op_type == "MatMulNBits":
            return node.attributes.get_int("N", 0) or None
        if node.op_type in _CARRY and node.inputs and node.inputs[0] is not None:
            value = node.inputs[0]
        elif node.op_type in _SCALE and len(node.inputs) == 2:
            computed = [v for v in node.inputs if v is not None and _constant(v) is None]
            if len(computed) != 1:
                return None
            value = computed[0]
        else:
            return None
    return None


def _width(node: ir.Node) -> int | None:
    """The out-features of a MatMul/Gemm whose weight (input B) is a 2-D constant."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    shape = _constant(node.inputs[1])
    if shape is None or len(shape) != 2:
        return None
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    return int(shape[0] if transposed else shape[1])


def _constant(value: ir.Value, depth: int = 3) -> tuple[int, ...] | None:
    """The shape of ``value`` where it is a constant (an initializer, a Constant node, or one seen
    through a Transpose, Cast or DequantizeLinear), else None."""
    if value.const_value is not None:
        return tuple(value.const_value.shape)
    node = value.producer()
    if node is None or depth == 0:
        return None
    if node.op_type == "Constant":
        attr = node.attributes.get("value")
        return tuple(attr.value.shape) if attr is not None and hasattr(attr.value, "shape") else None
    if node.op_type in _WEIGHT_FORMS and node.inputs and node.inputs[0] is not None:
        inner = _constant(node.inputs[0], depth - 1)
        if inner is None or node.op_type != "Transpose":
            return inner
        perm = node.attributes.get_ints("perm", None)
        return tuple(inner[i] for i in perm) if perm else tuple(reversed(inner))
    return None
