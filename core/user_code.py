"""Code the user names on the command line: ``module:function`` or ``path/to/file.py:function``.

``--arch`` (the module factory of a state_dict checkpoint) and ``--metric`` (a task metric for
accuracy figures) both take one. The file's folder is on ``sys.path`` while it imports, so it can
import its neighbours; every failure is one line naming the option.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from mcomp.errors import BadInput, short


def load_callable(target: str, option: str, what: str = "function") -> Callable:
    """The callable ``target`` names; ``option`` (e.g. ``--arch X``) prefixes every error, ``what``
    names the callable in them (``factory``)."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise BadInput(f"{option}: expected module:{what} or path/to/file.py:{what}")
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    found = import_file(Path(where), option) if is_file else import_module(where, option)
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise BadInput(f"{option}: {where} has no attribute {attr!r}")
    if not callable(found):
        raise BadInput(f"{option}: {attr} is not callable")
    return found


def import_file(file: Path, option: str) -> Any:
    if not file.is_file():
        raise BadInput(f"{option}: {file}: no such file")
    name = f"mcomp_user_{abs(hash(str(file.resolve()))):x}_{file.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise BadInput(f"{option}: cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up here
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise BadInput(f"{option}: importing {file} failed ({short(exc, first_line=True)})") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


def import_module(name: str, option: str) -> Any:
    added = False
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `--arch mypkg.models:build` from the current folder
        added = True
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise BadInput(f"{option}: cannot import {name} ({short(exc, first_line=True)})") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
