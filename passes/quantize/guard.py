"""The latency guard: the written model is never slower than the input on the target provider.

Quantization pays only where the provider fuses the Q/DQ pairs into integer kernels and the
layer is big enough for the integer kernel to win. The guard measures instead of guessing:
the full candidate and one variant per node group sent back to float (int8 element-wise ops,
depthwise convs, the smallest layers, each compute op type) run interleaved
with the input in one measurement (spinning off, design §7); groups whose return to float
made the candidate faster are combined, and the best candidate is measured again against
the input (not a lone candidate: with nothing to choose from, its first measurement is not
biased low). If it is not faster than the input beyond the A/A noise, the guard says so.

Every measurement goes through ``measure``, the one place that reads the clock: tests replace
it (monkeypatch) with fixed ratios to check the guard's decisions on any machine load.

Size modes (weight-only int4: objective size, other kernels) are not asked for a gain: ``bound`` times
their variants (accuracy levels) against the input in one measurement, keeps the fastest, and accepts
it when its slowdown is within ``--max-slowdown`` (default ``DEFAULT_MAX_SLOWDOWN``), compared with the
A/A median as the noise allows: a ratio r passes when r ≤ max_slowdown × max(1, A/A median).

On a large model the guard takes minutes (every candidate built, then timed for ``runs`` rounds,
twice where there are variants), so it reports counts as it goes: candidates built, then candidates × rounds timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mcomp.passes.quantize.mapped_source import as_source
from mcomp.passes.quantize.target import INT8_FLOW_OPS

# int4 MatMulNBits ran ×1.26–1.44 of float MatMul at batch 1 on CPUs without VNNI (issue 13); 1.5 keeps
# the model people choose int4 for (×0.2–0.3 the size) on such a CPU, and refuses a kernel path that
# costs more than half again the input's latency (an accuracy level the CPU emulates, tiny layers).
DEFAULT_MAX_SLOWDOWN = 1.5
GAIN = 0.02  # a variant must beat another (and the input, beyond the A/A noise) by this share to count as faster
INPUT = "input"
FULL = "all quantized"


@dataclass
class Timing:
    """One interleaved measurement of candidates against the input."""

    ratios: dict[str, float]  # candidate label → median per-round latency, as a share of the input's
    p50_ms: dict[str, float]  # every label's median latency (the input's under ``INPUT``)
    noise_floor: dict | None  # the input against a second session of itself (A/A): median, p10, p90


def measure(models: list[tuple[str, bytes]], feeds, providers, threads, runs: int, progress=None) -> Timing:
    """Interleaved rounds over ``models`` (the input first), with the A/A noise floor;
    ``progress(rounds done, runs)`` after each round."""
    from mcomp.bench import MEASURE_BUDGET_S, interleaved

    result = interleaved(models, feeds, providers=providers, threads=threads, warmup=3, runs=runs,
                         progress=progress, budget_s=MEASURE_BUDGET_S)
    return Timing({m.label: m.ratio for m in result.models[1:]}, {m.label: m.p50_ms for m in result.models},
                  result.noise_floor.to_dict() if result.noise_floor else None)


NOISY_BAND = 1.5  # A/A p90/p10 above this: the machine was too busy for the guard to tell a gain from noise


def noisy(noise_floor: dict | None) -> bool:
    """Whether the input against itself varied so much (p90/p10 > ``NOISY_BAND``) that "not faster" would
    say more about the machine than about the model: the message then says so, and what to do."""
    return bool(noise_floor) and noise_floor["p90"] > NOISY_BAND * max(noise_floor["p10"], 1e-9)


def threshold(noise_floor: dict | None) -> float:
    """The ratio a candidate must reach to count as faster: below 1 and below the A/A median, by ``GAIN``."""
    return min(1.0, noise_floor["median"] if noise_floor else 1.0) - GAIN


@dataclass
class Verdict:
    exclude: set[str]  # units sent back to float by the guard
    ratio: float | None  # best candidate / input (median of interleaved rounds)
    faster: bool
    noise_floor: dict | None
    trials: list[dict] = field(default_factory=list)
    groups_reverted: list[str] = field(default_factory=list)
    p50_ms: dict[str, float] = field(default_factory=dict)  # the input's and the best candidate's, last round
    max_slowdown: float | None = None  # size modes: the bound the slowdown was held to
    within: bool | None = None  # size modes: the ratio is within max_slowdown × max(1, A/A median)
    chosen: str | None = None  # size modes: the variant kept (the fastest)
    full: "Verdict | None" = None  # where groups were reverted: the full candidate's own verdict (first round)

    def without_reversions(self) -> "Verdict":
        """The full candidate's verdict, kept when the groups sent back to float broke the accuracy
        budget (a variant is timed, not scored: the flow scores the winner). Its ratio is its first-round
        one; the trials stay, and say what was measured."""
        return Verdict(set(), self.full.ratio, self.full.faster, self.full.noise_floor, self.trials, [],
                       self.full.p50_ms)

    def to_dict(self) -> dict:
        out = {"ratio": round(self.ratio, 4), "faster": self.faster, "noise_floor": self.noise_floor,
               "threshold": round(threshold(self.noise_floor), 4),
               "p50_ms": {k: round(v, 4) for k, v in self.p50_ms.items()},
               "groups_reverted": self.groups_reverted, "trials": self.trials}
        if self.max_slowdown is not None:
            out.update(max_slowdown=self.max_slowdown, allowed=round(allowed(self.max_slowdown, self.noise_floor), 4),
                       within=self.within, chosen=self.chosen)
        return out


def allowed(max_slowdown: float, noise_floor: dict | None) -> float:
    """The ratio a size mode's candidate may reach: the bound, widened by an A/A median above 1."""
    return max_slowdown * max(1.0, noise_floor["median"] if noise_floor else 1.0)


