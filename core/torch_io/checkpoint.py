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
from mcomp.torch_io.common import _quiet, _warn
from mcomp.torch_io.export import _export_module, _export_program, _export_torchscript
from mcomp.torch_io.inputs import _check_shapes
from mcomp.torch_io.pickles import forbidden_global, load_weights_only

if TYPE_CHECKING:  # pragma: no cover
    import onnx

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".pt2", ".jit", ".ckpt", ".safetensors"})
# Hugging Face's index of a sharded checkpoint (save_pretrained above max_shard_size): which shard file
# beside it holds each weight
SHARD_INDEX = ".safetensors.index.json"
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------- sniffing


def is_torch_checkpoint(path: Path) -> bool:
    """Cheap sniff (reads a few bytes and, for a zip, its directory): is this a PyTorch file?

    True for a zip archive with the torch.save / TorchScript / torch.export layout, for a legacy
    (pre-1.6) torch.save pickle, for a safetensors file (an 8-byte header length, then its JSON),
    for files named .pt .pth .pt2 .jit .ckpt .safetensors, and for a sharded checkpoint's
    ``model.safetensors.index.json``. Never True for an ONNX file, whatever its name.
    """
    path = Path(path)
    if path.name.lower().endswith(SHARD_INDEX):
        return path.is_file()
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if _is_safetensors(head, path):
        return True
    head = head[:4]
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        # A serialized ModelProto starts with field 1 (ir_version, varint): byte 0x08.
        return False
    if head == _ZIP_MAGIC:
        return _zip_kind(path) is not None or path.suffix.lower() in TORCH_SUFFIXES
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return True
    return path.suffix.lower() in TORCH_SUFFIXES


def _is_safetensors(head: bytes, path: Path) -> bool:
    """A safetensors file: a little-endian u64 header length within the file, then the header's ``{``."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


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

    obj, stood_in = _load_object(path, trust)
    if isinstance(obj, torch.nn.Module):
        if isinstance(obj, torch.jit.ScriptModule):
            return _export_torchscript(obj, path, input_shapes, opset)
        module = obj.eval()
    else:
        try:
            found = _find_state_dicts(obj, path)
        except BadInput:
            if stood_in:  # no weights beside the objects: they are the model (a whole pickled module)
                raise BadInput(_needs_trust(path, stood_in[0])) from None
            raise
        if stood_in:
            _warn(f"{path}: read its tensors alone; what else it pickles was not rebuilt (inert stand-ins "
                  f"for {_few(stood_in)})")
        if arch is None:
            raise BadInput(
                f"{path}: a state_dict holds only weights; name the architecture with "
                "--arch module:factory (or path/to/file.py:factory)"
            )
        module = _build_from_arch(arch)
        _load_state_dicts(module, found, path, arch)
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


def _load_object(path: Path, trust: bool) -> tuple[Any, list[str]]:
    """What a torch.save file or a safetensors file holds, and the globals read as stand-ins (see
    ``_load_pickle``; none for safetensors: tensors only, nothing in the file can run)."""
    if path.name.lower().endswith(SHARD_INDEX):
        return _load_shards(path), []
    with open(path, "rb") as handle:
        head = handle.read(9)
    if path.suffix.lower() == ".safetensors" or _is_safetensors(head, path):
        return _load_safetensors(path), []
    return _load_pickle(path, trust)


def _load_shards(index: Path) -> dict:
    """The weights of a sharded safetensors checkpoint, each shard its index names read in turn. A shard
    is a file beside the index (no folder in its name): an index cannot make mcomp read elsewhere."""
    import json

    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{index}: not a safetensors index (a JSON object with a 'weight_map' of weight → shard "
                       f"file: {short(exc, 120, first_line=True)})") from None
    tensors: dict = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise BadInput(f"{index}: shard {shard!r} is not a file name beside the index")
        if not (index.parent / shard).is_file():
            raise BadInput(f"{index}: shard {shard} is missing (the index names {len(shards)} shard files)")
        tensors.update(_load_safetensors(index.parent / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise BadInput(f"{index}: the shards lack {len(missing)} weight(s) the index names, e.g. {missing[0]!r}")
    return tensors


def _load_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file (Hugging Face's weights format: a JSON header and raw data,
    nothing to unpickle), a state_dict for ``--arch``. One shard of a sharded checkpoint holds only
    its part of the weights: ``--arch`` then reports what is missing (the index reads them all)."""
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - a dependency of mcomp
        raise BadInput(f"{path}: reading safetensors needs the 'safetensors' package") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise BadInput(f"{path}: not a safetensors file ({short(exc, first_line=True)})") from None


