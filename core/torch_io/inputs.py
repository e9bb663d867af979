"""Example inputs for export: --input-shape checks, input names, shapes, dtypes and the batch axis.

Dim 0 is the batch: it is exported dynamic, named ``batch``, wherever the model allows it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.errors import BadInput
from mcomp.torch_io.common import _quiet

if TYPE_CHECKING:  # pragma: no cover
    import onnx

BATCH = "batch"  # name of the dynamic batch axis in the exported model


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


def _non_tensor_params(module: Any) -> list[str]:
    """``name: type`` of each required forward argument of a ScriptModule that is not a tensor."""
    try:
        args = module.forward.schema.arguments[1:]
    except Exception:
        return []
    return [f"{a.name}: {a.type}" for a in args if not a.has_default_value() and a.type.kind() != "TensorType"]


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


def _fmt_shapes(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    return " ".join(f"{n}={','.join(map(str, s))}" for n, s in zip(names, shapes))
