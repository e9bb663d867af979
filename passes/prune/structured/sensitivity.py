"""Per-group sensitivity, measured: each group cut alone on a copy, both models run on a few examples.

``allocate`` is what ``prune --allocation sensitivity`` runs: the probes, the cost model and the
greedy of ``allocation``, then a check on a real cut that the allocation removes what the uniform
rate (or the target) would. A probe's figure is the fidelity lost (1 − the worst-slice cosine of
the outputs, as reports and gates read it) plus, when the data has labels and the model class
scores, the accuracy lost: accuracy alone moves in steps of 1/64 on 64 examples and is 0 for most
light cuts, which would leave the allocation blind; the cosine orders the groups between steps.

A group probed alone says little about its cut once its neighbours are cut too, so, as NetAdapt
does, a second stage probes the model cut to half the target and allocates the rest from there.
Neither answer is assumed better: both allocations are run on the probe examples and the one
that loses less is kept (benchmarks/prune_allocation.py, PP-OCRv4 det: at −30 % MACs two stages
won, held-out worst-slice cosine 0.95 against 0.93 for one stage and 0.06 uniform; at −50 % one
stage won, 0.25 against 0.10 uniform; on the digits CNN at −70 % two stages alone fell to 13 %
accuracy where one stage kept 41 %).

Cost: one onnxruntime session and one run over at most ``EXAMPLES`` examples per probe, up to
three probes per group and stage (the rates half of, at and past the working rate: sensitivity is
not linear in the rate, and the allocation moves rates both ways), and the number of groups
bounds the probes. Where that would take over ``PROBE_BUDGET_S`` (timed on the input's own session
and run), each probe runs fewer examples, down to ``MIN_EXAMPLES``: YOLOv8n at 320 × 320 had 251
probes of about 1.1 s, and its prune took the whole of a 6-minute ``mcomp auto`` trial. The
step's notes give the count, the examples and the time it took.
"""

from __future__ import annotations

import math
import time

from mcomp import evaluate
from mcomp.passes.prune.structured import allocation as al
from mcomp.passes.prune.structured.driver import copy_model, cut, measure

EXAMPLES = 64  # per probe: enough to order groups by sensitivity, few enough for a probe per group
MIN_EXAMPLES = 8  # a time-bound probe's floor: the cosine over 8 examples' outputs still orders the groups
PROBE_BUDGET_S = 60.0  # the probes of both stages, about, before examples are taken away
STAGES = 2
_FIX_ROUNDS = 4  # re-runs of the greedy when the real cut falls short of the cost model's count


def subset(dataset, limit: int = EXAMPLES):
    """The first feeds of ``dataset`` holding at most ``limit`` examples (at least one feed)."""
    n = count = 0
    for feed in dataset.feeds:
        first = next(iter(feed.values()))
        size = int(first.shape[0]) if first.ndim else 1
        if n and count + size > limit:
            break
        n, count = n + 1, count + size
    return dataset.head(max(n, 1))


def probe_rates(table: list[tuple[float, int]], level: int, center: float) -> list[tuple[float, int]]:
    """The levels past ``level`` nearest to the rates half of, at and past the working ``center``
    rate, without repeats."""
    cuts = table[level + 1:]
    if not cuts:
        return []
    wanted = (center / 2, center, (1 + center) / 2)
    return sorted({min(cuts, key=lambda c: abs(c[0] - w)) for w in wanted})


class Judge:
    """What a cut loses against ``reference`` on the probe examples (see the module docstring)."""

    def __init__(self, reference, data, ctx):
        self.data, self.ctx = data, ctx
        started = time.perf_counter()
        session = evaluate.session(reference, ctx.providers, ctx.threads)
        opened = time.perf_counter()
        self.names = [o.name for o in session.get_outputs()]
        self.ref = evaluate.run(session, data, "input")
        self.session_s, self.run_s = opened - started, time.perf_counter() - opened  # what a probe costs
        self.axes = evaluate.slice_axes(self.ref)
        self.acc_ref = evaluate.accuracy(self.ref, data)
        self.figure = f"1 − {ctx.fidelity} cosine" + (" + accuracy drop" if self.acc_ref is not None else "")

    def loss(self, model) -> float:
        out = evaluate.run(evaluate.session(model, self.ctx.providers, self.ctx.threads), self.data, "pruned")
        fid = evaluate.figure(evaluate.fidelity(self.ref, out, self.names, self.axes)["summary"], self.ctx.fidelity)
        loss = 1.0 - (fid if fid is not None and math.isfinite(fid) else 0.0)
        if self.acc_ref is not None:
            loss += self.acc_ref - (evaluate.accuracy(out, self.data) or 0.0)
        return max(0.0, loss)


