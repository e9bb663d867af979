"""The weight-only quantizer's source: the prepared graph with its MatMul weights in a file beside it.

onnxruntime's ``MatMulNBitsQuantizer`` reads a MatMul's B through ``onnx_ir`` (``ir.from_proto(b).numpy()``),
which memory-maps an external tensor's file instead of reading it. Given the prepared graph with every
weight inline, each quantizer run saved and parsed the whole model: on three 8192×8192 float layers
(0.75 GiB) one run held four copies of the weights (4 GB) and took ~15 s. Given the graph with those
weights in a file, the protobuf it parses holds the graph only, and one weight at a time is mapped.

Only the B of MatMul nodes goes to the file, and only where nothing else reads it: the quantizer's
other paths (Gather tables) read tensors through ``numpy_helper``, which refuses the absolute
locations ``load`` writes (dynamic's composer maps any tensor, so that scheme spills tables too, and
reads them back inline where onnxruntime's quantizer builds instead). What the quantizer leaves float keeps its reference; ``inline_rest``
reads those bytes back, so the quantizer's output is the same protobuf as from an inline source.

A big model's prepared graph never holds those weights inline (``serialize``): a weight the input
file holds unchanged is referred to in that file, any other is written to a file of the pass's own.
Serialized inline and then written out again, the 0.75 GiB model's weights were a protobuf copy on
top of the mapped ones (the pass's peak memory, 2.5× the model) and two more passes over its bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from mcomp.external_data import copy_fields, inlined, release_tensor
from mcomp.passes.quantize.weights_aside import data_bytes

# Weights from this size go to the data file; smaller ones stay inline (cheap either way).
MIN_BYTES = 1 << 20
_EXTERNAL_KEYS = ("location", "offset", "length")


def write(proto: onnx.ModelProto, path: Path) -> None:
    """``path`` (the graph) and ``path.data`` (the MatMul weights of ``MIN_BYTES`` or more), ``proto``
    unchanged: the weights are written one at a time, never copied into a second protobuf."""
    moved = _matmul_weights(proto)
    light = onnx.ModelProto()
    copy_fields(proto, light, skip={"graph"})
    copy_fields(proto.graph, light.graph, skip={"initializer"})
    data_name = path.name + ".data"
    with open(path.parent / data_name, "wb") as fh:
        for tensor in proto.graph.initializer:
            if tensor.name not in moved or not tensor.HasField("raw_data") or data_bytes(tensor) < MIN_BYTES:
                light.graph.initializer.add().CopyFrom(tensor)
                continue
            offset = fh.tell()
            fh.write(tensor.raw_data)
            external = light.graph.initializer.add()
            copy_fields(tensor, external, skip={"raw_data"})
            external.data_location = onnx.TensorProto.EXTERNAL
            for key, value in zip(_EXTERNAL_KEYS, (data_name, offset, fh.tell() - offset)):
                external.external_data.add(key=key, value=str(value))
    path.write_bytes(light.SerializeToString())


def serialize(model: ir.Model, data: Path, any_reader: bool = False) -> onnx.ModelProto:
    """``model`` as a protobuf in which each MatMul B of ``MIN_BYTES`` or more (read by nothing else)
    is a reference by absolute path: to the input's own file where the model maps it from there, else
    to ``data``, written here one weight at a time. Everything else is inline; ``model`` is unchanged.
    ``any_reader``: every float initializer of that size read in the top-level graph only (an embedding
    table, a tied head's Transpose), for a builder that does not need them inline (dynamic's composer)."""
    refs: dict[str, ir.ExternalTensor] = {}
    with open(data, "wb") as fh:
        for value in _ir_matmul_weights(model, any_reader):
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                refs[value.name] = _reference(tensor, Path(tensor.path).resolve(), tensor.offset or 0)
                continue
            offset = fh.tell()
            fh.write(memoryview(np.ascontiguousarray(tensor.numpy())).cast("B"))
            release_tensor(tensor)
            refs[value.name] = _reference(tensor, data.resolve(), offset)
    held = {name: model.graph.initializers[name].const_value for name in refs}
    try:
        for name, reference in refs.items():
            model.graph.initializers[name].const_value = reference
        with inlined(model, keep=frozenset(refs)):
            return ir.serde.serialize_model(model)
    finally:
        for name, tensor in held.items():
            model.graph.initializers[name].const_value = tensor


class Store:
    """New initializers a composer makes (int8, int4 weights): inline, or for a big model appended to ``spill``
    (a file in the pass's folder, emptied first) and referred to there by an absolute location, so that
    candidates refer to them rather than each holding them (``inline_from`` reads them back where a
    candidate's other weights are in another folder)."""

    def __init__(self, spill: Path | None = None):
        self.spill = spill
        if spill is not None:
            spill.write_bytes(b"")

    def __call__(self, array: np.ndarray, name: str, data_type: int | None = None,
                 dims: list[int] | None = None) -> onnx.TensorProto:
        """``array``'s bytes as initializer ``name``; ``data_type`` and ``dims`` where they are not ``array``'s
        (packed int4)."""
        if self.spill is None:
            if data_type is None:
                return onnx.numpy_helper.from_array(array, name)
            return onnx.helper.make_tensor(name, data_type, dims, array.tobytes(), raw=True)
        with open(self.spill, "ab") as fh:
            offset = fh.tell()
            fh.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        tensor = onnx.TensorProto(name=name, dims=array.shape if dims is None else dims,
                                  data_location=onnx.TensorProto.EXTERNAL,
                                  data_type=data_type or onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        for key, value in zip(_EXTERNAL_KEYS, (self.spill.resolve(), offset, array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        return tensor


def inline_from(proto: onnx.ModelProto, folder: Path) -> None:
    """Where ``proto`` refers to weights in more than one folder (onnxruntime reads one), those in ``folder``
    (the pass's own) read back inline; the others (a big input's float layers) stay where they are."""
    if len(reference_folders(proto)) < 2:
        return
    own = Path(folder).resolve()
    for tensor in proto.graph.initializer:
        if any(e.key == "location" and Path(e.value).parent == own for e in tensor.external_data):
            inline(tensor)


def _reference(tensor, path: Path, offset: int) -> ir.ExternalTensor:
    return ir.ExternalTensor(str(path), offset, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=tensor.name,
                             doc_string=tensor.doc_string)


def _ir_matmul_weights(model: ir.Model, any_reader: bool = False) -> list[ir.Value]:
    """Top-level float initializers of ``MIN_BYTES`` or more read only as a top-level MatMul's B (what
    ``_matmul_weights`` finds in a protobuf; a read inside a subgraph is a use too); with ``any_reader``,
    read only by top-level nodes."""
    outputs = {id(v) for v in model.graph.outputs}
    found = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if (tensor is None or tensor.nbytes < MIN_BYTES or id(value) in outputs
                or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)):
            continue
        uses = list(value.uses())
        if uses and all((any_reader or node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and index == 1)
                        and node.graph is model.graph for node, index in uses):
            found.append(value)
    return found


def load(path: Path) -> onnx.ModelProto:
    """The graph ``write`` wrote, its external locations made absolute (``onnx_ir`` then maps them
    wherever the quantizer runs)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    folder = path.parent.resolve()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(folder / entry.value)
    return proto


def reference_folders(proto: onnx.ModelProto) -> set[str]:
    """The folders of the files ``proto``'s external tensors refer to (absolute locations)."""
    return {str(Path(e.value).parent) for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


def as_source(proto: onnx.ModelProto) -> bytes:
    """``proto`` as onnxruntime takes it: its bytes, or where it still refers to weights in a file
    (a big model's candidate with layers left float) its bytes with those references made relative
    to their one folder, read from there (``sources.ModelBytes``): no copy of them."""
    from mcomp.sources import ModelBytes

    refs = [(e, e.value) for t in proto.graph.initializer for e in t.external_data if e.key == "location"]
    if not refs:
        return proto.SerializeToString()
    folders = reference_folders(proto)
    if len(folders) != 1:
        raise ValueError(f"the candidate's weights are in {len(folders)} folders; onnxruntime reads one")
    try:
        for entry, location in refs:
            entry.value = Path(location).name
        data = proto.SerializeToString()
    finally:
        for entry, location in refs:
            entry.value = location
    lengths = sum(int(e.value) for t in proto.graph.initializer for e in t.external_data if e.key == "length")
    return ModelBytes(data, folders.pop(), len(data) + lengths)


def inline_rest(proto: onnx.ModelProto) -> None:
    """Tensors still referencing the data file (layers the quantizer left float) read back inline."""
    for tensor in proto.graph.initializer:
        inline(tensor)


def inline(tensor: onnx.TensorProto) -> None:
    """``tensor``'s bytes read back from the file it references (an absolute location), if it references one."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return
    info = {e.key: e.value for e in tensor.external_data}
    with open(info["location"], "rb") as fh:
        fh.seek(int(info["offset"]))
        tensor.raw_data = fh.read(int(info["length"]))
    tensor.ClearField("external_data")
    tensor.ClearField("data_location")


def _matmul_weights(proto: onnx.ModelProto) -> set[str]:
    """Top-level initializers read only as a MatMul's B (by no other input, in no subgraph, not an output)."""
    as_b, other = set(), {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            (as_b if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and i == 1 else other).add(name)
        other.update(_subgraph_reads(node))
    return as_b - other


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    found: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                found.update(inner.input)
                found.update(_subgraph_reads(inner))
    return found
