"""External data (tensors stored in files beside the .onnx): checking what a model points at,
keeping big weights memory-mapped rather than read, and inlining them where a self-contained
protobuf is needed (design §2, §8). ``mcomp.model`` loads and saves through here."""

from __future__ import annotations

import contextlib
import math
import mmap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from mcomp.errors import BadInput, short
from mcomp.graph import all_graphs

# From this many bytes of external data a loaded model's tensors stay memory-mapped (see map_or_read).
MAPPED_FROM = 256 << 20


def check_files(proto: onnx.ModelProto, path: Path) -> set[Path]:
    """The external data files the model reads (checked), none when its tensors are all inline."""
    try:
        return _check_external_files(proto, path)
    except (TypeError, UnicodeDecodeError):  # a key or location that is not UTF-8 (see _validate)
        raise BadInput(f"{path}: not a valid ONNX model (an external data key or location is not UTF-8 text)") from None


def _check_external_files(proto: onnx.ModelProto, path: Path) -> set[Path]:
    """Each external tensor's file exists beside the model and holds the bytes it points at: a
    tensor whose offset or length runs past the end of its file would otherwise fail deep inside
    the memory-mapping with an error that names neither the tensor nor the file."""
    files: set[Path] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            try:
                with warnings.catch_warnings():  # unknown keys are ignored, not printed
                    warnings.simplefilter("ignore")
                    info = onnx.external_data_helper.ExternalDataInfo(tensor)
            except ValueError as exc:  # a negative or non-integer offset or length
                raise BadInput(f"{path}: initializer {tensor.name!r}: bad external data entry ({short(exc, 120)})") from None
            data_path = path.parent / info.location
            if not data_path.is_file():
                raise BadInput(f"{path}: external data file {info.location!r} not found beside the model")
            files.add(data_path.resolve())
            needed = _tensor_bytes(tensor)
            length = info.length if info.length is not None else needed
            offset, size = info.offset or 0, data_path.stat().st_size
            if needed is not None and length < needed:
                raise BadInput(f"{path}: initializer {tensor.name!r} needs {needed:,} bytes but its external data "
                               f"entry in {info.location!r} gives length {length:,}")
            if length is not None and offset + length > size:
                raise BadInput(f"{path}: initializer {tensor.name!r} reads bytes {offset:,}–{offset + length:,} of "
                               f"{info.location!r}, which holds {size:,} bytes (offset past the end of the file)")
    return files


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes a tensor's dims and element type take; None where that is not fixed (strings)."""
    try:
        itemsize = ir.DataType(tensor.data_type).itemsize
    except (ValueError, TypeError, NotImplementedError):
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    return math.ceil(count * itemsize) if itemsize else None



def map_or_read(model: ir.Model, base_dir: Path) -> None:
    """External-data tensors resolve their files relative to the model's folder. Below
    ``MAPPED_FROM`` bytes they are read into memory, so that any serialization of the model is
    self-contained. From it up they stay memory-mapped (read-only pages of the file, shared with
    the page cache): reading them in would hold a second copy of every weight for the whole run
    (design §8). Their locations are then made absolute (``check_files`` found them beside
    the model), so that a copy through protobuf still finds them; sessions are made from
    a file written beside its data (``mcomp.sources.runnable``), and ``to_proto`` inlines them."""
    ir.external_data.set_base_dir(model.graph, str(base_dir))
    external = sum(v.const_value.nbytes for v in external_tensors(model))
    if 0 < external < MAPPED_FROM:
        ir.external_data.load_to_model(model)
        return
    folder = base_dir.resolve()
    for value in external_tensors(model):
        tensor = value.const_value
        value.const_value = ir.ExternalTensor(
            str(folder / tensor.location), tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape,
            name=tensor.name, doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props))


def external_tensors(model: ir.Model) -> list[ir.Value]:
    """The initializers whose data is still in an external file (memory-mapped, not copied)."""
    return [v for g in all_graphs(model.graph) for v in g.initializers.values()
            if isinstance(v.const_value, ir.ExternalTensor)]


