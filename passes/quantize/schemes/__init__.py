"""Quantization modes: one ``Scheme`` class per module, registered by name; ``--mode`` picks one.

The flow (``quantize.flow``) drives every scheme the same way — prepare → full candidate →
accuracy budget → latency guard (for the ``latency`` objective) — and asks the scheme only
what is declared on ``base.Scheme``: does it calibrate (``calibrates``: the pass then needs
data), which ``--bits`` it takes, its objective, its units, how to build a candidate.

To add a mode ``foo``:

1. write ``schemes/foo.py`` with a class decorated ``@register("foo")``: subclass ``ort.OrtScheme``
   for a graph that an onnxruntime quantizer rewrites (declare ``opset``, ``keep_matmul``,
   ``takes_per_channel``; write ``find``, ``describe``, ``_build``), or ``base.Scheme`` otherwise;
2. add its line to ``DECLARED`` below: the mode, its module, its entry in ``--mode``'s help.

``--mode foo`` is then valid (the Config's ``mode`` Literal is ``MODES``), its help shows in
``mcomp passes``, and the pass requires calibration data when ``calibrates`` says why.

The names and help are declared here, apart from the classes, because ``mcomp quantize --help``
builds the Config and must not import onnx or onnxruntime (design §5); a scheme's module is
imported when ``get`` first asks for it. ``REGISTRY``, ``Scheme``, ``Unchanged``, ``Unit`` and
``register`` are ``base``'s, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcomp.passes.quantize.schemes.base import REGISTRY, Scheme, Unchanged, Unit, register

# One line per mode: its module and its help. The order is --mode's (the first is the default).
DECLARED: dict[str, tuple[str, str]] = {
    "static": ("static", "QDQ int8 with calibrated activations (needs data)"),
    "dynamic": ("dynamic", "int8 weights, activations at run time (MatMul/attention/LSTM)"),
    "weight-only": ("weight_only", "int4/int8 block-wise MatMul/Gather"),
    "fp16": ("fp16", ""),
    "kmeans": ("kmeans", "shared weights"),
}

MODES: tuple[str, ...] = tuple(DECLARED)
_BASE = ("REGISTRY", "Scheme", "Unchanged", "Unit", "register")


def get(mode: str) -> type[Scheme]:
    """The scheme registered as ``mode`` (its module is imported on the first call)."""
    importlib.import_module(f"{__name__}.{DECLARED[mode][0]}")
    return importlib.import_module(f"{__name__}.base").REGISTRY[mode]


def help_text() -> str:
    """--mode's description: each mode with what it does."""
    return "; ".join(f"{name}: {text}" if text else name for name, (_, text) in DECLARED.items())


def __getattr__(name: str):
    """``base``'s names on first use; ``REGISTRY`` with every declared scheme registered in it."""
    if name not in _BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "REGISTRY":
        for mode in MODES:
            get(mode)
    return getattr(importlib.import_module(f"{__name__}.base"), name)


__all__ = ["DECLARED", "MODES", "REGISTRY", "Scheme", "Unchanged", "Unit", "get", "help_text", "register"]