def probe(current, judge: Judge, free, tables, state, center, options) -> dict[int, al.Curve]:
    """Each free group's sensitivity curve from its level in ``state`` on, measured on ``current``
    (the input, or the model cut at ``state`` by an earlier stage; ``judge`` compares with it)."""
    plan = [(g, level) for g in free for level in probe_rates(tables[g.id], state[g.id], center)]
    curves = {g.id: al.Curve([], tables[g.id][state[g.id]][0]) for g in free}
    for i, (group, (rate, kept)) in enumerate(plan):
        judge.ctx.progress("prune: sensitivity probes", i, len(plan))
        now = tables[group.id][state[group.id]][1]  # the group's channels in ``current``
        trial = copy_model(current)
        cut(trial, 0.0, rates={group.id: 1 - kept / now}, **options)
        curves[group.id].points.append((rate, judge.loss(trial)))
    judge.ctx.progress("prune: sensitivity probes", len(plan), len(plan))
    return curves


def _time_bound(sample, judge: Judge, planned: int):
    """``sample``'s first feeds, holding fewer examples, where ``planned`` probes on all of it would take
    over ``PROBE_BUDGET_S`` (each a session and a run, as long as the input's were); None where they fit
    or the sample cannot shrink."""
    per_probe = judge.session_s + judge.run_s
    if planned * per_probe <= PROBE_BUDGET_S or sample.samples <= MIN_EXAMPLES:
        return None
    run_share = max(PROBE_BUDGET_S / planned - judge.session_s, 0.0) / max(judge.run_s, 1e-9)
    fewer = subset(sample, max(MIN_EXAMPLES, int(sample.samples * run_share)))
    return fewer if fewer.samples < sample.samples else None


