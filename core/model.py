"""Model I/O at the edges: ONNX files (or stdin), PyTorch checkpoints, and atomic saving.

In memory a model is an ``onnx_ir.Model`` (design §2). Loading validates enough that a
bad file fails here, with one line, instead of deep inside a pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from mcomp import atomic
from mcomp import external_data as ext
from mcomp.errors import BadInput, short
from mcomp.graph import copy, proto_nodes  # copy: re-exported for the callers of model.copy

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1  # a ModelProto larger than this cannot be serialized in one piece
# Above this many bytes of tensors a model is saved with external data (room left for the graph).
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - (64 << 20)
# Domains whose ops are not in onnx.defs but that onnxruntime implements.
RUNTIME_DOMAINS = frozenset({"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "ai.onnx.contrib"})


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from, for the report."""

    path: str  # "-" for stdin
    sha256: str  # of the .onnx file (or the bytes read); its external data is counted in ``bytes``
    bytes: int  # the .onnx plus its external data files: the model's size on disk
    kind: str  # "onnx" or "torch"
    external_data: bool = False  # the model came with external data, so its outputs keep theirs


@dataclass
class LoadedModel:
    model: ir.Model
    source: ModelSource


@dataclass(frozen=True)
class LoadOptions:
    """How to read a PyTorch checkpoint (ignored for ONNX files)."""

    arch: str | None = None
    trust_checkpoint: bool = False
    input_shapes: dict[str, tuple[int, ...]] | None = None