def bound(variants: dict[str, bytes], reference: bytes, feeds, providers, threads, runs: int, max_slowdown: float,
          progress=None) -> Verdict:
    """Size modes: every variant timed against the input in one interleaved measurement; the fastest is
    kept, and is ``within`` when its ratio is at most ``allowed(max_slowdown, A/A)``."""
    report = progress or (lambda description, done, total: None)
    timing = measure([(INPUT, reference), *variants.items()], feeds, providers, threads, runs,
                     lambda done, total: report("quantize: timing against the input", done, total))
    best = min(timing.ratios, key=timing.ratios.get)
    ratio = timing.ratios[best]
    trials = [{"round": 1, "candidate": label, "ratio": round(r, 4), "float_nodes": 0}
              for label, r in timing.ratios.items()]
    return Verdict(set(), ratio, ratio <= threshold(timing.noise_floor), timing.noise_floor, trials, [],
                   {"input": timing.p50_ms[INPUT], "candidate": timing.p50_ms[best]}, max_slowdown,
                   ratio <= allowed(max_slowdown, timing.noise_floor), best)


def groups(units, base: set[str]) -> dict[str, set[str]]:
    """Named node groups that may not pay, among the units not already excluded."""
    live = [u for u in units if u.name not in base]
    compute = [u for u in live if u.compute]
    found = {  # pass-through ops (Reshape, MaxPool, Relu …) are not tried: their Q/DQ fold away or cost nothing
        "int8 element-wise ops": {u.name for u in live if u.op_type in INT8_FLOW_OPS},
        "depthwise convs": {u.name for u in live if u.depthwise},
    }
    sized = [u for u in compute if u.macs is not None and not u.depthwise]
    if len(sized) >= 4:
        cut = float(np.percentile([u.macs for u in sized], 25))
        found["smallest layers (bottom quarter by MACs)"] = {u.name for u in sized if u.macs <= cut}
    types = sorted({u.op_type for u in compute})
    if len(types) > 1:
        for op in types:
            found[f"all {op}"] = {u.name for u in compute if u.op_type == op}
    everything = {u.name for u in live}
    return {k: v for k, v in found.items() if v and v != everything}


