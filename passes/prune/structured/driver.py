"""How much: a uniform share of every prunable group's channels, or the share that meets a target.

``prune_structured(model, rate=0.3)`` removes 30 % of the channels of every prunable group
(ranked by ``importance``), keeping a multiple of ``round_to`` and never fewer than ``round_to``
channels per group (per Split piece, when a group is split). With ``target="params"`` or
``"macs"`` the rate is found by bisection: the smallest uniform rate whose pruned copy has lost
``target_value`` of the parameters (``mcomp.summary.tensor_counts``) or MACs
(``mcomp.graph.macs``, at ``input_shapes`` exactly as given: None counts dynamic dims as 1, as the
report's MACs do, so the target is met in the figure the user reads). Rounding to ``round_to``
makes the uniform rate a staircase: on PP-OCRv4 det every 24-channel group drops to 16 at rate 1/6
at once, MACs jump from −17 % to −40 %, so where the smallest rate that meets the target overshoots
it, ``_refine`` cuts only some of the groups that round differently, or holds them back and cuts
the others harder, whichever lands closest; the note states the share actually removed.

```yaml
steps:
  - prune: {method: structured, rate: 0.5, importance: l1, round_to: 8}
```
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from mcomp.external_data import release_pages, release_tensor
from mcomp.kernels.importance import keep_channels, rounded_keep
from mcomp.passes.prune import criteria
from mcomp.passes.prune.structured.groups import ChannelGroup, find_groups
from mcomp.passes.prune.structured.hidden import NOTE
from mcomp.passes.prune.structured.prepare import infer_shapes, prepare, reshare_shapes
from mcomp.passes.prune.structured.report import GroupRecord, StructuredReport
from mcomp.passes.prune.structured.scores import group_scores
from mcomp.passes.prune.structured.surgery import remove_channels

# Chosen by measurement (benchmarks/prune.py; tests/test_prune_structured_real.py): ResNet-18 at 224²
# with 30 % of its channels removed ran, interleaved on onnxruntime CPU, at 0.50× the input's time
# with round_to=1 (45/90/179/358 channels), 0.39–0.41× with 8 and 0.38–0.41× with 16, although
# 8 and 16 keep more MACs (0.52×, 0.54× vs 0.51×); 8 is as fast as 16 and closer to the rate asked.
DEFAULT_ROUND_TO = 8
TARGETS = ("channels", "params", "macs")
_BISECT_STEPS = 12
_MAX_RATE = 0.95
_CLOSE = 0.01  # a bracket this close to the target needs no per-group refinement


def prune_structured(model: ir.Model, *, rate: float, importance: str = "l1", round_to: int = DEFAULT_ROUND_TO,
                     exclude: Callable[[ir.Node], bool] | None = None, grads: dict[str, np.ndarray] | None = None,
                     seed: int = 0, target: str = "channels", target_value: float | None = None,
                     input_shapes: dict[str, tuple[int, ...]] | None = None,
                     rates: dict[int, float] | None = None, hidden_rate: float | None = None,
                     data: list[dict] | None = None, providers: list[str] | None = None) -> StructuredReport:
    """Removes channels in place and returns what was done (see the module docstring). ``rates``
    pins some groups' rates by id (chosen by ``allocation``, or given as ``group_rates``): the
    uniform rate, or the bisection towards a target, moves only the other groups. ``hidden_rate``
    also cuts a transformer's residual width (``hidden``), at that rate and every layer alike;
    the bisection leaves it there. ``data`` (feeds): the removed channels' means are kept in their
    consumers' biases (``compensate``), read on ``providers``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if criteria.get(importance).gradients and grads is None:
        raise ValueError(f"{importance} importance needs grads (∂L/∂w by tensor name)")
    if round_to < 1:
        raise ValueError("round_to must be at least 1")
    if hidden_rate is not None and not 0 <= hidden_rate < 1:
        raise ValueError("hidden_rate must be in [0, 1)")
    prepare(model)
    shapes = input_shapes or None  # not a default of our own: the report counts MACs at these shapes
    params0, macs0 = measure(model, shapes)
    release_pages(model)  # the count read every weight: not resident on top of the scoring and the cut
    notes, pinned, rates = [], dict(rates or {}), {}
    options = dict(importance=importance, round_to=round_to, exclude=exclude, grads=grads, seed=seed,
                   hidden_rate=hidden_rate)
    if target != "channels":
        if target_value is None or not 0 < target_value < 1:
            raise ValueError(f"target {target!r} needs target_value in (0, 1)")
        if _free_groups(model, exclude, pinned, hidden_rate):
            rate, rates, note = _bisect(model, target, target_value, shapes, (params0, macs0), options, pinned)
            notes += note
        else:
            notes.append(f"every group's rate was given: target {target} −{target_value:.0%} not sought again")
    elif not 0 <= rate < 1:
        raise ValueError("rate must be in [0, 1)")
    report = StructuredReport("structured", rate, importance, round_to, target, target_value,
                              parameters_before=params0, macs_before=macs0, macs_input_shapes=_listed(shapes))
    means = None
    if data:
        from mcomp.passes.prune.structured.compensate import channel_means

        groups = find_groups(model, prepared=True, hidden=hidden_rate is not None)
        means, examples = channel_means(model, groups, data, providers or ["CPUExecutionProvider"])
        report.compensated = {"consumers": 0, "of": 0, "examples": examples}
        release_pages(model)
    report.groups = cut(model, rate, rates={**rates, **pinned}, means=means, compensated=report.compensated,
                        **options)
    report.parameters_after, report.macs_after = measure(model, shapes)
    release_pages(model)
    report.notes = notes + _fallback_notes(report, importance) + _hidden_notes(report, hidden_rate)
    return report