def load(spec: str | Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Loads an ONNX model or a PyTorch checkpoint from a path, ``builtin:NAME``, or ONNX from stdin (``-``)."""
    if str(spec).startswith("builtin:"):
        from mcomp.embedded import builtin_path

        spec = builtin_path(str(spec)[len("builtin:"):])
    if str(spec) == "-":
        if sys.stdin.isatty():
            raise BadInput("-: stdin is a terminal; pipe a model in (mcomp … - < model.onnx) or give a path")
        data = sys.stdin.buffer.read()
        if not data:
            raise BadInput("stdin: empty input, expected an ONNX model")
        proto = _parse_onnx_bytes(data, "stdin")
        source = ModelSource("-", hashlib.sha256(data).hexdigest(), len(data), "onnx")
        return LoadedModel(_to_ir(proto, "stdin", base_dir=None), source)

    path = Path(spec)
    _check_readable_file(path)
    if path.suffix.lower() != ".onnx" and _is_torch_checkpoint(path):
        from mcomp import torch_io  # deferred: torch is imported only when a checkpoint is seen

        proto = torch_io.load_checkpoint(
            path, arch=options.arch, trust=options.trust_checkpoint, input_shapes=options.input_shapes
        )
        _validate(proto, str(path))
        return LoadedModel(_to_ir(proto, str(path), None), ModelSource(str(path), sha256_file(path), path.stat().st_size, "torch"))

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError ...
        raise BadInput(f"{path}: not a valid ONNX model ({short(exc, 160)})") from None
    data_files = ext.check_files(proto, path)
    _validate(proto, str(path), path)
    stored = path.stat().st_size + sum(f.stat().st_size for f in data_files)
    return LoadedModel(
        _to_ir(proto, str(path), base_dir=path.parent),
        ModelSource(str(path), sha256_file(path), stored, "onnx", external_data=bool(data_files)),
    )


def is_checkpoint(spec: str | Path) -> bool:
    """Whether ``spec`` names a PyTorch checkpoint file (what ``load`` exports rather than reads)."""
    text = str(spec)
    if text == "-" or text.startswith("builtin:") or text.lower().endswith(".onnx"):
        return False
    path = Path(text)
    return path.is_file() and _is_torch_checkpoint(path)


def _is_torch_checkpoint(path: Path) -> bool:
    from mcomp import torch_io

    return torch_io.is_torch_checkpoint(path)


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, expected a model file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: empty file, expected a model")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{path}: not readable (permission denied)")


def _parse_onnx_bytes(data: bytes, where: str) -> onnx.ModelProto:
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:
        raise BadInput(f"{where}: not a valid ONNX model ({short(exc, 160)})") from None
    _validate(proto, where)
    return proto


def _validate(proto: onnx.ModelProto, where: str, path: Path | None = None) -> None:
    """Rejects what protobuf happily parses but no runtime can use (random bytes often parse)."""
    try:
        _validate_parsed(proto, where, path)
    except (TypeError, UnicodeDecodeError):
        # python-protobuf hands back bytes for a name or key that is not UTF-8 (ONNX is proto2), and
        # onnx's helpers then fail with TypeError/UnicodeDecodeError (found by tests/fuzz)
        raise BadInput(f"{where}: not a valid ONNX model (a name, op type or key is not UTF-8 text)") from None


def _validate_parsed(proto: onnx.ModelProto, where: str, path: Path | None) -> None:
    graph = proto.graph
    if proto.ir_version < 3 or not proto.opset_import or not graph.output:
        raise BadInput(f"{where}: not a valid ONNX model (no graph, outputs or opset)")
    opset = onnx_opset(proto)
    if opset is not None and opset < MIN_OPSET:
        raise BadInput(f"{where}: opset {opset} is older than the oldest supported ({MIN_OPSET})")
    known_domains = {"", "ai.onnx", "ai.onnx.ml", *RUNTIME_DOMAINS, *(f.domain for f in proto.functions)}
    imported = {o.domain for o in proto.opset_import}
    for node in proto_nodes(graph):
        domain = node.domain or ""
        if domain not in known_domains:
            raise BadInput(f"{where}: node {node.name or node.op_type!r} uses op {node.op_type!r} from unknown domain {domain!r}")
        if domain not in imported and domain not in ("", "ai.onnx"):
            raise BadInput(f"{where}: domain {domain!r} of op {node.op_type!r} is not imported by the model")
        if domain in ("", "ai.onnx", "ai.onnx.ml") and not onnx.defs.has(node.op_type, domain if domain != "ai.onnx" else ""):
            raise BadInput(f"{where}: unknown op {node.op_type!r} in domain {domain or 'ai.onnx'!r}")
    _check_values(proto, where)
    try:
        if path is not None and _uses_external_data(proto):
            onnx.checker.check_model(str(path))  # resolves the data files beside the model
        elif proto.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise BadInput(f"{where}: invalid ONNX model ({short(exc, 160)})") from None


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(onnx.external_data_helper.uses_external_data(t)
               for t in onnx.external_data_helper._get_all_tensors(proto))


# Attributes whose values are sizes or steps: a negative (or, but for pads, zero) one is invalid, though
# onnx.checker passes it and only onnxruntime's session (never made by inspect) refuses it.
_POSITIVE_ATTRIBUTES = ("kernel_shape", "strides", "dilations")
_PADDED_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})


def _check_values(proto: onnx.ModelProto, where: str) -> None:
    """What onnx.checker lets through but no runtime accepts: a negative dim in the graph's
    declared shapes (-1, written by some exporters for a dynamic dim, is kept) and negative
    sizes, strides or pads in the attributes of convolutions and pools. Every command, inspect
    included, refuses these the same way (exit 2), rather than inspect describing a model that
    nothing can run."""
    graph = proto.graph
    for kind, values in (("input", graph.input), ("output", graph.output), ("value", graph.value_info)):
        for value in values:
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                continue
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value < -1:
                    raise BadInput(f"{where}: {kind} {value.name!r} has dim {dim.dim_value} at axis {axis}; a dim is "
                                   f"≥ 0, or a name (or -1) when dynamic")
    for node in proto_nodes(graph):
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        for attr in node.attribute:
            positive = attr.name in _POSITIVE_ATTRIBUTES
            padded = attr.name == "pads" and node.op_type in _PADDED_OPS
            if (positive or padded) and any(v < (1 if positive else 0) for v in attr.ints):
                need = "positive" if positive else "non-negative"
                raise BadInput(f"{where}: node {node.name or node.op_type!r} ({node.op_type}) has {attr.name} "
                               f"{list(attr.ints)}; its values must be {need}")
            if attr.name == "group" and node.op_type in _PADDED_OPS and attr.i < 1:
                raise BadInput(f"{where}: node {node.name or node.op_type!r} ({node.op_type}) has group {attr.i}; "
                               f"it must be at least 1")


def _map_typed(graph: onnx.GraphProto) -> str | None:
    """The first input, output or typed value of ``graph`` whose type is a map or holds one, named."""
    def holds_map(t: onnx.TypeProto) -> bool:
        kind = t.WhichOneof("value")
        if kind == "map_type":
            return True
        inner = {"sequence_type": "elem_type", "optional_type": "elem_type"}.get(kind)
        return inner is not None and holds_map(getattr(getattr(t, kind), inner))

    for kind, values in (("output", graph.output), ("input", graph.input), ("value", graph.value_info)):
        for value in values:
            if holds_map(value.type):
                return f"{kind} {value.name!r}"
    return None


def _to_ir(proto: onnx.ModelProto, where: str, base_dir: Path | None) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        mapped = _map_typed(proto.graph)
        if mapped is not None:  # onnx-ir has no map type: say which value, and how such a model is exported without
            raise BadInput(f"{where}: {mapped} holds maps (scikit-learn's ZipMap writes a sequence of them), "
                           "which mcomp cannot edit (onnx-ir has no map type); export the probabilities as a tensor "
                           "(skl2onnx: options={id(model): {'zipmap': False}})") from None
        raise BadInput(f"{where}: cannot read the graph ({short(exc, 160)})") from None
    if base_dir is not None:
        ext.map_or_read(model, base_dir)
    return model


def onnx_opset(model: onnx.ModelProto | ir.Model) -> int | None:
    """The default-domain opset version."""
    if isinstance(model, ir.Model):
        return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a self-contained protobuf: memory-mapped external data is written inline (a
    copy; for models under 2 GB — ``mcomp.evaluate`` makes sessions of big ones from files, and
    ``save`` streams them)."""
    with ext.inlined(model):
        return ir.serde.serialize_model(model)


def to_bytes(model: ir.Model) -> bytes:
    """The serialized model, self-contained (see ``to_proto``)."""
    return to_proto(model).SerializeToString()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model: ir.Model, dest: str | Path, *, protect: tuple[str | Path, ...] = (),
         external_data: bool = False, same_as: ModelSource | None = None) -> ModelSource:
    """Writes atomically (temp file + rename) to a path, or to stdout for ``-``.

    ``protect`` lists input paths that must never be overwritten. A model is written with its
    tensors in ``<name>.data`` beside it when asked (``external_data``: the input came that way,
    and a model that came with external data leaves with it) or when it must be (its tensors
    exceed the protobuf limit); memory-mapped tensors are streamed from their file, not copied
    into a protobuf first. The temp folder a killed earlier run left is removed first, and the
    output is locked for the rename (see ``Staged.commit``). The sha256 is of the .onnx renamed
    into place; ``bytes`` counts the .onnx and its data file.

    ``same_as``: the source ``model`` was loaded from, unchanged since. An ONNX file without external data
    is then written byte for byte: re-serialized, it carried the shapes mcomp inferred on it (magika, a
    prune that cut nothing: 36 ``value_info`` entries, 3,163,737 → 3,165,648 bytes under "kept unchanged").
    """
    if str(dest) == "-":
        original = _original_bytes(same_as)
        data = original if original is not None else to_bytes(model)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return ModelSource("-", hashlib.sha256(data).hexdigest(), len(data), "onnx")
    with staged(model, dest, protect=protect, external_data=external_data, same_as=same_as) as written:
        return written.commit()


