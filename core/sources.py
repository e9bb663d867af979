"""What onnxruntime is given for a model: the bytes of a small one, a file beside its data for a big
or memory-mapped one.

onnxruntime copies a serialized model into its session; given a file whose weights sit in external
data beside it, it maps them instead. For a model of a few GB that is the difference between one
copy of the weights (in the page cache, shared) and three (the serialization, the session, its
prepacked operands), so every session of ``mcomp.evaluate`` is made through :func:`runnable`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from mcomp.external_data import external_tensors, mapped_in_memory, release_pages
from mcomp.graph import all_graphs
from mcomp.model import to_bytes

# onnxruntime's session option for where a serialized model's external data files are (a model given as
# bytes has no folder of its own).
DATA_FOLDER_OPTION = "session.model_external_initializers_file_folder_path"
# The most bytes of in-memory tensors a model run from its input's data folder may carry inline.
INLINE_LIMIT = 64 << 20

# From this many bytes of weights a model is run from a file (mapped by onnxruntime, not copied into a
# serialized protobuf and again into the session) and without prepacked weights, which would be one
# more full copy per session (MLAS's packed MatMul operands): measured on one 8192×8192 MatMul (256 MiB),
# a session held 2.2× the weights with prepacking, 1.2× without.
BIG_WEIGHTS = 256 << 20
# Op types (or parts of them) of kernels whose speed is their prepacked weights: without prepacking,
# onnxruntime's MatMulNBits dequantizes its whole weight at every run. A 2.5 GiB chain of 8192² layers
# quantized to int4 (0.36 GB) ran 2.5 s a run so, ×21 the float model, where the same file in a default
# session runs in 25 ms (×0.2): the figure and every decision on it (the slowdown bound returned the
# input) described a session no user runs. The int8 kernels too (QDQ pairs, which onnxruntime fuses
# into QLinear ops, the dynamic MatMulInteger): 4 int8 layers of 4096² ran 74 ms a run without
# prepacking, 24 ms with it. A model with one of these is measured with prepacking, as users run it.
PREPACKED_KERNELS = (b"MatMulNBits", b"QuantizeLinear", b"QLinear", b"MatMulInteger", b"ConvInteger")


class ModelBytes(bytes):
    """A serialized model whose external tensors are read by onnxruntime from their own files in
    ``folder`` (``DATA_FOLDER_OPTION``; see :func:`reads_data`), and the bytes of all its weights."""

    def __new__(cls, data: bytes, folder: str, weights: int):
        self = super().__new__(cls, data)
        self.folder, self.weights = folder, weights
        return self


def reads_data(options, source) -> None:
    """Points the session ``options`` at the data folder of a ``ModelBytes`` source (others need nothing)."""
    if isinstance(source, ModelBytes):
        options.add_session_config_entry(DATA_FOLDER_OPTION, source.folder)


def weight_bytes(model: ir.Model | bytes | str | Path) -> int:
    """Bytes of the stored tensors: of the initializers (``ir.Model``), of the serialized model
    (bytes), of a file and the external data it names (a path; the graph is read without the data)."""
    if isinstance(model, ModelBytes):
        return model.weights
    if isinstance(model, ir.Model):
        return sum(v.const_value.nbytes for g in all_graphs(model.graph) for v in g.initializers.values()
                   if v.const_value is not None)
    if isinstance(model, bytes):
        return len(model)
    size = os.path.getsize(model)
    if size >= BIG_WEIGHTS:  # big already: parsing a file of inline weights again per session costs a load
        return size
    proto = onnx.load_model(str(model), load_external_data=False)
    external = sum(int(e.value) for t in onnx.external_data_helper._get_all_tensors(proto)
                   for e in t.external_data if e.key == "length")
    return size + external


def needs_prepacking(model: ir.Model | bytes | str | Path) -> bool:
    """Whether ``model`` has a node of ``PREPACKED_KERNELS`` (int4, int8): read from its nodes (``ir.Model``), else
    found in its serialized bytes or file, where an op type is stored as plain text (a search at
    memory speed, not a parse of a big protobuf; a weight that happened to hold those bytes would only
    turn prepacking on)."""
    if isinstance(model, ir.Model):
        kinds = [k.decode() for k in PREPACKED_KERNELS]
        return any(kind in node.op_type for g in all_graphs(model.graph) for node in g for kind in kinds)
    if isinstance(model, bytes):
        return any(kind in model for kind in PREPACKED_KERNELS)
    with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(kind) >= 0 for kind in PREPACKED_KERNELS)


@contextlib.contextmanager
def runnable(model: ir.Model | bytes | str | Path, *, spill: bool = False):
    """What onnxruntime is given for ``model``: a path or bytes as they are; an ``ir.Model`` as bytes
    when it is small and self-contained, else as a file in a temp folder with its data beside it,
    written once (memory-mapped tensors streamed from their file) for every session made of it
    inside the block. onnxruntime maps such a file rather than copying it, so a big model's weights
    are held once, in the page cache, not once per serialization and once per session.

    ``spill``: the model's big in-memory tensors (a pass's results) are then swapped for mappings of
    the file just written, the same bytes, so the arrays are freed rather than held beside the
    sessions' mappings; from ``INLINE_LIMIT`` of weights, not only for a big model: a 0.75 GiB model's
    int8 result (0.19 GiB) was held as arrays and as bytes beside the input's session, 1.73× the
    model at peak. Only for a model no pass will change in place again (mapped arrays are read-only):
    the pipeline's final measurement."""
    if not isinstance(model, ir.Model):
        yield str(model) if isinstance(model, Path) else model
        return
    ready = unwritten(model, spill=spill)
    if ready is not None:
        yield ready
        return
    with tempfile.TemporaryDirectory(prefix="mcomp-run-") as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        if spill:
            spill_to(model, path)
        release_pages(model)
        yield str(path)