def cut(model: ir.Model, rate: float, *, importance: str, round_to: int, exclude=None, grads=None,
        seed: int = 0, groups: list[ChannelGroup] | None = None,
        rates: dict[int, float] | None = None, hidden_rate: float | None = None,
        means: dict | None = None, compensated: dict | None = None) -> list[GroupRecord]:
    """One pass at a uniform ``rate`` (``rates`` overrides it by group id; ``hidden_rate``, where
    given, sets the hidden group's): every group is scored and chosen on the unpruned tensors first
    (a weight is a producer in one group and a consumer in another), then the channels are removed.
    ``means`` (``compensate.channel_means``): every cut group's consumers' biases keep the removed
    channels' means, all before the first cut (a bias may be another group's, which slices it);
    ``compensated`` counts them."""
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = find_groups(model, prepared=True, hidden=hidden_rate is not None)
    rates = {**{g.id: hidden_rate for g in groups if g.label == "hidden"}, **(rates or {})}
    records, plan = [], []
    for group in groups:
        record = GroupRecord(group.id, group.chain, group.channels, group.channels, reason=group.reason,
                             key=group.key)
        records.append(record)
        if not group.prunable:
            continue
        hit = _excluded(group, exclude)
        if hit is not None:
            record.reason = f"excluded ({hit})"
            continue
        scores, used = group_scores(group, importance, grads=grads, rng=rng)
        record.importance = used
        record.rate = (rates or {}).get(group.id, rate)
        keep = select(group, scores, record.rate, round_to)
        plan.append((group, keep))
        record.channels_after = int(keep.size)
        if group.head_size:
            heads = len(group.units or ())
            record.note = f"{group.label}: {heads} heads → {heads * keep.size // group.channels}"
        elif group.label == "hidden":
            record.note = f"hidden width {group.channels} → {keep.size} in every layer"
    release_pages(model)  # the scores read every weight; the cut reads the kept slices again
    if means is not None:
        _compensate(model, plan, means, compensated)
    for group, keep in plan:
        if keep.size < group.channels:
            cut_from = [model.graph.initializers[m.tensor].const_value for m in group.members
                        if m.tensor in model.graph.initializers]
            remove_channels(model, group, keep, infer=False)
            for tensor in cut_from:  # a replaced mapped weight's pages: read once, not held to the end
                release_tensor(tensor)
    reshare_shapes(model)
    infer_shapes(model)
    return records


