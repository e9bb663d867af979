"""PyTorch checkpoints in, ONNX out (design §2).

Accepted inputs:
- TorchScript archives (``torch.jit.save``), loaded with ``torch.jit.load``;
- ``torch.export`` programs (``.pt2``, ``torch.export.save``), loaded with ``torch.export.load``;
- a ``state_dict`` (``torch.save(model.state_dict())``, read with ``weights_only=True``) plus
  ``arch="module:factory"`` or ``arch="path/to/file.py:factory"``;
- a whole pickled ``nn.Module`` (``torch.save(model)``), only with ``trust=True``: unpickling
  runs code from the file.

Everything is exported with ``torch.onnx.export``: nn.Modules and programs through the
``torch.export``-based exporter (opset 18 at least; a lower requested opset is reached by
down-converting the optimized graph when onnx's converter can, else the model stays at 18
and a :class:`TorchExportWarning` says so); TorchScript through the TorchScript-based exporter
(the only one that accepts a ScriptModule), at the requested opset. The batch dimension
(dim 0) is exported dynamic, named ``batch``, wherever the model allows it.

torch is imported inside the functions only: the CLI must start fast.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import onnx

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".pt2", ".jit", ".ckpt"})
BATCH = "batch"  # name of the dynamic batch axis in the exported model
MIN_DYNAMO_OPSET = 18  # the torch.export-based exporter has no implementations below this
_ZIP_MAGIC = b"PK\x03\x04"
# Loggers that chatter during export (opset notices, "torchvision is not installed", the
# onnxscript version converter's fallback notice); silenced while we export.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript")


class TorchExportWarning(UserWarning):
    """Something about the exported model the user should know (static batch, opset kept)."""


# --------------------------------------------------------------------------- sniffing


def is_torch_checkpoint(path: Path) -> bool:
    """Cheap sniff (reads a few bytes and, for a zip, its directory): is this a PyTorch file?

    True for a zip archive with the torch.save / TorchScript / torch.export layout, for a legacy
    (pre-1.6) torch.save pickle, and for files named .pt .pth .pt2 .jit .ckpt. Never True for an
    ONNX file, whatever its name.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        # A serialized ModelProto starts with field 1 (ir_version, varint): byte 0x08.
        return False
    if head == _ZIP_MAGIC:
        return _zip_kind(path) is not None or path.suffix.lower() in TORCH_SUFFIXES
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return True
    return path.suffix.lower() in TORCH_SUFFIXES


def _zip_kind(path: Path) -> str | None:
    """'torchscript', 'pt2' or 'pickle' (torch.save) for a torch zip archive, else None."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "pickle"
    return None


# --------------------------------------------------------------------------- loading


def load_checkpoint(
    path: Path,
    *,
    arch: str | None = None,
    trust: bool = False,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    opset: int = 17,
) -> "onnx.ModelProto":
    """Loads a PyTorch checkpoint and returns it exported to ONNX (external data loaded).

    ``input_shapes`` maps input names to concrete shapes; they become the ONNX input names
    (a single entry names the single input of a one-input model, whatever the checkpoint calls
    it). Unnamed inputs are ``input`` / ``input_N``, outputs ``output`` / ``output_N``. Raises
    :class:`BadInput` for anything the user can fix (missing ``--arch``, ``--trust-checkpoint``
    or ``--input-shape``, a file that is not a checkpoint, a state_dict that does not fit).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if input_shapes is not None:
        input_shapes = _check_shapes(input_shapes)

    import torch

    kind = _zip_kind(path)
    if kind == "torchscript":
        module = _load_torchscript(path)
        return _export_torchscript(module, path, input_shapes, opset)
    if kind == "pt2":
        program = _load_pt2(path)
        return _export_program(program, path, input_shapes, opset)

    obj = _load_pickle(path, trust)
    if isinstance(obj, torch.nn.Module):
        if isinstance(obj, torch.jit.ScriptModule):
            return _export_torchscript(obj, path, input_shapes, opset)
        module = obj.eval()
    else:
        state_dict = _find_state_dict(obj, path)
        if arch is None:
            raise BadInput(
                f"{path}: a state_dict holds only weights; name the architecture with "
                "--arch module:factory (or path/to/file.py:factory)"
            )
        module = _build_from_arch(arch)
        _load_state_dict(module, state_dict, path, arch)
        module.eval()
    return _export_module(module, path, input_shapes, opset)