def mapped_in_memory(tensor: ir.ExternalTensor, doc_string: bool = False) -> ir.TensorProtocol:
    """``tensor`` as an in-memory tensor viewing its file's mapping, whose pages outlive the file's removal
    (a temp folder's). Sub-byte types stay packed: onnx_ir's ``numpy()`` unpacks int4 into a copy of one
    byte a value, which held a 0.75 GiB LLM-shaped model's int4 table twice over in memory."""
    keep = {"name": tensor.name, **({"doc_string": tensor.doc_string} if doc_string else {})}
    if tensor.dtype.bitwidth >= 8:
        return ir.Tensor(tensor.numpy(), dtype=tensor.dtype, **keep)
    with open(tensor.path, "rb") as fh:
        raw = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    packed = np.frombuffer(raw, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset or 0)
    return ir.PackedTensor(packed, tensor.dtype, shape=tensor.shape, **keep)


def release_pages(model: ir.Model) -> None:
    """Unmaps from this process the pages of memory-mapped tensors read so far (``MADV_DONTNEED``;
    external tensors, and in-memory ones that view a mapping).
    They stay in the page cache, so reading them again costs no disk; but a pass over every
    weight (a write, a count) no longer leaves the whole model resident in this process on top of
    the sessions that map it."""
    for graph in all_graphs(model.graph):
        for value in graph.initializers.values():
            release_tensor(value.const_value)


def release_tensor(tensor) -> None:
    """``release_pages`` for one tensor (an ``ir`` tensor whose data is or views a mapping; others are left)."""
    _release(getattr(tensor, "raw", None))


def _release(data) -> None:
    """``MADV_DONTNEED`` on the mapping ``data`` is (an mmap) or views (an array), if any."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    while data is not None and not isinstance(data, mmap.mmap):
        data = getattr(data, "base", None)
    if data is not None:
        data.madvise(mmap.MADV_DONTNEED)


class _ReadOnce(ir.Tensor):
    """A view of a mapped tensor's pages that releases them once its bytes are taken: a serialization
    of a model then holds one weight's pages at a time beside the protobuf it builds, not all of them."""

    __slots__ = ()

    def tobytes(self) -> bytes:
        data = super().tobytes()
        _release(self.raw)
        return data


@contextlib.contextmanager
def inlined(model: ir.Model, keep: frozenset[str] = frozenset()):
    """Inside the block the external tensors read as in-memory ones (views of their mapped pages,
    no copy), so that a serialization writes their bytes instead of a reference to a file. The
    mapped pages are released on entry (``release_pages``), each tensor's once its bytes are taken
    (``_ReadOnce``), and all at exit: the serialization holds the bytes, and the mapped ones stayed
    resident beside it for as long as the model lived. Initializers named in ``keep`` stay references."""
    swapped = [(v, v.const_value) for v in external_tensors(model) if v.name not in keep]
    if swapped:
        release_pages(model)  # what earlier reads left resident (a count over every weight)
    try:
        for value, tensor in swapped:
            value.const_value = _ReadOnce(tensor.numpy(), dtype=tensor.dtype, name=tensor.name,
                                          doc_string=tensor.doc_string)
        yield model
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
        if swapped:
            release_pages(model)


def copy_fields(source, dest, skip: set[str]) -> None:
    """Every set field of ``source`` but those in ``skip`` into ``dest`` (a message of the same type);
    a skipped field is never read (reading ``raw_data`` copies it)."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        if field.is_repeated:
            values = getattr(source, field.name)
            if len(values):
                getattr(dest, field.name).extend(values)
        elif source.HasField(field.name):
            if field.type == field.TYPE_MESSAGE:
                getattr(dest, field.name).CopyFrom(getattr(source, field.name))
            else:
                setattr(dest, field.name, getattr(source, field.name))