def _compensate(model: ir.Model, plan: list, means: dict, counts: dict | None) -> None:
    from mcomp.passes.prune.structured.compensate import compensate

    for group, keep in plan:
        if keep.size < group.channels:
            done = compensate(model, group, keep, means)
            if counts is not None:
                counts["consumers"] += done
                counts["of"] += sum(1 for m in group.members if m.role == "consumer" and m.tensor)


def select(group: ChannelGroup, scores: np.ndarray, rate: float, round_to: int) -> np.ndarray:
    """The channels to keep: the best-scored ``1 - rate`` of each segment, rounded to ``round_to``.
    A group of tied units (attention heads) keeps the best ``1 - rate`` of its units, scored by
    the sum of their channels' scores (``ChannelGroup.units_kept``)."""
    units = group.units
    if units is not None:
        unit_scores = np.array([scores[u].sum() for u in units])
        kept = keep_channels(unit_scores, group.units_kept(rate, round_to))
        return np.sort(np.concatenate([units[i] for i in kept]))
    keep = []
    for lo, hi in group.segments:
        count = rounded_keep(hi - lo, rate, round_to)
        keep.append(lo + keep_channels(scores[lo:hi], count))
    return np.concatenate(keep) if keep else np.arange(group.channels)


def _excluded(group: ChannelGroup, exclude) -> str | None:
    if exclude is None:
        return None
    for member in group.members:
        if exclude(member.node):
            return member.node.name or member.node.op_type
    return None


def _free_groups(model, exclude, pinned, hidden_rate=None) -> list[ChannelGroup]:
    """The prunable groups whose rate the uniform rate (or the bisection) sets (not the hidden group,
    whose rate ``hidden_rate`` sets)."""
    return [g for g in find_groups(model, prepared=True, hidden=hidden_rate is not None)
            if g.prunable and _excluded(g, exclude) is None and g.id not in pinned and g.label != "hidden"]


def _bisect(model, target, target_value, shapes, base, options,
            pinned: dict[int, float]) -> tuple[float, dict[int, float], list[str]]:
    """The smallest uniform rate whose pruned copy removes ``target_value`` of params or MACs, then,
    where rounding makes that rate overshoot, per-group rates that come closer (``_refine``).
    ``pinned`` groups keep their rates throughout."""
    index = 0 if target == "params" else 1

    def removed(rate: float, rates: dict[int, float] | None = None) -> float:
        trial = copy_model(model)
        cut(trial, rate, rates={**(rates or {}), **pinned}, **options)
        return 1 - measure(trial, shapes)[index] / base[index]

    lo, hi = 0.0, _MAX_RATE
    reached = removed(hi)
    if reached < target_value:
        return hi, {}, [f"target {target} −{target_value:.0%} not reachable: −{reached:.1%} at rate {hi}"]
    got_lo, got_hi = removed(lo), reached  # not 0 at rate 0: rounding may drop a few channels
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        got = removed(mid)
        if got >= target_value:
            hi, got_hi = mid, got
        else:
            lo, got_lo = mid, got
    rate, rates, got = hi, {}, got_hi
    if got_hi - target_value > _CLOSE:
        rate, rates, got = _refine(model, lo, hi, (got_lo, got_hi), target_value, removed, options, pinned)
    note = f"rate {rate:.4f} found by bisection for {target} −{target_value:.0%}: removed −{got:.1%}"
    if rates:
        note += (f" ({len(rates)} groups at other rates: rounding to {options['round_to']} channels moves "
                 f"groups in steps, −{got_lo:.1%} at uniform rate {lo:.4f}, −{got_hi:.1%} at {hi:.4f})")
    return rate, rates, [note] + _shapes_note(target, shapes)