def _load_pickle(path: Path, trust: bool) -> tuple[Any, list[str]]:
    """torch.load with weights_only=True; a full pickle only with trust, and never one that names a
    global able to run code (``pickles.forbidden_global``), which is refused before torch reads it.
    Without trust, a pickle naming other globals (a Lightning checkpoint's omegaconf
    hyper-parameters) is read with those as inert stand-ins (``pickles.load_weights_only``): its
    weights need none of them. Returns the object and the globals stood in for."""
    import pickle

    import torch

    dangerous = forbidden_global(path)
    if dangerous is not None:
        raise BadInput(f"{path}: a pickle that would import {dangerous}, refused (it is never unpickled, "
                       "with or without --trust-checkpoint)")
    try:
        with _quiet():
            return torch.load(str(path), map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise BadInput(f"{path}: not a PyTorch checkpoint ({short(exc, first_line=True)})") from None
        what = found.group(1)
    except Exception as exc:  # RuntimeError (bad zip), EOFError, ...
        raise BadInput(f"{path}: not a PyTorch checkpoint ({short(exc, first_line=True)})") from None
    if not trust:
        try:
            with _quiet():
                return load_weights_only(path, what)
        except Exception:
            raise BadInput(_needs_trust(path, what)) from None
    try:
        with _quiet():
            return torch.load(str(path), map_location="cpu", weights_only=False), []
    except Exception as exc:  # missing class, module not importable, ...
        raise BadInput(
            f"{path}: cannot unpickle ({short(exc, first_line=True)}); the code that defines the model must be "
            "importable (or save a state_dict and use --arch)"
        ) from None


def _needs_trust(path: Path, what: str) -> str:
    return (f"{path}: holds a pickled object ({what}), not just weights; unpickling it runs code "
            "from the file: pass --trust-checkpoint if you trust its source (or save a "
            "state_dict and use --arch)")


# Where training checkpoints keep the model's weights, tried first (then any other mapping of tensors).
_USUAL_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module", "weights", "params")
_DEPTH = 3  # levels of nested mappings searched for one (Lightning: {'state_dict': …}; {'model': {'ema': …}})


def _is_state_dict(x: Any) -> bool:
    import torch

    return (isinstance(x, Mapping) and len(x) > 0 and all(isinstance(k, str) for k in x)
            and all(isinstance(v, torch.Tensor) for v in x.values()))


def _find_state_dicts(obj: Any, path: Path) -> list[tuple[str, Mapping[str, Any]]]:
    """Every mapping of tensors in the checkpoint with where it is (``''``: the object itself, else
    the keys that lead to it, ``model_state``), the usual keys first at each level: a training
    checkpoint keeps its weights beside the step and the optimizer's state, under a key of its own
    (resemblyzer's ``model_state``)."""
    found, level = [], [("", obj)]
    for _ in range(_DEPTH + 1):
        deeper = []
        for where, x in level:
            if _is_state_dict(x):
                found.append((where, x))
            elif isinstance(x, Mapping):
                keys = sorted((k for k in x if isinstance(k, str)), key=lambda k: (k not in _USUAL_KEYS,
                              _USUAL_KEYS.index(k) if k in _USUAL_KEYS else 0))
                deeper += [(f"{where}/{k}" if where else k, x[k]) for k in keys]
        level = deeper
    if not found:
        what = f"a {type(obj).__name__}" + (f" of {_few(sorted(map(str, obj)))}" if isinstance(obj, Mapping) else "")
        raise BadInput(f"{path}: not a PyTorch checkpoint (holds {what}: no state_dict or module in it)")
    return found


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


def _shard_hint(path: Path) -> str:
    """Where ``path`` is one shard of a sharded checkpoint with its index beside it: a pointer to the index."""
    indexes = sorted(path.parent.glob("*" + SHARD_INDEX)) if path.suffix.lower() == ".safetensors" else []
    return f"; {path.name} is one shard: pass {indexes[0].name}, which reads them all" if indexes else ""


def _load_state_dicts(module: Any, found: list[tuple[str, Mapping[str, Any]]], path: Path, arch: str) -> None:
    """Loads the first state_dict of ``found`` that fits the module, saying (a warning) where it
    was when not under a usual key, which others fit too, and which of its entries the module has
    no place for; BadInput with the first one's mismatch when none fits."""
    failures, fitted = [], []
    for where, state_dict in found:
        try:
            prefix, ignored = _fit(module, state_dict, fitted == [])
        except _Mismatch as exc:
            failures.append(str(exc))
            continue
        fitted.append((where, prefix, ignored))
    if not fitted:
        among = f" (none of the {len(found)} state_dicts in the file fits)" if len(found) > 1 else ""
        raise BadInput(f"{path}: the state_dict does not fit --arch {arch}: {failures[0]}{among}{_shard_hint(path)}")
    (where, prefix, ignored), others = fitted[0], [w for w, _, _ in fitted[1:]]
    said = [f"took the entries under {prefix!r}"] if prefix not in ("", "module.", "model.", "_orig_mod.") else []
    if others:
        said.append(f"also fitting: {_few(others)}")
    if ignored:
        said.append(f"ignored entries --arch has no place for: {_few(ignored)}")
    if where and (said or where not in _USUAL_KEYS):  # Lightning's 'state_dict' alone goes without saying
        said.insert(0, f"loaded the weights under {where!r}")
    if said:
        _warn(f"{path}: " + "; ".join(said))


class _Mismatch(Exception):
    """A state_dict that does not fit the module (its text says how)."""


def _fit(module: Any, state_dict: Mapping[str, Any], load: bool) -> tuple[str, list[str]]:
    """The prefix of the module's entries in ``state_dict`` (``''`` for none) and the entries the
    module has no place for, after loading it into the module (``load``) or only checking that it
    would load; _Mismatch when a parameter or buffer of the module is missing or has another
    shape. Extra entries are training's (a loss's own parameters: resemblyzer's GE2E similarity
    weights); a missing one would leave a weight at its initial value."""
    own = module.state_dict()
    keys, prefix = set(state_dict), ""
    if own and not set(own) <= keys:
        # a wrapper's prefix (DataParallel's "module.", Lightning's "model.") or a submodule's path: the
        # architecture is the checkpoint's "encoder" alone (PESTO's pitch encoder beside its CQT front end)
        first = next(iter(own))
        for candidate in sorted({k[:-len(first)] for k in keys if k.endswith("." + first)}, key=len):
            if all(candidate + k in keys and state_dict[candidate + k].shape == v.shape for k, v in own.items()):
                prefix = candidate
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                break
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(keys) - {prefix + k for k in own})
    if missing:
        raise _Mismatch(f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if shapes:
        k = shapes[0]
        raise _Mismatch(f"{len(shapes)} shape(s) differ, e.g. {k} {list(state_dict[k].shape)} in the file, "
                        f"{list(own[k].shape)} in --arch")
    if load:
        try:
            module.load_state_dict({k: state_dict[k] for k in own}, strict=True)
        except Exception as exc:
            raise _Mismatch(short(exc, first_line=True)) from None
    return prefix, unexpected


def _few(items: list[str], n: int = 4) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:n])
    return f"[{shown}{', …' if len(items) > n else ''}] ({len(items)})"
