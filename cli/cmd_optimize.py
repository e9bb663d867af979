"""``mcomp optimize MODEL [--level ...]``: its options are the optimize Config's (cli/generate.py)."""

from __future__ import annotations

from mcomp.cli.generate import CommandSpec

SPEC = CommandSpec(help="""Fold constants and BatchNorm, drop dead/identity nodes, fuse, then run onnxruntime's offline optimizer.

    Every stage is checked numerically against the input; one that changes outputs beyond --tolerance is dropped.

    Example: mcomp optimize model.onnx --level basic -o model.opt.onnx
    """)
