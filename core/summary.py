"""What is inside a model (``mcomp inspect``, and the model entries of the report): signature,
opsets, ops, parameters, non-zeros, bytes by dtype, MACs. Built on ``mcomp.graph``.

Parameters are the element counts of the initializers (in every graph, subgraphs included)
and of floating-point ``Constant`` nodes, where some exporters keep every weight; integer
Constant nodes (shapes, axes) are counted apart as ``constant_elements``.
MACs: see ``mcomp.graph.macs``; a count that misses nodes says which and why. They are counted at
the shapes ``mcomp.shapes`` resolves (given dims, else the model's own, else assumed and said so),
the same shapes synthetic data and latency use, so the MACs and the latency in one table agree.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp import shapes
from mcomp.external_data import release_tensor
from mcomp.graph import macs, node_count, op_histogram, weight_tensors
from mcomp.model import onnx_opset
from mcomp.session import input_specs, output_specs


@dataclass
class TensorCounts:
    parameters: int = 0
    nonzero: int = 0
    bytes: int = 0


def tensor_counts(model: ir.Model, nonzero: bool = False) -> tuple[TensorCounts, dict[str, int], int]:
    """Totals over the parameters, bytes by dtype, and elements of non-float constants.

    Parameters are the initializers plus the floating-point tensors of Constant nodes;
    integer/boolean Constant nodes (shapes, axes, indices) are counted apart. The nonzero count
    (``nonzero``) reads every weight, the rest only shapes: a 0.75 GiB model's count took ~1 s and
    left its mapped pages resident, so it is made only where the sparsity is reported, and each
    weight's mapped pages are released once counted.
    """
    totals = TensorCounts()
    by_dtype: dict[str, int] = collections.Counter()
    other_constants = 0
    packed = _packed_weights(model)
    for tensor, is_initializer in weight_tensors(model):
        size = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
        if not is_initializer and not tensor.dtype.is_floating_point():
            other_constants += size
            continue
        layout = packed.get(id(tensor))
        totals.parameters += size if layout is None else layout[0] * layout[1]
        totals.bytes += tensor.nbytes
        by_dtype[tensor.dtype.name.lower()] += tensor.nbytes
        if nonzero:
            totals.nonzero += _nonzero(tensor) if layout is None else _nonzero_packed(tensor, *layout)
            release_tensor(tensor)
    return totals, dict(by_dtype), other_constants


def _packed_weights(model: ir.Model) -> dict[int, tuple[int, int, int, bool]]:
    """MatMulNBits' weights (``B``, bytes of packed values [N, K blocks, block bytes]) → (K, N, bits, with zero
    points): counted as the K×N values they hold, not as their bytes (an int4 model read half the input's
    parameters, and its non-zero bytes as non-zero values)."""
    found = {}
    for node in model.graph:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and len(node.inputs) > 1:
            weight = node.inputs[1]
            attrs = {name: node.attributes[name].value for name in ("K", "N", "bits") if name in node.attributes}
            if weight is not None and weight.const_value is not None and {"K", "N"} <= set(attrs):
                zero_points = len(node.inputs) > 3 and node.inputs[3] is not None
                found[id(weight.const_value)] = (attrs["K"], attrs["N"], attrs.get("bits", 4), zero_points)
    return found


def _nonzero_packed(tensor, k: int, n: int, bits: int, zero_points: bool) -> int:
    """Values of a MatMulNBits weight that are not its zero point (``2^(bits-1)`` where it has no zero-point
    input; with one, per block, every value is counted), the rows past K (a last block's padding) left out."""
    if zero_points or bits not in (4, 8):
        return k * n
    data = tensor.numpy().reshape(n, -1)
    zero = 1 << (bits - 1)
    count = 0
    for start in range(0, n, 256):  # a slice of columns at a time: the unpacked values are 2× the bytes
        rows = data[start:start + 256]
        if bits == 4:
            rows = np.stack([rows & 0xF, rows >> 4], axis=-1).reshape(len(rows), -1)
        count += int(np.count_nonzero(rows[:, :k] != zero))
    return count


def _nonzero(tensor) -> int:
    try:
        return int(np.count_nonzero(tensor.numpy()))
    except (TypeError, ValueError, NotImplementedError):  # dtypes numpy cannot hold: count them all
        return int(np.prod(tensor.shape.numpy()))


def tensor_buffers(model: ir.Model) -> list:
    """The stored bytes of every weight tensor, as uint8 views of their arrays where they can be
    (memory-mapped external data is then read, never copied whole); packed sub-byte and string
    tensors as bytes."""
    buffers = []
    for tensor, _ in weight_tensors(model):
        try:
            if tensor.dtype.itemsize >= 1 and tensor.nbytes > (1 << 20):
                buffers.append(np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8))
                continue
        except (TypeError, ValueError, NotImplementedError):  # no numpy form: its bytes, below
            pass
        buffers.append(tensor.tobytes())
    return buffers


def nonzero_parameters(model: ir.Model) -> int:
    return tensor_counts(model, nonzero=True)[0].nonzero


def describe(model: ir.Model, *, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """The ``mcomp inspect`` record (also the model entries of the report). ``input_shapes`` may
    name some inputs or dims only; the rest are resolved as ``mcomp.shapes`` says."""
    counts, by_dtype, constants = tensor_counts(model, nonzero=True)
    resolved = shapes.resolve(model, given=input_shapes)
    mac_count = macs(model, shapes.concrete(resolved))
    return {
        "inputs": [s.describe() | {"dynamic_dims": s.dynamic_dims} for s in input_specs(model)],
        "outputs": [s.describe() | {"dynamic_dims": s.dynamic_dims} for s in output_specs(model)],
        "opset": onnx_opset(model),
        "opsets": {domain or "ai.onnx": v for domain, v in sorted(model.opset_imports.items())},
        "ir_version": model.ir_version,
        "producer": " ".join(filter(None, [model.producer_name, model.producer_version])) or None,
        "nodes": node_count(model),
        "ops": op_histogram(model),
        "parameters": counts.parameters,
        "nonzero_parameters": counts.nonzero,
        "sparsity": round(1 - counts.nonzero / counts.parameters, 6) if counts.parameters else 0.0,
        "parameter_bytes": counts.bytes,
        "bytes_by_dtype": by_dtype,
        "constant_elements": constants,
        "macs": mac_count.total,
        "macs_unknown_nodes": mac_count.unknown,
        "macs_unknown_reason": mac_count.reason,
        "macs_in_loop_bodies": mac_count.in_loop_bodies,
        "macs_input_shapes": {k: list(v) for k, v in shapes.concrete(resolved).items()},
        "input_shapes": shapes.describe(resolved),
    }