@dataclass
class Staged:
    """A model written whole beside its output under a temp name, not yet in place: ``path`` is a
    file onnxruntime can run (its data beside it), so a caller that measures the model before deciding
    to keep it writes it once (a big model's result was written to a temp folder to be measured, then
    again as the output: 1.2–1.8 s of a 0.75 GiB prune's 10 s)."""

    dest: Path
    path: Path  # the temp .onnx
    source: ModelSource  # what ``commit`` returns: the output's path, the temp file's sha256 and bytes
    committed: bool = False

    def commit(self) -> ModelSource:
        """Renames the model (and its data) into place, holding the output's lock for the renames: taken
        here, not while the model was written or measured, so runs on one output still overlap."""
        path, tmp, data_name = self.dest, self.path.parent, self.dest.name + ".data"
        with contextlib.ExitStack() as own:
            atomic.lock_for_write(path, own)
            atomic.pause_before_rename(path)
            atomic.retire_companions(path)
            if (tmp / data_name).exists():  # no data file when every tensor is tiny, or written inline
                # Two renames, so the model they replace goes first: a run killed between them leaves the
                # new data with no model beside it, never the old .onnx reading the new data at its old offsets
                # (as its reports go before it: ``atomic.writes_together``)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.replace(tmp / data_name, path.parent / data_name)
            os.replace(self.path, path)
        self.committed = True
        return self.source


