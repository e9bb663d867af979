"""What a pickle would import, read without unpickling it (``pickletools`` only walks the opcodes).

``--trust-checkpoint`` means "the classes this file names may be imported", so that a whole pickled
``nn.Module`` loads; it never means "this file may run a shell". A pickle that names a global able to
run a command, evaluate code or reach one that can (``os.system``, ``subprocess.Popen``,
``builtins.eval``, ``importlib.import_module``, ``operator.methodcaller`` …) is refused before
``torch.load`` sees it, with or without trust, and the message says which global it is. The lists
stop the known payloads and name them; they are not a proof, so trust still means trusting the file.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from pathlib import Path

# Modules (the first part of a global's module, or of its dotted name reached from another module,
# as ``torch.serialization`` + ``os.system``) whose every member is refused.
FORBIDDEN_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "ctypes",
    "multiprocessing", "code", "codeop", "pickle", "_pickle", "marshal", "webbrowser", "pdb", "signal",
    "asyncio", "threading", "_thread", "io", "_io", "urllib", "http", "pydoc", "timeit", "_posixsubprocess",
})
# Names refused wherever they live: each runs code, opens files or reaches arbitrary attributes.
FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "execfile", "compile", "__import__", "import_module", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "open", "input", "breakpoint", "exit", "quit", "system", "popen", "Popen",
    "run", "call", "check_call", "check_output", "spawn", "methodcaller", "attrgetter", "load", "loads",
    "runstring", "CodeType", "FunctionType", "LambdaType",
})
_READABLE = {"posix": "os", "nt": "os"}  # os.system pickles as posix.system
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
# torch.save's legacy format is several pickles in a row (magic, version, system info, the object, storage keys).
_MAX_PICKLES = 5
_MARK = object()


def forbidden_global(path: Path) -> str | None:
    """The first global this pickle (a plain one, legacy torch.save, or a torch zip's ``data.pkl``)
    would import that is refused, as ``module.name``; None when there is none or it cannot be read
    as a pickle (torch.load then says what the file is)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if name == "data.pkl" or name.endswith("/data.pkl"):
                        found = _scan(io.BytesIO(zf.read(name)))
                        if found:
                            return found
            return None
        with open(path, "rb") as fh:
            return _scan(fh)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def _scan(stream) -> str | None:
    for _ in range(_MAX_PICKLES):
        try:
            found = _scan_one(stream)
        except (ValueError, EOFError, IndexError):  # not (or no more) pickle: stop, torch.load judges the rest
            return None
        if found:
            return found
    return None


def _scan_one(stream) -> str | None:
    """Walks one pickle to its STOP, keeping the stack as the unpickler would (values that are not
    strings stand as None), so that STACK_GLOBAL's module and name are the two strings it would pop;
    a name computed while unpickling is refused."""
    memo: dict[int, object] = {}
    stack: list[object] = []
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found = _refused(*str(arg).split(" ", 1))
        elif name == "STACK_GLOBAL":
            module, attr = stack[-2:] if len(stack) >= 2 else (None, None)
            found = (_refused(module, attr) if isinstance(module, str) and isinstance(attr, str)
                     else "a global whose name is computed while unpickling")
        else:
            found = None
        if found:
            return found
        if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):  # the top is kept (MEMOIZE's [any] -> [any] too)
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
            continue
        value = (arg if isinstance(arg, str) else arg.decode("latin-1")) if name in _STRINGS else \
            memo.get(int(arg)) if name in ("GET", "BINGET", "LONG_BINGET") else None
        _step(stack, opcode, value)
        if name == "STOP":
            return None
    raise EOFError("no STOP")


def _step(stack: list, opcode, value) -> None:
    """The opcode's effect on the stack: what it pops (down to the mark, for a slice), then what it pushes."""
    before = opcode.stack_before
    count = len(before)
    if pickletools.stackslice in before:
        while stack.pop() is not _MARK:
            pass
        count -= 2  # the mark and the slice
    if count > len(stack):
        raise IndexError("stack underflow")
    del stack[len(stack) - count:]
    stack.extend(_MARK if kind is pickletools.markobject else value for kind in opcode.stack_after)


def _refused(module: str, qualname: str = "") -> str | None:
    """``module.qualname`` when it is refused, as the unpickler would resolve it (Python 2 names mapped)."""
    module, qualname = _compat_pickle.NAME_MAPPING.get((module, qualname), (module, qualname))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    parts = [*module.split("."), *qualname.split(".")]
    first_of_name = qualname.split(".")[0]
    if parts[0] in FORBIDDEN_MODULES or first_of_name in FORBIDDEN_MODULES or parts[-1] in FORBIDDEN_NAMES:
        return ".".join([_READABLE.get(parts[0], parts[0]), *parts[1:]])
    return None


# Foreign globals stood in for, at most, before a checkpoint is given up on (each costs one more read).
MAX_STAND_INS = 64


class StandIn(dict):
    """Takes the place of a class or function a checkpoint names beyond torch's ``weights_only``
    allowlist (omegaconf's ``ListConfig`` in a Lightning checkpoint's hyper-parameters): it is made,
    called and given state without running anything of the file's, so that the tensors beside it
    can be read. A dict, so that a mapping subclass's items land in it: a custom dict class of
    tensors is then found as a state_dict, as its items are one."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __setstate__(self, state) -> None:
        self.__dict__["pickled_state"] = state

    def append(self, item) -> None:  # a list subclass's APPENDS
        self.setdefault("items", []).append(item)

    def extend(self, items) -> None:
        self.setdefault("items", []).extend(items)


def load_weights_only(path: Path, first_foreign: str) -> tuple[object, list[str]]:
    """``torch.load(weights_only=True)`` with every global outside its allowlist (``first_foreign``,
    then each one its next refusal names) read as a :class:`StandIn`: the checkpoint's tensors and
    plain containers as they are, its other objects inert. Returns the object and the names stood
    in for. ``forbidden_global`` has refused the dangerous names before this runs; the torch
    unpickler calls nothing but its allowlist and these stand-ins."""
    import pickle
    import re

    import torch

    names = [first_foreign]
    while True:
        try:
            with torch.serialization.safe_globals([(StandIn, name) for name in names]):
                return torch.load(str(path), map_location="cpu", weights_only=True), names
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            name = found.group(1) if found else None
            name = name if name is None or "." in name else f"builtins.{name}"  # torch names builtins bare
            if name is None or name in names or len(names) >= MAX_STAND_INS:
                raise
            names.append(name)