def _refine(model, lo, hi, got, target_value, removed, options, pinned) -> tuple[float, dict[int, float], float]:
    """Closer to the target than uniform ``hi``, which overshoots because the groups in ``moved``
    (those keeping fewer channels at ``hi`` than at ``lo``) all drop a ``round_to`` step at once.

    First ``hi`` in only the first k of them (graph order, k bisected, the rest at ``lo``); then,
    from the largest k still short of the target, the rest of ``moved`` stay at ``lo`` while every
    other group's rate rises from ``hi`` until the target is met. The candidate closest to the
    target wins (ties: the one that meets it). Returns (rate, per-group rates, share removed)."""
    def counts(group, rate):
        return group.kept(rate, options["round_to"])

    moved = [g.id for g in _free_groups(model, options["exclude"], pinned, options.get("hidden_rate"))
             if counts(g, lo) != counts(g, hi)]
    seen = {0: got[0], len(moved): got[1]}
    k_lo, k_hi = 0, len(moved)
    while k_hi - k_lo > 1:
        k = (k_lo + k_hi) // 2
        seen[k] = removed(lo, dict.fromkeys(moved[:k], hi))
        k_lo, k_hi = (k_lo, k) if seen[k] >= target_value else (k, k_hi)

    def prefix(k):
        return (hi, {}, seen[k]) if k == len(moved) else (lo, dict.fromkeys(moved[:k], hi), seen[k])

    candidates = [prefix(k_lo), prefix(k_hi)]
    held = dict.fromkeys(moved[k_lo:], lo)
    r_lo, r_hi = hi, _MAX_RATE
    got_r = removed(r_hi, held)
    if got_r >= target_value:
        for _ in range(_BISECT_STEPS // 2):
            mid = (r_lo + r_hi) / 2
            got_mid = removed(mid, held)
            r_lo, r_hi, got_r = (r_lo, mid, got_mid) if got_mid >= target_value else (mid, r_hi, got_r)
        candidates.append((r_hi, held, got_r))
    return min(candidates, key=lambda c: (abs(c[2] - target_value), c[2] < target_value))


def _shapes_note(target, shapes) -> list[str]:
    if target != "macs" or shapes:
        return []
    return ["MACs counted with dynamic dims = 1, as the report counts them; give --input-shape for the "
            "size the model runs at, where the costly layers differ"]


def copy_model(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def measure(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(parameters, MACs) as ``mcomp inspect`` counts them."""
    from mcomp.graph import macs
    from mcomp.summary import tensor_counts

    return tensor_counts(model)[0].parameters, macs(model, shapes).total


def default_input_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the MAC count: dynamic batch 1, other dynamic dims 64 (spatial sizes)."""
    shapes = {}
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None:
            continue
        shapes[value.name] = tuple(d if isinstance(d, int) and d >= 0 else (1 if i == 0 else 64)
                                   for i, d in enumerate(value.shape))
    return shapes


def _listed(shapes):
    return {k: list(v) for k, v in shapes.items()} if shapes else None


def _hidden_notes(report: StructuredReport, hidden_rate: float | None) -> list[str]:
    """What cutting the hidden width does to LayerNorm, or why it could not be cut."""
    if hidden_rate is None:
        return []
    cut_groups = [g for g in report.groups if g.chain.startswith("hidden:") and g.channels_after < g.channels_before]
    if cut_groups:
        return [NOTE]
    whole = [g for g in report.groups if g.chain.startswith("hidden:") and g.reason]
    if whole:
        return [f"hidden width left whole: {whole[0].reason}"]
    return ["hidden width: no group crosses a LayerNormalization over its channels (not a transformer's "
            "residual stream)"]


def _fallback_notes(report: StructuredReport, importance: str) -> list[str]:
    fell = [g.id for g in report.groups if g.importance and g.importance != importance]
    if not fell:
        return []
    return [f"{len(fell)} groups scored with {report.groups[fell[0]].importance} instead of {importance} "
            f"(no {criteria.get(importance).lacking}): groups {fell[:12]}"]