def unwritten(model: ir.Model, *, spill: bool = False) -> bytes | None:
    """``runnable``'s answer where no file need be written: a small self-contained model's bytes, or
    ``in_their_folder``'s; None where it writes one."""
    if not external_tensors(model) and weight_bytes(model) < (INLINE_LIMIT if spill else BIG_WEIGHTS):
        return to_bytes(model)
    return in_their_folder(model)


def kept_source(model: ir.Model, folder: Path) -> bytes | str:
    """``runnable``'s choice for a model run many times over a longer span (a pass's reference): the
    bytes of a small self-contained one, else the path of a file written once in ``folder`` (which
    the caller keeps) with its data beside it. A big model's serialization held a second copy of
    every weight for the whole span, and each session of it a third."""
    if not external_tensors(model) and weight_bytes(model) < BIG_WEIGHTS:
        return to_bytes(model)
    path = Path(folder) / "reference.onnx"
    ir.save(model, path, external_data=path.name + ".data")
    release_pages(model)
    return str(path)


def in_their_folder(model: ir.Model) -> ModelBytes | None:
    """``model`` serialized with its external tensors left in their files, when those are all in one
    folder and what it holds in memory is small (``INLINE_LIMIT``): onnxruntime then maps the weights
    from where they are (a pass that changed only the graph, as ``optimize`` does, shares the input's
    tensors), where written beside it each session's file was one more copy of every weight (0.4 s for
    0.75 GiB, 1.2 s for 2.5 GiB, four times in an ``optimize``). None when that does not hold.
    A symbolic or hard link to the input's data would do the same, but onnxruntime refuses a link
    that leaves the model's folder, and onnx's loader refuses a data file with two links."""
    external = external_tensors(model)
    folders = {os.path.dirname(_file_of(v.const_value)) for v in external}
    if len(folders) != 1:
        return None
    held = sum(v.const_value.nbytes for g in all_graphs(model.graph) for v in g.initializers.values()
               if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor))
    if held > INLINE_LIMIT:
        return None
    folder = folders.pop()
    swapped = [(v, v.const_value) for v in external]
    try:
        for value, tensor in swapped:
            value.const_value = ir.ExternalTensor(
                os.path.basename(_file_of(tensor)), tensor.offset, tensor.length, tensor.dtype,
                shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props), base_dir=folder)
        data = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    return ModelBytes(data, folder, held + sum(t.nbytes for _, t in swapped))


def _file_of(tensor: ir.ExternalTensor) -> str:
    return os.path.join(tensor.base_dir or "", tensor.location)


def spill_to(model: ir.Model, path: Path) -> None:
    """Swaps ``model``'s in-memory initializers of 1 MiB or more for the mapped tensors of ``path``
    (written from it just before). Mapped here, their pages outlive the temp folder's removal."""
    written = {v.name: v.const_value for v in external_tensors(ir.load(path))}
    for value in model.graph.initializers.values():
        tensor, mapped = value.const_value, written.get(value.name)
        # in memory: an array, or a deserialized protobuf's bytes (a quantizer's output)
        in_memory = tensor is not None and not isinstance(tensor, ir.ExternalTensor)
        if in_memory and tensor.nbytes >= (1 << 20) and mapped is not None:
            value.const_value = mapped_in_memory(mapped, doc_string=True)


__all__ = ["BIG_WEIGHTS", "ModelBytes", "in_their_folder", "kept_source", "reads_data", "runnable", "spill_to",
           "unwritten", "weight_bytes"]
