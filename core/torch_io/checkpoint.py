"""Recognising and loading PyTorch checkpoints: TorchScript archives, ``.pt2`` programs, pickles
(a whole ``nn.Module`` only with ``trust``), and state_dicts with the ``--arch`` factory that
builds their module. :func:`load_checkpoint` loads one and hands it to :mod:`.export`.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.errors import BadInput, short
from mcomp.torch_io.common import _quiet
from mcomp.torch_io.export import _export_module, _export_program, _export_torchscript
from mcomp.torch_io.inputs import _check_shapes
from mcomp.torch_io.pickles import forbidden_global

if TYPE_CHECKING:  # pragma: no cover
    import onnx

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".pt2", ".jit", ".ckpt"})
_ZIP_MAGIC = b"PK\x03\x04"


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


def _load_torchscript(path: Path) -> Any:
    import torch

    try:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise BadInput(f"{path}: not a PyTorch checkpoint (torch.jit.load: {short(exc, first_line=True)})") from None


def _load_pt2(path: Path) -> Any:
    import torch

    try:
        with _quiet():
            return torch.export.load(str(path))
    except Exception as exc:
        raise BadInput(f"{path}: not a PyTorch checkpoint (torch.export.load: {short(exc, first_line=True)})") from None


def _load_pickle(path: Path, trust: bool) -> Any:
    """torch.load with weights_only=True; a full pickle only with trust, and never one that names a
    global able to run code (``pickles.forbidden_global``), which is refused before torch reads it."""
    import pickle

    import torch

    dangerous = forbidden_global(path)
    if dangerous is not None:
        raise BadInput(f"{path}: a pickle that would import {dangerous}, refused (it is never unpickled, "
                       "with or without --trust-checkpoint)")
    try:
        with _quiet():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise BadInput(f"{path}: not a PyTorch checkpoint ({short(exc, first_line=True)})") from None
        what = found.group(1)
    except Exception as exc:  # RuntimeError (bad zip), EOFError, ...
        raise BadInput(f"{path}: not a PyTorch checkpoint ({short(exc, first_line=True)})") from None
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
            f"{path}: cannot unpickle ({short(exc, first_line=True)}); the code that defines the model must be "
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

    from mcomp.user_code import load_callable

    factory = load_callable(arch, f"--arch {arch}", "factory")
    attr = arch.rpartition(":")[2]
    try:
        model = factory()
    except Exception as exc:
        raise BadInput(f"--arch {arch}: calling {attr}() failed ({short(exc, first_line=True)})") from None
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"--arch {arch}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


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
            detail = short(exc, first_line=True)
        raise BadInput(f"{path}: the state_dict does not fit --arch {arch}: {detail}") from None


def _few(items: list[str], n: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:n])
    return f"[{shown}{', …' if len(items) > n else ''}] ({len(items)})"
