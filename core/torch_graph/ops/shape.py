"""Shape and indexing ops: Shape, Reshape, Transpose, Squeeze, Concat, Split, Slice,
Gather/Scatter, Expand, Tile, ConstantOfShape, Range, OneHot, TopK, CumSum, DepthToSpace...

Shape ops compute from the actual tensors at run time, so dynamic axes keep working.
Inputs that ONNX moved from attributes to tensors (axes, split, starts/ends) are read from
whichever the node's opset uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.errors import _Unsupported
from mcomp.torch_graph.ops.common import _ints, _scalar
from mcomp.torch_graph.tensors import _tensor_to_torch, _torch_dtype


@_op("Shape")
def _shape(n):
    start, end = n.attr("start", 0), n.attr("end", None)
    return lambda ctx, x: (torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device),)


@_op("Size")
def _size(n):
    return lambda ctx, x: (torch.tensor(x.numel(), dtype=torch.int64, device=x.device),)


@_op("Flatten")
def _flatten(n):
    axis = n.attr("axis", 1)

    def f(ctx, x):
        a = axis + x.dim() if axis < 0 else axis
        return (x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:])),)

    return f


@_op("Reshape")
def _reshape(n):
    allowzero = n.attr("allowzero", 0)
    attr_shape = n.attr("shape")

    def f(ctx, x, shape=None):
        s = _ints(shape) if shape is not None else list(attr_shape)
        if not allowzero:
            s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
        return (x.reshape(s),)

    return f


@_op("Transpose")
def _transpose(n):
    perm = n.attr("perm")
    return lambda ctx, x: (x.permute(perm if perm is not None else list(range(x.dim() - 1, -1, -1))),)


@_op("Squeeze")
def _squeeze(n):
    old = n.opset < 13
    attr_axes = n.attr("axes") if old else None

    def f(ctx, x, axes=None):
        ax = attr_axes if old else _ints(axes)
        if not ax:
            return (x.squeeze(),)
        return (x.squeeze(tuple(a % x.dim() for a in ax)),)

    return f


@_op("Unsqueeze")
def _unsqueeze(n):
    old = n.opset < 13
    attr_axes = n.attr("axes") if old else None

    def f(ctx, x, axes=None):
        ax = attr_axes if old else _ints(axes)
        r = x.dim() + len(ax)
        for a in sorted(a % r for a in ax):
            x = x.unsqueeze(a)
        return (x,)

    return f


@_op("Concat")
def _concat(n):
    axis = n.attr("axis")

    def f(ctx, *xs):
        r = max(x.dim() for x in xs)
        return (torch.cat([x for x in xs if x.dim() == r or x.numel()], axis % r),)

    return f


@_op("Split")
def _split(n):
    axis, nout = n.attr("axis", 0), n.nout
    old = n.opset < 13
    attr_split = n.attr("split") if old else None
    num_outputs = n.attr("num_outputs")

    def f(ctx, x, split=None):
        a = axis % x.dim()
        sizes = attr_split if old else _ints(split)
        if not sizes:
            length = x.shape[a]
            if num_outputs:
                chunk = -(-length // num_outputs)
                sizes = [chunk] * (num_outputs - 1) + [length - chunk * (num_outputs - 1)]
            else:
                sizes = [length // nout] * nout
        return tuple(torch.split(x, list(sizes), a))

    return f


def _slice(x, starts, ends, axes, steps):
    r = x.dim()
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * r
    flips = []
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= r
        dim = x.shape[ax]
        if sp == 0:
            raise ValueError("Slice step 0")
        st = st + dim if st < 0 else st
        en = en + dim if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), dim), min(max(en, 0), dim)
            index[ax] = slice(st, en, sp)
        else:
            st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
            count = max(0, (st - en + (-sp) - 1) // (-sp))
            if count == 0:
                index[ax] = slice(0, 0)
            else:
                index[ax] = slice(st + (count - 1) * sp, st + 1, -sp)
                flips.append(ax)
    y = x[tuple(index)]
    return y.flip(flips) if flips else y


@_op("Slice")
def _slice_op(n):
    if n.opset < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
        return lambda ctx, x: (_slice(x, starts, ends, axes, None),)
    return lambda ctx, x, starts, ends, axes=None, steps=None: (
        _slice(x, _ints(starts), _ints(ends), _ints(axes), _ints(steps)),)


@_op("Gather")
def _gather(n):
    axis = n.attr("axis", 0)

    def f(ctx, x, idx):
        a = axis % x.dim()
        if idx.dim() == 0:
            i = int(idx)
            return (x.select(a, i + x.shape[a] if i < 0 else i),)
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        y = torch.index_select(x, a, idx.reshape(-1))
        return (y.reshape(x.shape[:a] + idx.shape + x.shape[a + 1:]),)

    return f


@_op("GatherElements")
def _gather_elements(n):
    axis = n.attr("axis", 0)

    def f(ctx, x, idx):
        a = axis % x.dim()
        idx = torch.where(idx < 0, idx + x.shape[a], idx).long()
        return (torch.gather(x, a, idx),)

    return f


@_op("GatherND")
def _gather_nd(n):
    b = n.attr("batch_dims", 0)

    def f(ctx, x, idx):
        k = idx.shape[-1]
        bshape, rest = x.shape[:b], x.shape[b:]
        nb = math.prod(bshape)
        xf = x.reshape((nb,) + tuple(rest))
        idf = idx.reshape(nb, -1, k).long()
        idf = torch.where(idf < 0, idf + torch.tensor(rest[:k], device=idx.device), idf)
        bidx = torch.arange(nb, device=x.device).reshape(nb, 1)
        y = xf[(bidx,) + tuple(idf[..., j] for j in range(k))]
        return (y.reshape(tuple(idx.shape[:-1]) + tuple(rest[k:])),)

    return f


@_op("ScatterND")
def _scatter_nd(n):
    red = n.attr("reduction", "none")
    if red not in ("none", "add"):
        raise _Unsupported(f"reduction={red}")

    def f(ctx, x, idx, upd):
        k = idx.shape[-1]
        idx = idx.long()
        idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k], device=idx.device), idx)
        return (x.index_put(tuple(idx[..., j] for j in range(k)), upd, accumulate=red == "add"),)

    return f


@_op("ScatterElements", "Scatter")
def _scatter_elements(n):
    axis, red = n.attr("axis", 0), n.attr("reduction", "none")
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(red)
    if red != "none" and reduce is None:
        raise _Unsupported(f"reduction={red}")

    def f(ctx, x, idx, upd):
        a = axis % x.dim()
        idx = torch.where(idx < 0, idx + x.shape[a], idx).long()
        if reduce is None:
            return (torch.scatter(x, a, idx, upd),)
        return (torch.scatter_reduce(x, a, idx, upd, reduce, include_self=True),)

    return f


@_op("Expand")
def _expand(n):
    def f(ctx, x, shape):
        return (x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))),)

    return f


@_op("Tile")
def _tile(n):
    return lambda ctx, x, reps: (x.repeat(_ints(reps)),)


@_op("ConstantOfShape")
def _constant_of_shape(n):
    v = n.attr("value")
    value = _tensor_to_torch(v).reshape(-1)[0] if v is not None else torch.tensor(0.0)

    def f(ctx, shape):
        return (torch.full(_ints(shape), value.item(), dtype=value.dtype, device=shape.device),)

    return f


@_op("Range")
def _range(n):
    def f(ctx, start, limit, delta):
        s, lim, d = _scalar(start), _scalar(limit), _scalar(delta)
        count = max(math.ceil((lim - s) / d), 0)
        return (torch.arange(count, dtype=start.dtype, device=start.device) * d + s,)

    return f


@_op("EyeLike")
def _eye_like(n):
    k, dt = n.attr("k", 0), n.attr("dtype")

    def f(ctx, x):
        r, c = x.shape
        m = torch.arange(c, device=x.device)[None, :] - torch.arange(r, device=x.device)[:, None] == k
        return (m.to(_torch_dtype(dt) if dt is not None else x.dtype),)

    return f


@_op("OneHot")
def _one_hot(n):
    axis = n.attr("axis", -1)

    def f(ctx, idx, depth, values):
        dep = int(_scalar(depth))
        idx = idx.long()
        idx = torch.where(idx < 0, idx + dep, idx)
        valid = (idx >= 0) & (idx < dep)
        oh = F.one_hot(idx.clamp(0, dep - 1), dep).bool() & valid.unsqueeze(-1)
        y = torch.where(oh, values[1], values[0])
        return (y.movedim(-1, axis % y.dim()),)

    return f


@_op("TopK")
def _topk(n):
    axis, largest, k_attr = n.attr("axis", -1), bool(n.attr("largest", 1)), n.attr("k")

    def f(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else k_attr
        v, i = torch.topk(x, kk, axis, largest, True)
        return (v, i)

    return f


@_op("Trilu")
def _trilu(n):
    upper = n.attr("upper", 1)

    def f(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else 0
        return (torch.triu(x, kk) if upper else torch.tril(x, kk),)

    return f


@_op("CumSum")
def _cumsum(n):
    exclusive, reverse = n.attr("exclusive", 0), n.attr("reverse", 0)

    def f(ctx, x, axis):
        a = int(_scalar(axis)) % x.dim()
        if reverse:
            x = x.flip(a)
        y = torch.cumsum(x, a, dtype=x.dtype)
        if exclusive:
            y = torch.cat([torch.zeros_like(y.narrow(a, 0, 1)), y.narrow(a, 0, y.shape[a] - 1)], a)
        return (y.flip(a) if reverse else y,)

    return f


@_op("DepthToSpace")
def _depth_to_space(n):
    b, mode = n.attr("blocksize"), n.attr("mode", "DCR")

    def f(ctx, x):
        N, C, H, W = x.shape
        if mode == "DCR":
            y = x.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(N, C // (b * b), b, b, H, W).permute(0, 1, 4, 2, 5, 3)
        return (y.reshape(N, C // (b * b), H * b, W * b),)

    return f


@_op("SpaceToDepth")
def _space_to_depth(n):
    b = n.attr("blocksize")

    def f(ctx, x):
        N, C, H, W = x.shape
        y = x.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
        return (y.reshape(N, C * b * b, H // b, W // b),)

    return f
