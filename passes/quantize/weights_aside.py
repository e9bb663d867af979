"""onnx's shape inference without the weights: it reads only their type and dims.

``onnx.shape_inference.infer_shapes`` serializes the model, parses it in C++, serializes the
result and parses it back: on a 0.75 GiB model that held six copies of the weights (4.8 GB) and
took ~10 s. It is given a copy without the big float initializers' data (``without_weights``),
and what it inferred is then copied into the model, which keeps its initializers
(``inferred_into``): shape inference reads tensors' values only where they are shapes (int64),
which stay. Clearing and setting ``raw_data`` in place would not do: protobuf (upb) frees a
message's strings only with the whole message, so every byte moved would be held twice.
"""

from __future__ import annotations

import onnx

from mcomp.external_data import copy_fields

# Float initializers from this size are left out (shapes and small constants stay in the graph).
MIN_BYTES = 1 << 20
FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.DOUBLE})


def data_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's data from its dims and type: ``ByteSize`` would serialize it, and
    reading ``raw_data`` copies it."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):  # an undefined element type: not a weight to move
        return 0
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize


def _big(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in FLOATS and tensor.HasField("raw_data") and data_bytes(tensor) >= MIN_BYTES


def without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose big float top-level initializers keep name, type and dims but no
    data; ``proto`` is unchanged and those bytes are never read."""
    light = onnx.ModelProto()
    copy_fields(proto, light, skip={"graph"})
    copy_fields(proto.graph, light.graph, skip={"initializer"})
    for tensor in proto.graph.initializer:
        if _big(tensor):
            copy_fields(tensor, light.graph.initializer.add(), skip={"raw_data"})
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    return light


def inferred_into(proto: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` made what shape inference of it gave (``inferred``, from ``without_weights(proto)``):
    every field but the top-level initializers, which inference does not change; returns ``proto``."""
    for message, source, skip in ((proto, inferred, {"graph"}), (proto.graph, inferred.graph, {"initializer"})):
        for field in message.DESCRIPTOR.fields:
            if field.name not in skip:
                message.ClearField(field.name)
        copy_fields(source, message, skip)
    return proto
