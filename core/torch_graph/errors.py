"""The converter's errors: :class:`UnsupportedOp` for users, ``_Unsupported`` inside.

An op handler (or a tensor conversion) raises ``_Unsupported`` at construction for one
setting it does not implement; the compiler collects every such case, and unknown ops, and
the module raises them together as one :class:`UnsupportedOp`.  In a module of their own
so that every other module of the package can import them without an import cycle.
"""

from __future__ import annotations

from mcomp.errors import BadInput


class UnsupportedOp(BadInput):
    """The graph holds ops (or op settings) this converter cannot run; the message lists
    every one of them with its domain and node names."""


class _Unsupported(Exception):
    """Raised by an op handler at construction for a setting it does not implement."""
