"""Recurrent layers: LSTM, GRU and RNN.

LSTM/GRU/RNN are unrolled in Python with the ONNX gate orders (LSTM iofc, GRU zrh),
directions, initial states, ``sequence_lens``, peepholes, clip and ``layout``, and the
ONNX activation functions (with their alpha/beta).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from mcomp.torch_graph.compiler import _NodeInfo, _op
from mcomp.torch_graph.errors import _Unsupported

# name -> (function(x, alpha, beta), uses alpha, uses beta, default alpha, default beta)
_RNN_ACTS: dict[str, tuple[Callable, bool, bool, float, float]] = {
    "relu": (lambda x, a, b: torch.relu(x), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: torch.tanh(x), False, False, 0.0, 0.0),
    "sigmoid": (lambda x, a, b: torch.sigmoid(x), False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, True, True, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: F.leaky_relu(x, a), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), True, False, 1.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * torch.tanh(b * x), True, True, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: torch.clamp(a * x + b, 0, 1), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: F.elu(x, a), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: F.softsign(x), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: F.softplus(x), False, False, 0.0, 0.0),
}


def _rnn_activations(n: _NodeInfo, defaults: list[str], ndir: int) -> list[list[Callable]]:
    names = n.attr("activations") or defaults * ndir
    if len(names) == len(defaults) and ndir == 2:
        names = names * 2
    if len(names) != len(defaults) * ndir:
        raise _Unsupported(f"{len(names)} activations for {ndir} direction(s)")
    alphas, betas = list(n.attr("activation_alpha") or []), list(n.attr("activation_beta") or [])
    funcs = []
    for name in names:
        spec = _RNN_ACTS.get(name.lower())
        if spec is None:
            raise _Unsupported(f"activation {name}")
        fn, ua, ub, da, db = spec
        a = alphas.pop(0) if ua and alphas else da
        b = betas.pop(0) if ub and betas else db
        funcs.append(functools.partial(fn, a=a, b=b))
    k = len(defaults)
    return [funcs[d * k:(d + 1) * k] for d in range(ndir)]


def _reverse_time(x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """Reverse each batch column of a [T, B, ...] tensor within its own length."""
    if lens is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    ln = lens.to(x.device).long()[None, :]
    idx = torch.where(t < ln, ln - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(0, idx)


def _rnn_common(n: _NodeInfo, kind: str):
    H = n.attr("hidden_size")
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _Unsupported(f"direction={direction}")
    ndir = 2 if direction == "bidirectional" else 1
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
    acts = _rnn_activations(n, defaults, ndir)
    clip = n.attr("clip")
    layout = n.attr("layout", 0)
    return H, direction, ndir, acts, clip, layout


def _cl(t: torch.Tensor, clip: float | None) -> torch.Tensor:
    return t if clip is None else t.clamp(-clip, clip)


def _run_direction(step, X, xw, h, lens, reverse):
    """Unroll ``step(xw_t, state) -> (out, state)`` over time with optional lengths."""
    T = X.shape[0]
    if reverse:
        xw = _reverse_time(xw, lens)
    outs = []
    valid = None if lens is None else (torch.arange(T, device=X.device)[:, None] < lens.to(X.device)[None, :])
    state = h
    for t in range(T):
        out, new = step(xw[t], state)
        if valid is not None:
            m = valid[t][:, None]
            new = tuple(torch.where(m, a, b) for a, b in zip(new, state))
            out = torch.where(m, out, torch.zeros_like(out))
        state = new
        outs.append(out)
    Y = torch.stack(outs) if outs else X.new_zeros((0, X.shape[1], h[0].shape[-1]))
    if reverse:
        Y = _reverse_time(Y, lens)
    return Y, state


@_op("LSTM")
def _lstm(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "LSTM")
    coupled = n.attr("input_forget", 0)

    def f(ctx, X, W, R, B=None, lens=None, h0=None, c0=None, P=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
            c0 = c0.transpose(0, 1) if c0 is not None else None
        batch = X.shape[1]
        Ys, Hs, Cs = [], [], []
        for d in range(ndir):
            fa, ga, ha = acts[d]
            Rt = R[d].t()
            xw = X @ W[d].t()
            if B is not None:
                xw = xw + B[d][:4 * H] + B[d][4 * H:]
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)
            c = c0[d] if c0 is not None else X.new_zeros(batch, H)
            pi, po, pf = (P[d][:H], P[d][H:2 * H], P[d][2 * H:]) if P is not None else (None, None, None)

            def step(xt, state, Rt=Rt, fa=fa, ga=ga, ha=ha, pi=pi, po=po, pf=pf):
                hp, cp = state
                g = xt + hp @ Rt
                i, o, fg, cc = g.split(H, -1)
                if pi is not None:
                    i, fg = i + pi * cp, fg + pf * cp
                i = fa(_cl(i, clip))
                fg = 1 - i if coupled else fa(_cl(fg, clip))
                cn = fg * cp + i * ga(_cl(cc, clip))
                if po is not None:
                    o = o + po * cn
                hn = fa(_cl(o, clip)) * ha(cn)
                return hn, (hn, cn)

            reverse = direction == "reverse" or d == 1
            Y, (h, c) = _run_direction(step, X, xw, (h, c), lens, reverse)
            Ys.append(Y)
            Hs.append(h)
            Cs.append(c)
        Y, Yh, Yc = torch.stack(Ys, 1), torch.stack(Hs), torch.stack(Cs)
        if layout:
            Y, Yh, Yc = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1), Yc.transpose(0, 1)
        return (Y, Yh, Yc)

    return f


@_op("GRU")
def _gru(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "GRU")
    lbr = n.attr("linear_before_reset", 0)

    def f(ctx, X, W, R, B=None, lens=None, h0=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
        batch = X.shape[1]
        Ys, Hs = [], []
        for d in range(ndir):
            fa, ga = acts[d]
            xw = X @ W[d].t()
            rb = None
            if B is not None:
                xw = xw + B[d][:3 * H]
                rb = B[d][3 * H:]
            Rzr, Rh = R[d][:2 * H].t(), R[d][2 * H:].t()
            rbzr = rb[:2 * H] if rb is not None else 0
            rbh = rb[2 * H:] if rb is not None else 0
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)

            def step(xt, state, fa=fa, ga=ga, Rzr=Rzr, Rh=Rh, rbzr=rbzr, rbh=rbh):
                (hp,) = state
                xz, xr, xh = xt.split(H, -1)
                hz, hr = (hp @ Rzr + rbzr).split(H, -1)
                z = fa(_cl(xz + hz, clip))
                r = fa(_cl(xr + hr, clip))
                if lbr:
                    hh = ga(_cl(xh + r * (hp @ Rh + rbh), clip))
                else:
                    hh = ga(_cl(xh + (r * hp) @ Rh + rbh, clip))
                hn = (1 - z) * hh + z * hp
                return hn, (hn,)

            reverse = direction == "reverse" or d == 1
            Y, (h,) = _run_direction(step, X, xw, (h,), lens, reverse)
            Ys.append(Y)
            Hs.append(h)
        Y, Yh = torch.stack(Ys, 1), torch.stack(Hs)
        if layout:
            Y, Yh = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1)
        return (Y, Yh)

    return f


@_op("RNN")
def _rnn(n):
    H, direction, ndir, acts, clip, layout = _rnn_common(n, "RNN")

    def f(ctx, X, W, R, B=None, lens=None, h0=None):
        if layout:
            X = X.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
        batch = X.shape[1]
        Ys, Hs = [], []
        for d in range(ndir):
            (fa,) = acts[d]
            xw = X @ W[d].t()
            if B is not None:
                xw = xw + B[d][:H] + B[d][H:]
            Rt = R[d].t()
            h = h0[d] if h0 is not None else X.new_zeros(batch, H)

            def step(xt, state, fa=fa, Rt=Rt):
                hn = fa(_cl(xt + state[0] @ Rt, clip))
                return hn, (hn,)

            Y, (h,) = _run_direction(step, X, xw, (h,), lens, direction == "reverse" or d == 1)
            Ys.append(Y)
            Hs.append(h)
        Y, Yh = torch.stack(Ys, 1), torch.stack(Hs)
        if layout:
            Y, Yh = Y.permute(2, 0, 1, 3), Yh.transpose(0, 1)
        return (Y, Yh)

    return f
