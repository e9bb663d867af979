"""The latency guard: the written model is never slower than the input on the target provider.

Quantization pays only where the provider fuses the Q/DQ pairs into integer kernels and the
layer is big enough for the integer kernel to win. The guard measures instead of guessing:
the full candidate and one variant per node group sent back to float (int8 element-wise ops,
depthwise convs, the smallest layers, each compute op type) run interleaved
with the input in one measurement (spinning off, design §7); groups whose return to float
made the candidate faster are combined, and the best candidate is measured again against
the input. If it is not faster than the input beyond the A/A noise, the guard says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mcomp.passes.quantize.target import INT8_FLOW_OPS

GAIN = 0.02  # a variant must beat another by this share to count as faster


@dataclass
class Verdict:
    exclude: set[str]  # units sent back to float by the guard
    ratio: float | None  # best candidate / input (median of interleaved rounds)
    faster: bool
    noise_floor: dict | None
    trials: list[dict] = field(default_factory=list)
    groups_reverted: list[str] = field(default_factory=list)


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
          try_groups: bool = True) -> Verdict:
    """Chooses the fastest candidate among the full one and its group variants; compares it to the input."""
    from mcomp.bench import interleaved

    named = groups(units, base) if try_groups else {}
    candidates = {"all quantized": set(base)} | {f"float: {k}": base | v for k, v in named.items()}
    built = {label: build(ex).SerializeToString() for label, ex in candidates.items()}
    first = interleaved([("input", reference), *built.items()], feeds, providers=providers, threads=threads,
                        warmup=3, runs=runs)
    ratios = {m.label: m.ratio for m in first.models[1:]}
    trials = [{"round": 1, "candidate": label, "ratio": round(r, 4), "float_nodes": len(candidates[label] - base)}
              for label, r in ratios.items()]
    full = ratios["all quantized"]
    helping = [k for k in named if ratios[f"float: {k}"] < full * (1 - GAIN)]
    best_label = min(ratios, key=ratios.get)
    final = {best_label: candidates[best_label]}
    if len(helping) > 1:
        combined = base.union(*(named[k] for k in helping))
        label = "float: " + " + ".join(helping)
        final[label] = combined
        built[label] = build(combined).SerializeToString()
    second = interleaved([("input", reference), *((k, built[k]) for k in final)], feeds, providers=providers,
                         threads=threads, warmup=3, runs=runs)
    confirmed = {m.label: m.ratio for m in second.models[1:]}
    trials += [{"round": 2, "candidate": label, "ratio": round(r, 4), "float_nodes": len(final[label] - base)}
               for label, r in confirmed.items()]
    winner = min(confirmed, key=confirmed.get)
    ratio = confirmed[winner]
    floor = second.noise_floor.to_dict() if second.noise_floor else None
    faster = ratio <= min(1.0, floor["median"] if floor else 1.0) - GAIN
    reverted = [] if winner == "all quantized" else winner[len("float: "):].split(" + ")
    return Verdict(final[winner] - base, ratio, faster, floor, trials, reverted)


def measure(reference: bytes, candidate: bytes, feeds, providers, threads, runs: int) -> tuple[float, dict | None]:
    """One interleaved comparison: candidate / input, and the A/A noise floor."""
    from mcomp.bench import interleaved

    result = interleaved([("input", reference), ("candidate", candidate)], feeds, providers=providers,
                         threads=threads, warmup=3, runs=runs)
    return result.models[1].ratio, (result.noise_floor.to_dict() if result.noise_floor else None)
