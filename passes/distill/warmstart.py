"""``init_from_teacher``: a smaller student starts from the teacher's weights where layer shapes match.

A student that came out of mcomp prune already holds the teacher's surviving weights; this
is for students built apart (fewer layers, or another export of the same design). Weights
are matched first by name and shape, then, for the rest, in the order the graph uses
them, each student weight taking the next unused teacher weight of the same shape.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def _weights(model: ir.Model) -> list[ir.Value]:
    """Float initializers with more than one element, in the order the nodes use them."""
    graph, seen, out = model.graph, set(), []
    for node in graph:
        for v in node.inputs:
            if v is None or v.name not in graph.initializers or v.name in seen:
                continue
            t = v.const_value
            if t is not None and t.dtype in _FLOATS and int(np.prod(t.shape.numpy())) > 1:
                seen.add(v.name)
                out.append(v)
    return out


def _shape(v: ir.Value) -> tuple[int, ...]:
    return tuple(v.const_value.shape.numpy())


def copy_matching(student: ir.Model, teacher: ir.Model) -> dict:
    """Copies teacher weights into same-shaped student weights, in place; says what it did."""
    s_weights, t_weights = _weights(student), _weights(teacher)
    t_by_name = {v.name: v for v in t_weights}
    pairs: dict[str, ir.Value] = {}
    for v in s_weights:
        t = t_by_name.get(v.name)
        if t is not None and _shape(t) == _shape(v):
            pairs[v.name] = t
    used = {id(t) for t in pairs.values()}
    cursor = 0
    for v in s_weights:
        if v.name in pairs:
            continue
        for k in range(cursor, len(t_weights)):
            t = t_weights[k]
            if id(t) not in used and _shape(t) == _shape(v):
                pairs[v.name], cursor = t, k + 1
                used.add(id(t))
                break
    for v in s_weights:
        t = pairs.get(v.name)
        if t is not None:
            old = v.const_value
            v.const_value = ir.Tensor(t.const_value.numpy().astype(old.numpy().dtype), dtype=old.dtype, name=old.name)
    return {"copied": len(pairs), "student_weights": len(s_weights),
            "pairs": {s: t.name for s, t in pairs.items()},
            "not_matched": [v.name for v in s_weights if v.name not in pairs]}