def guard(build, units, base: set[str], reference: bytes, feeds, providers, threads, runs: int,
          try_groups: bool = True, progress=None, source=None) -> Verdict:
    """Chooses the fastest candidate among the full one and its group variants; compares it to the input.
    ``progress(description, done, total)`` hears of each candidate built and each round timed;
    ``source(proto, name)`` gives a candidate as the timing takes it (its bytes by default; a big
    model's flow writes it to a file, so that the variants are not all held in memory)."""
    source = source or (lambda proto, name: as_source(proto))
    report = progress or (lambda description, done, total: None)
    named = groups(units, base) if try_groups else {}
    candidates = {FULL: set(base)} | {f"float: {k}": base | v for k, v in named.items()}
    built = {}
    for k, (label, ex) in enumerate(candidates.items()):
        report("quantize: latency guard, building candidates", k, len(candidates))
        built[label] = source(build(ex), f"guard{k}")
    # The best of several candidates is timed again: its first ratio is the least of several noisy ones, so it
    # reads low. A lone candidate was not chosen from others, so its one measurement stands (a big model's
    # measurement opens three sessions: on 0.75 GiB, 10 s of the pass's 48 s).
    second_size = (2 if len(named) > 1 else 1) if named else 0  # the best candidate, and the helping groups combined
    timing = Timed(report, runs, len(built), second_size)
    timing.round(0, runs)
    first = measure([(INPUT, reference), *built.items()], feeds, providers, threads, runs, timing.round)
    ratios = first.ratios
    trials = [{"round": 1, "candidate": label, "ratio": round(r, 4), "float_nodes": len(candidates[label] - base)}
              for label, r in ratios.items()]
    if not named:
        ratio = ratios[FULL]
        return Verdict(set(), ratio, ratio <= threshold(first.noise_floor), first.noise_floor, trials, [],
                       {"input": first.p50_ms[INPUT], "candidate": first.p50_ms[FULL]})
    helping = [k for k in named if ratios[f"float: {k}"] < ratios[FULL] * (1 - GAIN)]
    best_label = min(ratios, key=ratios.get)
    final = {best_label: candidates[best_label]}
    if len(helping) > 1:
        combined = base.union(*(named[k] for k in helping))
        label = "float: " + " + ".join(helping)
        final[label] = combined
        built[label] = source(build(combined), "guard_combined")
    timing.next(len(final))
    second = measure([(INPUT, reference), *((k, built[k]) for k in final)], feeds, providers, threads, runs,
                     timing.round)
    trials += [{"round": 2, "candidate": label, "ratio": round(r, 4), "float_nodes": len(final[label] - base)}
               for label, r in second.ratios.items()]
    winner = min(second.ratios, key=second.ratios.get)
    ratio = second.ratios[winner]
    reverted = [] if winner == FULL else winner[len("float: "):].split(" + ")
    p50 = {"input": second.p50_ms[INPUT], "candidate": second.p50_ms[winner]}
    full = Verdict(set(), ratios[FULL], ratios[FULL] <= threshold(first.noise_floor), first.noise_floor, [], [],
                   {"input": first.p50_ms[INPUT], "candidate": first.p50_ms[FULL]})
    return Verdict(final[winner] - base, ratio, ratio <= threshold(second.noise_floor), second.noise_floor, trials,
                   reverted, p50, full=full)


class Timed:
    """The guard's two measurements as one count, candidates × rounds: ``round`` is the callback one
    measurement calls after each round; ``next`` moves on to the second, whose size is known only then."""

    def __init__(self, report, runs: int, first: int, second: int):
        self.report, self.runs, self.sizes, self.index = report, runs, [first, second], 0

    def round(self, done: int, runs: int) -> None:
        done = done * self.runs // max(runs, 1)  # timed in sequential blocks, a measurement counts blocks × runs
        before = self.sizes[0] * self.runs if self.index else 0
        self.report("quantize: latency guard, timing", before + done * self.sizes[self.index],
                    sum(self.sizes) * self.runs)

    def next(self, size: int) -> None:
        self.index, self.sizes[1] = 1, size
        self.round(0, self.runs)