def allocate(model, groups, free, pinned: dict[int, float], *, rate: float, target: str,
             target_value: float | None, round_to: int, max_rate: float, shapes, data, ctx,
             options: dict, cost_kind: str = "macs") -> tuple[dict[int, float], dict, list[str]]:
    """Rates by group id for the ``free`` groups (``pinned`` ones keep theirs), the details and notes.

    The amount removed is measured, not assumed: in channels mode it is what the uniform ``rate``
    removes (in MACs) on a real cut; with a params/MACs target it is ``target_value`` of them.
    With ``cost_kind`` latency (channels mode only) the cost is the per-node time profiled on the
    target provider, and the amount is what the uniform rate removes of that time in its model."""
    start = time.perf_counter()
    kind = "params" if target == "params" else ("latency" if cost_kind == "latency" else "macs")
    index = 0 if kind == "params" else 1
    base = measure(model, shapes)[index]
    sample = subset(data)
    timing = None
    if kind == "latency":  # profiled on what the latency row times: one example, or --input-shape's batch
        from mcomp.bench import timed_feeds
        from mcomp.session import input_specs

        feed = timed_feeds(sample, input_specs(model), given=ctx.input_shapes, n=1)[0]
        cost, timing = al.latency_model(model, groups, feed, ctx.providers, ctx.threads)
    else:
        cost = al.param_model(model, groups) if kind == "params" else al.mac_model(model, groups, shapes)
    tables = {g.id: al.levels(g, round_to, max_rate) for g in free}
    by_id = {g.id: g for g in groups}

    def kept(g: int, r: float) -> float:
        return by_id[g].kept(r, round_to) / by_id[g].channels

    fixed = {g: kept(g, r) for g, r in pinned.items()}
    if kind == "latency":  # the uniform cut's share of the profiled time, in the same model the greedy uses
        wanted = cost.removed({**{g.id: kept(g.id, rate) for g in free}, **fixed}) / max(cost.total, 1e-12)
        center = rate
    elif target == "channels":
        uniform = copy_model(model)
        cut(uniform, rate, rates=pinned, **options)
        wanted = 1 - measure(uniform, shapes)[index] / base
        center = rate
    else:
        wanted = float(target_value)
        center = 1 - math.sqrt(1 - wanted)  # a conv's MACs fall with both its in and out channels
    channels = {g.id: g.channels for g in free}

    def fit(curves, start_levels, share):
        """Levels that remove ``share`` (checked on a real cut, or for latency in the profiled
        model, where a re-timing would measure noise), the cut model and what it removed."""
        goal, got = share * cost.total, 0.0
        for _ in range(_FIX_ROUNDS + 1):
            levels = al.Greedy(cost, tables, channels, curves, fixed, start=start_levels).run(goal)
            cut_model = copy_model(model)
            cut(cut_model, 0.0, rates={**{g: tables[g][v][0] for g, v in levels.items()}, **pinned}, **options)
            if kind == "latency":
                shares = {**{g: tables[g][v][1] / channels[g] for g, v in levels.items()}, **fixed}
                return levels, cut_model, cost.removed(shares) / max(cost.total, 1e-12)
            got = 1 - measure(cut_model, shapes)[index] / base
            if got >= share - 0.002 or goal >= cost.total:
                break
            goal += (share - got) * cost.total  # the model missed some nodes (unknown shapes, a Concat's share)
        return levels, cut_model, got

    judge = Judge(model, sample, ctx)
    zero = dict.fromkeys(tables, 0)
    planned = STAGES * sum(len(probe_rates(tables[g.id], 0, center)) for g in free)
    fewer = _time_bound(sample, judge, planned)
    if fewer is not None:
        sample, judge = fewer, Judge(model, fewer, ctx)
    first = probe(model, judge, free, tables, zero, center, options)
    stacked = {g: al.Stacked([c]) for g, c in first.items()}
    candidates = {"one stage": fit(first, zero, wanted)}
    probes = sum(len(c.points) for c in first.values())
    # Gradients were taken on the uncut model: a second stage probing a half-cut copy would score its
    # smaller tensors with them (shapes (16,16,3,3) against (32,16,3,3)); gradient criteria stop at one stage.
    if STAGES > 1 and options.get("grads") is None:
        half, halfway, _ = fit(first, zero, wanted / 2)
        second = probe(halfway, Judge(halfway, sample, ctx), free, tables, half, center, options)
        probes += sum(len(c.points) for c in second.values())
        for g, c in second.items():
            stacked[g].curves.append(c)
        candidates["two stages"] = fit(stacked, half, wanted)
    losses = {name: judge.loss(cand[1]) for name, cand in candidates.items()}
    chosen = min(losses, key=lambda name: (losses[name], name))
    state, _, got = candidates[chosen]
    rates = {g: tables[g][level][0] for g, level in state.items()}
    seconds = time.perf_counter() - start
    info = {
        "method": "sensitivity", "cost": kind, "measure": judge.figure, "data": sample.describe(),
        "probes": probes, "seconds": round(seconds, 3), "removed_target": round(wanted, 6), "removed": round(got, 6),
        "candidates": {name: round(loss, 6) for name, loss in losses.items()}, "chosen": chosen,
        **({"timing": timing} if timing else {}),
        "groups": [{"key": g.key, "channels": g.channels, "rate": rates[g.id], "kept": tables[g.id][state[g.id]][1],
                    "sensitivity": [[[r, round(v, 6)] for r, v in c.points] for c in stacked[g.id].curves]}
                   for g in free],
    }
    lo, hi = (min(rates.values()), max(rates.values())) if rates else (0.0, 0.0)
    asked = f"uniform {rate:g}" if target == "channels" else f"target {target} −{target_value:.0%}"
    if timing:
        shapes_text = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in timing["feed_shapes"].items())
        asked += (f"; latency profiled per node on {timing['provider']} at {shapes_text}, median of "
                  f"{timing['runs']} runs: {timing['timed_ms']:.3f} ms mapped to nodes, "
                  f"{timing['unmapped_ms']:.3f} ms not")
    notes = [f"sensitivity allocation: {len(free)} groups, rates {lo:.2f}–{hi:.2f} ({asked}); "
             f"{kind} −{got:.1%} (wanted −{wanted:.1%}); {chosen} chosen (loss on the probe examples "
             + ", ".join(f"{n} {v:.4f}" for n, v in losses.items()) + f"); {probes} probes on {sample.samples} "
             f"examples of {sample.source or 'the data'} in {seconds:.1f} s"
             + (f" (fewer examples a probe than {EXAMPLES}: at the input's pace the probes would have taken "
                f"over {PROBE_BUDGET_S:.0f} s)" if fewer is not None else "")]
    return rates, info, notes


__all__ = ["EXAMPLES", "STAGES", "Judge", "allocate", "probe", "probe_rates", "subset"]