def _check_shapes(input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in input_shapes.items():
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise BadInput(f"--input-shape {name}: expected integers, got {shape!r}") from None
        if any(d < 1 for d in dims):
            raise BadInput(f"--input-shape {name}={','.join(map(str, dims))}: every dimension must be >= 1")
        out[str(name)] = dims
    return out


def _load_torchscript(path: Path) -> Any:
    import torch

    try:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise BadInput(f"{path}: not a PyTorch checkpoint (torch.jit.load: {_short(exc)})") from None


def _load_pt2(path: Path) -> Any:
    import torch

    try:
        with _quiet():
            return torch.export.load(str(path))
    except Exception as exc:
        raise BadInput(f"{path}: not a PyTorch checkpoint (torch.export.load: {_short(exc)})") from None


def _load_pickle(path: Path, trust: bool) -> Any:
    """torch.load with weights_only=True; a full pickle only with trust."""
    import pickle

    import torch

    try:
        with _quiet():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise BadInput(f"{path}: not a PyTorch checkpoint ({_short(exc)})") from None
        what = found.group(1)
    except Exception as exc:  # RuntimeError (bad zip), EOFError, ...
        raise BadInput(f"{path}: not a PyTorch checkpoint ({_short(exc)})") from None
    if not trust:
        raise BadInput(
            f"{path}: holds a pickled object ({what}), not just weights; unpickling it runs code "
            "from the file: pass --trust-checkpoint if you trust its source (or save a "
            "state_dict and use --arch)"
        )
    try:
        with _quiet():
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # missing class, module not importable, ...
        raise BadInput(
            f"{path}: cannot unpickle ({_short(exc)}); the code that defines the model must be "
            "importable (or save a state_dict and use --arch)"
        ) from None


def _find_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The tensors mapping: the object itself, or under a usual key of a training checkpoint."""
    import torch

    def is_sd(x: Any) -> bool:
        return (
            isinstance(x, Mapping)
            and len(x) > 0
            and all(isinstance(k, str) for k in x)
            and all(isinstance(v, torch.Tensor) for v in x.values())
        )

    if is_sd(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "module", "weights"):
            if is_sd(obj.get(key)):
                return obj[key]
    raise BadInput(f"{path}: not a PyTorch checkpoint (holds a {type(obj).__name__}, not a state_dict or module)")


def _build_from_arch(arch: str) -> Any:
    """``module:factory`` or ``path/to/file.py:factory`` -> the nn.Module the factory returns."""
    import torch

    target, sep, attr = arch.rpartition(":")
    if not sep or not target or not attr:
        raise BadInput(f"--arch {arch}: expected module:factory or path/to/file.py:factory")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if is_file:
        module = _import_file(Path(target), arch)
    else:
        module = _import_module(target, arch)
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise BadInput(f"--arch {arch}: {target} has no attribute {attr!r}")
    if not callable(factory):
        raise BadInput(f"--arch {arch}: {attr} is not callable")
    try:
        model = factory()
    except Exception as exc:
        raise BadInput(f"--arch {arch}: calling {attr}() failed ({_short(exc)})") from None
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"--arch {arch}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_file(file: Path, arch: str) -> Any:
    if not file.is_file():
        raise BadInput(f"--arch {arch}: {file}: no such file")
    name = f"mcomp_arch_{abs(hash(str(file.resolve()))):x}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise BadInput(f"--arch {arch}: cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up here
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise BadInput(f"--arch {arch}: importing {file} failed ({_short(exc)})") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


def _import_module(name: str, arch: str) -> Any:
    added = False
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `--arch mypkg.models:build` from the current folder
        added = True
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise BadInput(f"--arch {arch}: cannot import {name} ({_short(exc)})") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _load_state_dict(module: Any, state_dict: Mapping[str, Any], path: Path, arch: str) -> None:
    own = set(module.state_dict())
    keys = set(state_dict)
    if keys != own:
        # checkpoints saved from DataParallel / DDP or a wrapper carry a common prefix
        for prefix in ("module.", "model.", "_orig_mod."):
            if all(k.startswith(prefix) for k in keys) and {k[len(prefix):] for k in keys} == own:
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                break
    try:
        module.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        missing = sorted(own - set(state_dict))
        unexpected = sorted(set(state_dict) - own)
        if missing or unexpected:
            detail = f"missing {_few(missing)}, unexpected {_few(unexpected)}"
        else:
            detail = _short(exc)
        raise BadInput(f"{path}: the state_dict does not fit --arch {arch}: {detail}") from None


# --------------------------------------------------------------------------- export


def _export_module(module: Any, path: Path, input_shapes: dict | None, opset: int) -> "onnx.ModelProto":
    """nn.Module -> torch.export (dynamic batch if possible) -> ONNX."""
    import torch

    params = _forward_params(module.forward)
    names, shapes = _resolve_inputs(path, params, input_shapes)
    args = tuple(torch.zeros(_example_batch(s)) for s in shapes)
    program, dynamic, first_error = None, True, None
    try:
        with _quiet():
            program = torch.export.export(module, args, dynamic_shapes=_batch_dims(shapes), strict=False)
    except Exception as exc:  # the model pins the batch size, or is not exportable at all
        first_error = exc
    if program is None:
        dynamic = False
        static = tuple(torch.zeros(s) for s in shapes)
        try:
            with _quiet():
                program = torch.export.export(module, static, strict=False)
        except Exception as exc:
            # Last resort: the TorchScript-based exporter traces what torch.export cannot.
            # (_export_legacy first runs the model, so wrong input shapes are reported as such.)
            proto = _export_legacy(module, static, names, path, opset)
            _warn(
                f"{path}: exported with the TorchScript-based exporter, since torch.export "
                f"failed ({_short(exc)}); a traced graph may have fixed control flow and shapes"
            )
            return proto
    if not dynamic and shapes and shapes[0]:
        _warn(
            f"{path}: exported with a fixed batch size ({shapes[0][0]}); the model does not "
            f"allow a dynamic one ({_short(first_error)})"
        )
    return _program_to_onnx(program, names, path, opset)


def _export_program(program: Any, path: Path, input_shapes: dict | None, opset: int) -> "onnx.ModelProto":
    """A loaded torch.export program -> ONNX; a static batch is made dynamic when it checks out."""
    import torch

    user_inputs = list(program.graph_signature.user_inputs)
    metas = _placeholder_meta(program, user_inputs)
    examples = _program_examples(program)
    if input_shapes:
        names, shapes = _resolve_inputs(path, user_inputs, input_shapes)
        dtypes = [m[1] if m else torch.float32 for m in metas]
        args = tuple(_example(s, d) for s, d in zip(shapes, dtypes))
    elif examples is not None:
        args = examples
        names = _default_names(len(args), "input")
        shapes = [tuple(a.shape) for a in args]
    else:
        concrete = [m is not None and all(isinstance(d, int) for d in m[0]) for m in metas]
        if not all(concrete):
            raise BadInput(f"{path}: the program carries no example inputs; give the shape with --input-shape")
        shapes = [tuple(m[0]) for m in metas]
        args = tuple(_example(s, m[1]) for s, m in zip(shapes, metas))
        names = _default_names(len(args), "input")

    static = not _has_dynamic_batch(metas)
    if static or input_shapes:  # run it: a check of the given shapes, the reference for below
        try:
            with _quiet(), torch.no_grad():
                reference = program.module()(*args)
        except Exception as exc:
            raise BadInput(
                f"{path}: the inputs {_fmt_shapes(names, shapes)} do not fit the program ({_short(exc)})"
            ) from None

    if static:
        dynamic = _make_batch_dynamic(program, args, reference)
        if dynamic is not None:
            program = dynamic
        elif shapes and shapes[0]:
            _warn(f"{path}: the program was exported with a fixed batch size ({shapes[0][0]}); kept as is")
    return _program_to_onnx(program, names, path, opset)


def _export_torchscript(module: Any, path: Path, input_shapes: dict | None, opset: int) -> "onnx.ModelProto":
    import torch

    params = _script_params(module)
    if not input_shapes:
        raise BadInput(
            f"{path}: a TorchScript archive does not record its input shape; give it with "
            "--input-shape NAME=D0,D1,... (e.g. --input-shape input=1,3,224,224)"
        )
    names, shapes = _resolve_inputs(path, params, input_shapes)
    args = tuple(torch.zeros(s) for s in shapes)
    return _export_legacy(module.eval(), args, names, path, opset)


def _export_legacy(module: Any, args: tuple, names: list[str], path: Path, opset: int) -> "onnx.ModelProto":
    """The TorchScript-based exporter (``dynamo=False``): for ScriptModules, and as a fallback."""
    import torch

    try:
        with _quiet(), torch.no_grad():
            outputs = module(*args)
    except Exception as exc:
        raise BadInput(f"{path}: the inputs {_fmt_shapes(names, [tuple(a.shape) for a in args])} do not fit the model ({_short(exc)})") from None
    out_names = _default_names(_count_tensors(outputs), "output")
    dynamic_axes = {n: {0: BATCH} for n, a in zip(names, args) if a.dim() > 0}
    dynamic_axes.update({n: {0: BATCH} for n in out_names})
    with tempfile.TemporaryDirectory(prefix="mcomp-export-") as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                torch.onnx.export(
                    module,
                    args,
                    str(target),
                    dynamo=False,
                    input_names=names,
                    output_names=out_names,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    training=torch.onnx.TrainingMode.EVAL,
                )
        except Exception as exc:
            raise BadInput(f"{path}: torch.onnx.export failed: {_short(exc)}") from None
        return _load_onnx(target)


def _program_to_onnx(program: Any, names: list[str], path: Path, opset: int) -> "onnx.ModelProto":
    import torch

    n_out = len(program.graph_signature.user_outputs)
    out_names = _default_names(n_out, "output")
    with tempfile.TemporaryDirectory(prefix="mcomp-export-") as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            with _quiet():
                onnx_program = torch.onnx.export(
                    program,
                    dynamo=True,
                    input_names=names,
                    output_names=out_names,
                    opset_version=max(opset, MIN_DYNAMO_OPSET),
                    optimize=True,
                    verbose=False,
                )
                onnx_program.save(str(target), external_data=True)
        except Exception as exc:
            raise BadInput(f"{path}: torch.onnx.export failed: {_short(exc)}") from None
        proto = _load_onnx(target)
    _name_batch_axis(proto)
    if opset < MIN_DYNAMO_OPSET:
        proto = _downgrade(proto, opset, path)
    return proto


def _downgrade(proto: "onnx.ModelProto", opset: int, path: Path) -> "onnx.ModelProto":
    """Brings a model from torch's minimum opset (18) down to the requested one.

    onnx's C converter has no 18 -> 17 adapter for Split and leaves an invalid attribute on
    ReduceMean & co., so that step is done here (:func:`_downgrade_18_to_17`); lower targets
    continue with onnx's converter. On failure the model stays at its opset, with a warning.
    """
    import onnx
    import onnx.version_converter

    current = _opset(proto)
    if current is None or current <= opset:
        return proto
    try:
        if current != MIN_DYNAMO_OPSET:
            raise ValueError(f"unexpected opset {current}")
        converted = _downgrade_18_to_17(proto)
        if opset < 17:
            converted = onnx.version_converter.convert_version(converted, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        _warn(
            f"{path}: exported at opset {current} (torch's exporter starts there); "
            f"converting to opset {opset} failed ({_short(exc)})"
        )
        return proto
    return converted


_REDUCE_AXES_INPUT_18 = frozenset(
    {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
     "ReduceMin", "ReduceProd", "ReduceSumSquare"}
)  # axes became an input in opset 18 (ReduceSum did so in 13)


def _downgrade_18_to_17(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """Rewrites what changed between opsets 17 and 18 into its opset-17 form, or raises.

    Reduce* take constant ``axes`` as an attribute again; Split trades ``num_outputs`` for
    explicit sizes (the split axis must be statically known); Resize and Pad
    are accepted only without their opset-18 extras. Anything else new in 18 fails the checker.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if len(model.functions):
        raise ValueError("the model has local functions")
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name == "value_ints":
                    consts[node.output[0]] = np.array(list(a.ints), dtype=np.int64)
    shapes: dict[str, list] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for i in graph.initializer:
        shapes[i.name] = list(i.dims)

    def attr(node, name):
        return next((a for a in node.attribute if a.name == name), None)

    def drop_attr(node, name):
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)

    def visit(g) -> None:
        for node in g.node:
            for a in node.attribute:  # subgraphs (If, Loop, Scan)
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)
            if node.domain not in ("", "ai.onnx"):
                continue
            op = node.op_type
            if op in _REDUCE_AXES_INPUT_18:
                noop = attr(node, "noop_with_empty_axes")
                axes_name = node.input[1] if len(node.input) > 1 else ""
                if axes_name:
                    if axes_name not in consts:
                        raise ValueError(f"{op} {node.name!r}: axes are computed, not constant")
                    axes = [int(v) for v in np.asarray(consts[axes_name]).reshape(-1)]
                    del node.input[1:]
                    if axes:
                        node.attribute.append(helper.make_attribute("axes", axes))
                    elif noop is not None and noop.i:
                        raise ValueError(f"{op} {node.name!r}: noop_with_empty_axes")
                elif noop is not None and noop.i:
                    raise ValueError(f"{op} {node.name!r}: noop_with_empty_axes")
                drop_attr(node, "noop_with_empty_axes")
            elif op == "Split":
                num = attr(node, "num_outputs")
                if num is None:
                    continue
                drop_attr(node, "num_outputs")
                n = int(num.i)
                axis_attr = attr(node, "axis")
                axis = int(axis_attr.i) if axis_attr is not None else 0
                shape = shapes.get(node.input[0])
                dim = None
                if shape is not None and -len(shape) <= axis < len(shape):
                    dim = shape[axis]
                # Always explicit sizes, even for equal parts: onnxruntime (1.32) merges two
                # size-less Splits of one tensor that differ only in their number of outputs.
                if dim is None:
                    raise ValueError(f"Split {node.name!r}: num_outputs on an axis of unknown size")
                chunk = -(-dim // n)
                sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
                name = f"{node.output[0]}__split_sizes"
                graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
                del node.input[1:]
                node.input.append(name)
            elif op == "Resize":
                for name, default in (("antialias", 0), ("keep_aspect_ratio_policy", b"stretch")):
                    a = attr(node, name)
                    if a is not None and (a.i if name == "antialias" else a.s) != default:
                        raise ValueError(f"Resize {node.name!r}: {name} is new in opset 18")
                    drop_attr(node, name)
                if attr(node, "axes") is not None:
                    raise ValueError(f"Resize {node.name!r}: axes is new in opset 18")
            elif op == "Pad" and len(node.input) > 3 and node.input[3]:
                raise ValueError(f"Pad {node.name!r}: axes is new in opset 18")
            elif op in ("ScatterElements", "ScatterND"):
                r = attr(node, "reduction")
                if r is not None and r.s in (b"max", b"min"):
                    raise ValueError(f"{op} {node.name!r}: reduction {r.s.decode()} is new in opset 18")

    visit(graph)
    # drop the constants that only fed the axes inputs rewritten above
    used = set(o.name for o in graph.output)

    def collect(g) -> None:
        for node in g.node:
            used.update(node.input)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)
                for sub in a.graphs:
                    collect(sub)

    collect(graph)
    kept_init = [i for i in graph.initializer if i.name in used]
    if len(kept_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept_init)
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] not in used)]
    if len(kept_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept_nodes)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 17
    return model


