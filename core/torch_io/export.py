"""torch -> ONNX: nn.Modules and torch.export programs through the torch.export-based exporter,
TorchScript (and what torch.export cannot trace) through the TorchScript-based one.

The torch.export-based exporter starts at opset 18; a lower requested opset is reached with
:func:`mcomp.opset.downgrade_opset`, and where that fails the model stays at 18 with a
:class:`TorchExportWarning`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.errors import BadInput, short
from mcomp.torch_io.common import _quiet, _warn
from mcomp.torch_io.inputs import (
    BATCH,
    _batch_dims,
    _count_tensors,
    _default_names,
    _example,
    _example_batch,
    _fmt_shapes,
    _forward_params,
    _has_dynamic_batch,
    _make_batch_dynamic,
    _name_batch_axis,
    _non_tensor_params,
    _placeholder_meta,
    _program_examples,
    _resolve_inputs,
    _script_params,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

MIN_DYNAMO_OPSET = 18  # the torch.export-based exporter has no implementations below this


def _export_module(module: Any, path: Path, input_shapes: dict | None, opset: int) -> "onnx.ModelProto":
    """nn.Module -> torch.export (dynamic batch if possible) -> ONNX."""
    import torch

    params = _forward_params(module.forward)
    names, shapes = _resolve_inputs(path, params, input_shapes)
    dtypes = _input_dtypes(module, shapes)
    args = tuple(torch.zeros(_example_batch(s), dtype=d) for s, d in zip(shapes, dtypes))
    program, dynamic, first_error = None, True, None
    try:
        with _quiet():
            program = torch.export.export(module, args, dynamic_shapes=_batch_dims(shapes), strict=False)
    except Exception as exc:  # the model pins the batch size, or is not exportable at all
        first_error = exc
    if program is None:
        dynamic = False
        static = tuple(torch.zeros(s, dtype=d) for s, d in zip(shapes, dtypes))
        try:
            with _quiet():
                program = torch.export.export(module, static, strict=False)
        except Exception as exc:
            # Last resort: the TorchScript-based exporter traces what torch.export cannot.
            # (_export_legacy first runs the model, so wrong input shapes are reported as such.)
            proto = _export_legacy(module, static, names, path, opset)
            _warn(
                f"{path}: exported with the TorchScript-based exporter, since torch.export "
                f"failed ({short(exc, first_line=True)}); a traced graph may have fixed control flow and shapes"
            )
            return proto
    if not dynamic and shapes and shapes[0]:
        _warn(
            f"{path}: exported with a fixed batch size ({shapes[0][0]}); the model does not "
            f"allow a dynamic one ({short(first_error, first_line=True)})"
        )
    return _program_to_onnx(program, names, path, opset)


# What torch says when float examples reach an op that reads integers (an embedding's token ids).
_WANTS_INTEGERS = re.compile(r"\b(Long|Int)\b|indices|index", re.IGNORECASE)


def _input_dtypes(module: Any, shapes: list[tuple[int, ...]]) -> list[Any]:
    """The dtype of each example input: float32, unless the model refuses floats where it reads
    integers (a language model's token ids: "Expected tensor for argument #1 'indices' to have one
    of the following scalar types: Long, Int"). Then int64 for every input, else for the first one
    alone that makes it run; float32 where nothing runs (the export then says why)."""
    import torch

    def runs(dtypes) -> Exception | None:
        try:
            with _quiet(), torch.no_grad():
                module(*(torch.zeros(s, dtype=d) for s, d in zip(shapes, dtypes)))
        except Exception as exc:
            return exc
        return None

    floats = [torch.float32] * len(shapes)
    failure = runs(floats)
    if failure is None or not _WANTS_INTEGERS.search(str(failure)):
        return floats
    tries = [[torch.int64] * len(shapes)] + [
        [torch.int64 if j == i else torch.float32 for j in range(len(shapes))] for i in range(len(shapes))
        if len(shapes) > 1]
    return next((dtypes for dtypes in tries if runs(dtypes) is None), floats)


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
                f"{path}: the inputs {_fmt_shapes(names, shapes)} do not fit the program ({short(exc, first_line=True)})"
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
    scalars = _non_tensor_params(module)
    if scalars:  # a Python value (silero-vad's ``sr: int``) has no place among a graph's inputs
        raise BadInput(f"{path}: its forward takes {', '.join(scalars)}, not tensors; mcomp exports tensor inputs "
                       "only: script a wrapper module that fixes them, or use the library's own ONNX export")
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
        raise BadInput(f"{path}: the inputs {_fmt_shapes(names, [tuple(a.shape) for a in args])} do not fit the model ({short(exc, first_line=True)})") from None
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
            raise BadInput(f"{path}: torch.onnx.export failed: {short(exc, first_line=True)}") from None
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
            raise BadInput(f"{path}: torch.onnx.export failed: {short(exc, first_line=True)}") from None
        proto = _load_onnx(target)
    _name_batch_axis(proto)
    if opset < MIN_DYNAMO_OPSET:
        proto = _downgrade(proto, opset, path)
    return proto


def _downgrade(proto: "onnx.ModelProto", opset: int, path: Path) -> "onnx.ModelProto":
    """Brings a model from torch's minimum opset (18) down to the requested one.

    The conversion is :func:`mcomp.opset.downgrade_opset` (its own 18 -> 17 step, then onnx's
    converter for lower targets). On failure the model stays at its opset, with a warning.
    """
    from mcomp.model import onnx_opset
    from mcomp.opset import downgrade_opset

    current = onnx_opset(proto)
    if current is None or current <= opset:
        return proto
    try:
        converted = downgrade_opset(proto, opset)
    except Exception as exc:
        _warn(
            f"{path}: exported at opset {current} (torch's exporter starts there); "
            f"converting to opset {opset} failed ({short(exc, first_line=True)})"
        )
        return proto
    return converted


def _load_onnx(target: Path) -> "onnx.ModelProto":
    import onnx

    proto = onnx.load(str(target), load_external_data=True)
    return proto
