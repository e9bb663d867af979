"""Which node onnxruntime's quantizer failed on, so that it alone stays float.

A failure inside the quantizer mcomp builds on is not the user's fault, and not the end of the
run (onnxruntime 1.32's int32-bias check, ``_adjust_weight_scale_for_int32_bias``, compares an
array as a truth value when a per-channel Gemm's bias is 2-D). The node is named by the
quantizer's own frames where one holds it (``bias_info``, ``node``, an op quantizer's
``self.node``); else it is found by bisection: the shortest run of candidate nodes, in graph
order, whose exclusion lets the build through ends with it. Failures while calibrating are not
node-specific (the ranges of every tensor are collected at once) and are not handled here.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable, Iterable

import onnxruntime

_QUANTIZER = Path(onnxruntime.__file__).parent / "quantization"


def inside_quantizer(exc: BaseException) -> bool:
    """``exc`` was raised inside onnxruntime's quantization package, outside its calibrator."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or any(Path(f.filename).name == "calibrate.py" for f in frames):
        return False
    return any(Path(f.filename).is_relative_to(_QUANTIZER) for f in frames)


def named_node(exc: BaseException, candidates: Iterable[str]) -> str | None:
    """The candidate node the innermost quantizer frame was working on, where its locals say."""
    names = set(candidates)
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals
        for name in (getattr(local.get("bias_info"), "node_name", None),
                     getattr(local.get("node"), "name", None),
                     getattr(getattr(local.get("self"), "node", None), "name", None)):
            if isinstance(name, str) and name in names:
                return name
    return None


def bisect(fails: Callable[[set[str]], bool], candidates: list[str]) -> str | None:
    """The node whose exclusion lets the build through, given ``fails(excluded)`` (True: it still fails).
    None when it fails with every candidate excluded: the failure is not a node's."""
    if not candidates or fails(set(candidates)):
        return None
    lo, hi = 0, len(candidates)  # excluding candidates[:lo] fails (lo = 0: the failure seen), [:hi] passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(set(candidates[:mid])):
            lo = mid
        else:
            hi = mid
    return candidates[hi - 1]