@contextlib.contextmanager
def staged(model: ir.Model, dest: str | Path, *, protect: tuple[str | Path, ...] = (),
           external_data: bool = False, same_as: ModelSource | None = None):
    """``save``'s write without its rename: yields a ``Staged`` whose ``commit()`` puts the model in
    place; its temp folder (named for this process, see ``atomic``) is removed when the block ends."""
    original = _original_bytes(same_as)
    path = Path(dest)
    check_writable(path, protect)
    proto = None if external_data or needs_external_data(model) else to_proto(model)
    atomic.remove_leftovers(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=atomic.temp_prefix(path),
                                     suffix=atomic.TEMP_SUFFIX) as tmp:
        tmp_model = Path(tmp) / path.name
        if proto is not None:
            with open(tmp_model, "wb") as fh:
                fh.write(original if original is not None else proto.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
        else:
            data_name = path.name + ".data"
            ir.save(model, tmp_model, external_data=data_name)
            ext.release_pages(model)
            _fsync(tmp_model, Path(tmp) / data_name)
        stored = sum(f.stat().st_size for f in Path(tmp).iterdir())
        yield Staged(path, tmp_model, ModelSource(str(path), sha256_file(tmp_model), stored, "onnx",
                                                  external_data=proto is None))


def _original_bytes(source: ModelSource | None) -> bytes | None:
    """The bytes of an ONNX source file without external data (``save``'s ``same_as``), or None."""
    if source is None or source.kind != "onnx" or source.external_data or source.path in ("", "-"):
        return None
    try:
        data = Path(source.path).read_bytes()
    except OSError:  # gone or unreadable since it was loaded: the model is serialized instead
        return None
    return data if hashlib.sha256(data).hexdigest() == source.sha256 else None


def _fsync(*paths: Path) -> None:
    """Flushes written files to disk before their rename, as the inline write does."""
    for path in paths:
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def check_writable(path: Path, protect: tuple[str | Path, ...] = ()) -> None:
    """Fails early, before any work, when the output cannot or must not be written."""
    for other in protect:
        if str(other) != "-" and Path(other).exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise BadInput(f"{path}: refusing to overwrite the input file {other}; choose another output path")
    parent = path.parent
    if path.is_dir():
        raise BadInput(f"{path}: is a directory; -o takes a file path")
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"{path}: output folder {str(parent)!r} is a file, not a folder")
    if not parent.is_dir():
        raise BadInput(f"{path}: output folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{path}: output folder {str(parent)!r} is not writable")
    # os.access says yes to root everywhere, and to anyone on /proc or a read-only mount: try it.
    try:
        fd, probe = atomic.mkstemp_beside(path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot write in output folder {str(parent)!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """For reports and other side files: the same temp-file-and-rename discipline as models
    (leftovers of killed runs removed first, the test pause before the rename)."""
    atomic.remove_leftovers(path)
    fd, tmp = atomic.mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; give what open() would, like the model
        atomic.pause_before_rename(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def needs_external_data(model: ir.Model) -> bool:
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total > EXTERNAL_DATA_THRESHOLD



def default_output(input_path: str, pass_name: str) -> Path:
    """``<stem>.<pass>.onnx`` beside the input, so Makefile pattern rules work."""
    if input_path == "-":
        raise BadInput("reading a model from stdin needs -o (a path, or - for stdout)")
    path = Path(input_path)
    return path.with_name(f"{path.stem}.{pass_name}.onnx")


__all__ = [
    "LoadOptions", "LoadedModel", "ModelSource", "load", "save", "to_bytes", "to_proto", "copy",
    "onnx_opset", "default_output", "check_writable", "write_bytes_atomic", "sha256_file",
]