def _load_onnx(target: Path) -> "onnx.ModelProto":
    import onnx

    proto = onnx.load(str(target), load_external_data=True)
    return proto


# --------------------------------------------------------------------------- inputs


def _resolve_inputs(
    path: Path,
    params: Sequence[str] | None,
    input_shapes: dict[str, tuple[int, ...]] | None,
) -> tuple[list[str], list[tuple[int, ...]]]:
    """ONNX input names and shapes, in the order of the model's positional arguments."""
    if not input_shapes:
        raise BadInput(f"{path}: the input shape is not known; give it with --input-shape NAME=D0,D1,...")
    given = list(input_shapes.items())
    n = len(params) if params is not None else len(given)
    if n <= 1 and len(given) == 1:
        name, shape = given[0]
        return [name or (params[0] if params else "input")], [shape]  # an unnamed --input-shape
    if params is not None and len(given) != n:
        raise BadInput(
            f"{path}: the model takes {n} inputs ({', '.join(params)}); "
            f"--input-shape gave {len(given)} ({', '.join(k for k, _ in given)})"
        )
    if params is not None and set(input_shapes) == set(params):
        return list(params), [input_shapes[p] for p in params]
    # positional, in the order given; unnamed ones take the default names
    defaults = _default_names(len(given), "input")
    return [k or d for (k, _), d in zip(given, defaults)], [s for _, s in given]


