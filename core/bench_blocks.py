"""Latency in sequential blocks, for models too big to hold side by side (design §7).

Interleaved rounds (``mcomp.bench.interleaved``) keep every model's session alive while they
alternate, which is the right method while they fit: both see the same state of the machine. For
models of big weights that holds every model's weights at once: the reference and the candidate of a
pass on a 4 GiB model would need 8 GiB. Here each model is timed in a block of its own (A, B, …, A):
one session is made, run once, warmed up, timed for its runs and released before the next is made,
so one model's weights are resident at a time. The first model runs again last and every ratio is
against both reference blocks; the A/A band reads each reference block as a candidate against the
other (its runs over the other's median, both ways), so a drift of the machine between blocks widens
the band that every ratio is read against. A big model's single run is long: runs per
block are capped so that the timed runs take about ``BUDGET_S`` in all, with one warm-up run a block
after the run that pages its weights in, and the method string says so. In a measurement a command
makes on its own (``settle``: a report's latency row, quantize's guard) a block also ends once its
median is known within ``PRECISION`` (:func:`median_settled`): a steady model's blocks then take
``MIN_RUNS`` or a few more (a 0.75 GiB chain's report row timed 3 blocks of 30 runs, 2.3 s, issue 12),
while a noisy machine's blocks run their planned runs (this VM runs that chain's float reference at
20 or 27 ms, switching within a block: its blocks did not settle, the candidates' did at 11–26 runs).
``mcomp bench`` times every run it is asked.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np

from mcomp.bench import BenchResult, NoiseFloor, batch_size, latency_stats, open_measured

# One model of this many bytes of weights or more is timed in blocks: its sessions are made without
# prepacked weights (mcomp.sources) and hold about its size each, two of them twice the model. None:
# ``sources.BIG_WEIGHTS``, read at each call (read once on import, a test that lowered it while this
# module was first imported left every later measurement of the session in blocks).
SEQUENTIAL_FROM: int | None = None
# All the models' weights above this share of the memory still available: blocks too, whatever their size.
MEMORY_SHARE = 0.25
BUDGET_S = 4.0  # timed seconds of all blocks together, when the runs are long
MIN_RUNS = 10  # timed runs a block however long a run is: a median of fewer says little
PRECISION = 0.02  # a settling block ends once its median's 95 % interval is within ±2 % of it
GIB = 1 << 30


def apart_reason(sources: list[bytes | str]) -> str | None:
    """Why ``sources`` are timed one at a time rather than side by side, or None when they fit."""
    from mcomp.data_checks import available_memory
    from mcomp.sources import weight_bytes

    sizes = [weight_bytes(s) for s in sources]
    total = sum(sizes)
    count = "two" if len(sizes) == 2 else str(len(sizes))
    held = f"the {count} models' weights, {total / GIB:.2f} GiB, are not held at once"
    big = _sequential_from()
    if max(sizes) >= big:
        return f"{held} (a model of {big / (1 << 20):.0f} MiB of weights or more is big)"
    available = available_memory()
    if available is not None and total > MEMORY_SHARE * available:
        return f"{held} (over {MEMORY_SHARE:.0%} of the {available / GIB:.1f} GiB of memory available)"
    return None


def _sequential_from() -> int:
    from mcomp.sources import BIG_WEIGHTS  # at the call: see SEQUENTIAL_FROM

    return BIG_WEIGHTS if SEQUENTIAL_FROM is None else SEQUENTIAL_FROM


def runs_per_block(seconds_per_run: float, runs: int, blocks: int) -> int:
    """``runs``, or fewer when that many runs of every block would take over ``BUDGET_S``; at least
    ``MIN_RUNS`` (or ``runs`` when fewer were asked)."""
    affordable = int(BUDGET_S / max(seconds_per_run * blocks, 1e-9))
    return min(runs, max(MIN_RUNS, affordable))


def median_settled(seconds: np.ndarray, precision: float = PRECISION) -> bool:
    """Whether ``seconds`` (``MIN_RUNS`` at least) know their median within ``precision`` of it: the
    distribution-free 95 % interval of a median lies between two order statistics (the count of runs
    below the true median is binomial, n and ½; its normal approximation places them 0.98·√n either
    side of the middle), and both must be within ``precision`` of the sample's median. Two clusters of
    run times (a VM moving between two speeds) keep it unsettled, as they should."""
    n = seconds.size
    if n < MIN_RUNS:
        return False
    ordered = np.sort(seconds)
    half = 0.98 * np.sqrt(n)
    low = ordered[max(int(np.floor(n / 2 - half)) - 1, 0)]  # order statistics counted from 1
    high = ordered[min(int(np.ceil(n / 2 + 1 + half)) - 1, n - 1)]
    median = float(np.median(ordered))
    return bool(low >= median * (1 - precision) and high <= median * (1 + precision))


def sequential(models: list[tuple[str, bytes | str]], feeds: list[dict[str, np.ndarray]], *, reason: str,
               providers: list[str], threads: int | None, warmup: int, runs: int, noise_floor: bool,
               provider_label: str, progress: Callable[[int, int], None] | None = None,
               settle: bool = False) -> BenchResult:
    """Every model timed in its own block, the first model's block again last when ``noise_floor``;
    ``progress(runs done, runs planned)`` after each timed run. ``reason`` (from :func:`apart_reason`)
    goes into the result's method. ``settle``: a block ends once :func:`median_settled` holds."""
    order = list(range(len(models))) + ([0] if noise_floor else [])
    planned, timed, peaks, done, counts = runs, {j: [] for j in range(len(models))}, {}, 0, []
    for b, j in enumerate(order):
        label, source = models[j]
        session, own, peak = open_measured(label, source, feeds, providers, threads)
        peaks.setdefault(j, peak)
        if b == 0:  # planned from a warm run of the first model (the run that paged its weights in came before)
            start = time.perf_counter()
            session.run(None, own[0])
            planned = runs_per_block(time.perf_counter() - start, runs, len(order))
        # a capped block's runs are long: one warm-up after the first run is past onnxruntime's start-up
        for i in range(int(b == 0), warmup if planned == runs else 1):
            session.run(None, own[i % len(own)])
        block = np.zeros(planned)
        for r in range(planned):
            feed = own[r % len(own)]
            start = time.perf_counter()
            session.run(None, feed)
            block[r] = time.perf_counter() - start
            done += 1
            if progress is not None:
                progress(done, done + planned * (len(order) - b) - r - 1)
            if settle and median_settled(block[:r + 1]):
                block = block[:r + 1]
                break
        timed[j].append(block)
        counts.append(block.size)
        del session, own  # released before the next block's session maps its weights
        gc.collect()
    batch = batch_size(feeds[0])
    reference = np.concatenate(timed[0])
    stats = []
    for j, (label, _) in enumerate(models):
        seconds = np.concatenate(timed[j])
        ratio = None if j == 0 else float(np.median(seconds) / np.median(reference))
        stats.append(latency_stats(label, seconds, batch, ratio, peaks[j]))
    floor = None
    if noise_floor:
        first, again = timed[0]  # each reference block read as a candidate against the other: both orders
        aa = np.concatenate([first / np.median(again), again / np.median(first)])
        floor = NoiseFloor(float(np.median(aa)), float(np.percentile(aa, 10)), float(np.percentile(aa, 90)))
    return BenchResult(stats, floor, provider_label, threads,
                       method=describe(models, order, planned, runs, reason, counts if settle else None))


def describe(models, order: list[int], planned: int, runs: int, reason: str, settled: list[int] | None = None) -> str:
    """The method as a report states it: why blocks, in what order, how many runs, how the ratio is made;
    ``settled``: the runs each block took, where blocks ended once their medians settled."""
    blocks = ", ".join(models[j][0] for j in order)
    capped = f" (of {runs} asked: capped to about {BUDGET_S:.0f} s of timed runs in all)" if planned < runs else ""
    runs_said = f"{planned} timed runs each{capped}"
    if settled is not None and any(count < planned for count in settled):
        runs_said = (f"up to {planned} timed runs each{capped}, a block ending once its median was known within "
                     f"±{PRECISION:.0%} (95 %, at least {MIN_RUNS} runs): {', '.join(map(str, settled))} runs")
    floor = ("; A/A noise floor = each reference block's runs over the other's median, both ways (a drift "
             "between blocks widens it)") if len(order) > len(models) else ""
    return (f"sequential blocks: {reason}. One session alive at a time, spinning off, blocks {blocks}, "
            f"{runs_said}; ratio = median of a model's runs / median of the "
            f"{models[0][0]}'s{floor}")
