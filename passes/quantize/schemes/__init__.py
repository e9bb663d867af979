"""Quantization modes: one ``Scheme`` class per module, registered by name; ``--mode`` picks one.

The flow (``quantize.flow``) drives every scheme the same way — prepare → full candidate →
accuracy budget → latency guard (for the ``latency`` objective) — and asks the scheme only
what is declared on ``base.Scheme``: does it calibrate (``calibrates``: the pass then needs
data), which ``--bits`` it takes, its objective, its units, how to build a candidate.

To add a mode ``foo``:

1. write ``schemes/foo.py`` with a class decorated ``@register("foo")``: subclass ``ort.OrtScheme``
   for a graph that an onnxruntime quantizer rewrites (declare ``opset``, ``keep_matmul``,
   ``takes_per_channel``; write ``find``, ``describe``, ``_build``), or ``base.Scheme`` otherwise;
2. add its import line below.

``--mode foo`` is then valid (the Config's ``mode`` Literal is ``MODES``), its ``help`` shows in
``mcomp passes``, and the pass requires calibration data when ``calibrates`` says why.
"""

from __future__ import annotations

from mcomp.passes.quantize.schemes.base import REGISTRY, Scheme, Unchanged, Unit, register

# One line per mode; the order is --mode's (the first is the default).
from mcomp.passes.quantize.schemes import static  # noqa: E402,F401
from mcomp.passes.quantize.schemes import dynamic  # noqa: E402,F401
from mcomp.passes.quantize.schemes import weight_only  # noqa: E402,F401
from mcomp.passes.quantize.schemes import fp16  # noqa: E402,F401
from mcomp.passes.quantize.schemes import kmeans  # noqa: E402,F401

MODES: tuple[str, ...] = tuple(REGISTRY)


def get(mode: str) -> type[Scheme]:
    """The scheme registered as ``mode``."""
    return REGISTRY[mode]


def help_text() -> str:
    """--mode's description: each mode with what it does."""
    return "; ".join(f"{name}: {cls.help}" if cls.help else name for name, cls in REGISTRY.items())


__all__ = ["MODES", "REGISTRY", "Scheme", "Unchanged", "Unit", "get", "help_text", "register"]
