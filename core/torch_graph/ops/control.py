"""Control flow: ``If`` and ``Loop``.

``If`` evaluates its condition eagerly and runs the chosen branch (branches read
outer-scope values); ``Loop`` runs its body eagerly too.  The branches and the body are
compiled at construction into programs over the enclosing graph's slots and run through
``_Ctx.run``.
"""

from __future__ import annotations

import torch

from mcomp.torch_graph.compiler import _op
from mcomp.torch_graph.ops.common import _scalar


@_op("If")
def _if(n):
    then_p, else_p = n.subprogram("then_branch"), n.subprogram("else_branch")

    def f(ctx, cond):
        return ctx.run(then_p if bool(cond.reshape(-1)[0]) else else_p)

    return f


@_op("Loop")
def _loop(n):
    body = n.subprogram("body")
    nv = n.nin - 2  # loop-carried values
    nscan = len(body.outputs) - 1 - nv

    def f(ctx, trip=None, cond=None, *carried):
        env = ctx.env
        limit = int(_scalar(trip)) if trip is not None else None
        go = bool(_scalar(cond)) if cond is not None else True
        vals = list(carried)
        scans: list[list[torch.Tensor]] = [[] for _ in range(nscan)]
        i = 0
        while go and (limit is None or i < limit):
            env[body.inputs[0]] = torch.tensor(i, dtype=torch.int64)
            env[body.inputs[1]] = torch.tensor(go)
            for s, v in zip(body.inputs[2:], vals):
                env[s] = v
            outs = ctx.run(body)
            go = bool(_scalar(outs[0]))
            vals = outs[1:1 + nv]
            for j, s in enumerate(outs[1 + nv:]):
                scans[j].append(s)
            i += 1
        stacked = [torch.stack(sc) if sc else torch.empty(0) for sc in scans]
        return (*vals, *stacked)

    return f