def _forward_params(forward: Any) -> list[str] | None:
    """Names of the positional parameters of forward(), or None when it takes *args."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            names.append(p.name)
    return names


def _script_params(module: Any) -> list[str] | None:
    try:
        args = module.forward.schema.arguments
    except Exception:
        return None
    return [a.name for a in args[1:] if not a.has_default_value()]


def _placeholder_meta(program: Any, user_inputs: list[str]) -> list[tuple[tuple, Any] | None]:
    """(shape, dtype) of each user input placeholder; dims are ints or SymInts."""
    import torch

    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out: list[tuple[tuple, Any] | None] = []
    for name in user_inputs:
        val = by_name[name].meta.get("val") if name in by_name else None
        if isinstance(val, torch.Tensor):
            out.append((tuple(val.shape), val.dtype))
        else:
            out.append(None)
    return out


def _program_examples(program: Any) -> tuple | None:
    import torch

    examples = getattr(program, "example_inputs", None)
    if not examples:
        return None
    args, kwargs = examples
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    return tuple(args)


def _has_dynamic_batch(metas: list) -> bool:
    return any(m is not None and len(m[0]) > 0 and not isinstance(m[0][0], int) for m in metas)


def _make_batch_dynamic(program: Any, args: tuple, reference: Any) -> Any | None:
    """Re-exports a static program with a dynamic batch; None unless the result checks out.

    A static program may have the batch size baked into a reshape, so a re-export that
    succeeds is checked: on a doubled batch (the inputs twice), each half must reproduce the
    original outputs.
    """
    import torch

    if not args or any(a.dim() == 0 or a.shape[0] != args[0].shape[0] for a in args):
        return None
    shapes = [tuple(a.shape) for a in args]
    try:
        with _quiet():
            module = program.module(check_guards=False)
            examples = tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)
            redone = torch.export.export(module, examples, dynamic_shapes=_batch_dims(shapes), strict=False)
            doubled = tuple(torch.cat([a, a]) for a in args)
            with torch.no_grad():
                got = redone.module()(*doubled)
    except Exception:
        return None
    ref_leaves = _tensor_leaves(reference)
    got_leaves = _tensor_leaves(got)
    if len(ref_leaves) != len(got_leaves):
        return None
    b = args[0].shape[0]
    for r, g in zip(ref_leaves, got_leaves):
        if r.dim() == 0 or g.shape[0] != 2 * b or tuple(g.shape[1:]) != tuple(r.shape[1:]):
            return None
        for half in (g[:b], g[b:]):
            if not torch.allclose(half.float(), r.float(), rtol=1e-4, atol=1e-5):
                return None
    return redone


def _batch_dims(shapes: list[tuple[int, ...]]) -> tuple:
    """dynamic_shapes for torch.export: dim 0 of every input that shares the first one's batch."""
    import torch

    dim = torch.export.Dim(BATCH)
    first = shapes[0][0] if shapes and shapes[0] else None
    return tuple({0: dim} if s and s[0] == first else None for s in shapes)


