"""Small helpers shared by the op handlers.

Shape-like tensors read as Python ints, ONNX per-axis pads turned into ``F.pad``'s order,
the handler for ops with one output and no attributes, and per-channel parameters shaped
to broadcast along an axis.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mcomp.torch_graph.compiler import _NodeInfo


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t: torch.Tensor) -> Any:
    return t.reshape(-1)[0].item()


def _torch_pad(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX per-axis (begin, end) -> F.pad's flat list, last axis first."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def _one(fn: Callable[..., torch.Tensor]) -> Callable[[_NodeInfo], Callable]:
    """A handler for an op with one output and no attributes."""

    def handler(n: _NodeInfo):
        return lambda ctx, *xs: (fn(*xs),)

    return handler


def _bcast_to_axis(p: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A 1-D per-channel tensor shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if p.dim() <= 1 and p.numel() > 1:
        shape = [1] * rank
        shape[axis] = -1
        return p.reshape(shape)
    return p
