"""``mcomp prune MODEL --rate 0.5 [...]``: its options are the prune Config's (cli/generate.py)."""

from __future__ import annotations

from mcomp.cli.generate import CommandSpec

SPEC = CommandSpec(help="""Prune weights or channels; the report gives the requested and achieved figures per layer.

    Examples: mcomp prune model.onnx --rate 0.8 (unstructured, global magnitude);
    mcomp prune model.onnx --method structured --rate 0.5 --importance l2;
    mcomp prune model.onnx --method structured --target macs --rate 0.5
    """)