def _example_batch(shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch.export specializes sizes 0 and 1, so a dynamic batch is traced with at least 2."""
    return (max(2, shape[0]), *shape[1:]) if shape else shape


def _example(shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    return torch.zeros(shape, dtype=dtype or torch.float32)


def _default_names(n: int, stem: str) -> list[str]:
    return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]


def _tensor_leaves(obj: Any) -> list:
    import torch
    import torch.utils._pytree as pytree

    return [x for x in pytree.tree_leaves(obj) if isinstance(x, torch.Tensor)]


def _count_tensors(obj: Any) -> int:
    return len(_tensor_leaves(obj))


def _name_batch_axis(proto: "onnx.ModelProto") -> None:
    """Renames the exporter's symbol for dim 0 of the inputs (``s77``) to ``batch``."""
    symbols = set()
    for vi in proto.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            symbols.add(dims[0].dim_param)
    symbols.discard(BATCH)
    if len(symbols) != 1:
        return
    pattern = re.compile(rf"\b{re.escape(symbols.pop())}\b")
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(BATCH, d.dim_param)


def _opset(proto: "onnx.ModelProto") -> int | None:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch's and onnxscript's warnings and log chatter for the duration."""
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _warn(message: str) -> None:
    warnings.warn(message, TorchExportWarning, stacklevel=3)


def _short(exc: BaseException | None, limit: int = 200) -> str:
    """First meaningful line of an exception, without ANSI colour codes, at most `limit` chars."""
    if exc is None:
        return "unknown error"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # torch.onnx wraps the real error; its "Exception summary" holds the useful line
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            text = lines[i + 1]
            break
    else:
        text = lines[0] if lines else type(exc).__name__
    text = text if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _few(items: list[str], n: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:n])
    return f"[{shown}{', …' if len(items) > n else ''}] ({len(items)})"


def _fmt_shapes(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    return " ".join(f"{n}={','.join(map(str, s))}" for n, s in zip(names, shapes))
