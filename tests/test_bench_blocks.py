"""Latency of models too big to hold side by side: sequential blocks, one session alive at a time
(mcomp.bench_blocks), while small models keep interleaved rounds with every session alive."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcomp import bench, bench_blocks, data_checks, evaluate
from mcomp.data import Dataset

DIM = 16


def matmul(scale: float) -> bytes:
    weight = np.random.default_rng(0).standard_normal((DIM, DIM)).astype(np.float32) * np.float32(scale)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, DIM])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


FEEDS = [{"x": np.random.default_rng(k).standard_normal((1, DIM)).astype(np.float32)} for k in range(4)]


@pytest.fixture
def live(monkeypatch):
    """Counts the sessions alive together: each session made is watched through a weak reference,
    and the most alive at once is kept."""
    made, most = [], [0]
    real = evaluate.session

    def watched(*args, **kwargs):
        session = real(*args, **kwargs)
        made.append(weakref.ref(session))
        most[0] = max(most[0], sum(ref() is not None for ref in made))
        return session

    monkeypatch.setattr(evaluate, "session", watched)
    monkeypatch.setattr(data_checks, "available_memory", lambda: 64 << 30)
    return made, most


def test_big_models_are_timed_in_blocks_one_session_at_a_time(live, monkeypatch):
    made, most = live
    monkeypatch.setattr(bench_blocks, "SEQUENTIAL_FROM", 0)  # every model counts as big
    monkeypatch.setattr(bench_blocks, "BUDGET_S", 0.0)  # runs capped to MIN_RUNS a block
    progress = []
    result = bench.interleaved([("reference", matmul(1.0)), ("candidate", matmul(0.5))], FEEDS,
                               providers=["CPUExecutionProvider"], warmup=2, runs=bench_blocks.MIN_RUNS + 2,
                               progress=lambda done, total: progress.append((done, total)))
    assert len(made) == 3, "blocks reference, candidate, reference: a session each"
    assert most[0] == 1, "a block's session is released before the next is made"
    reference, candidate = result.models
    assert reference.ratio is None and candidate.ratio is not None and candidate.ratio > 0
    assert candidate.runs == bench_blocks.MIN_RUNS and reference.runs == 2 * bench_blocks.MIN_RUNS
    assert result.noise_floor is not None and result.noise_floor.p10 <= result.noise_floor.median <= result.noise_floor.p90
    assert result.method.startswith("sequential blocks: the two models' weights, ")
    assert "are not held at once" in result.method and "blocks reference, candidate, reference" in result.method
    assert f"of {bench_blocks.MIN_RUNS + 2} asked: capped" in result.method
    assert progress[-1] == (3 * bench_blocks.MIN_RUNS, 3 * bench_blocks.MIN_RUNS)
    assert result.to_dict()["method"] == result.method


def test_small_models_keep_interleaved_rounds(live):
    made, most = live
    result = bench.interleaved([("reference", matmul(1.0)), ("candidate", matmul(0.5))], FEEDS,
                               providers=["CPUExecutionProvider"], warmup=1, runs=5)
    assert most[0] == 3, "reference, candidate and the A/A session alive together"
    assert result.method == bench.INTERLEAVED and result.models[1].runs == 5
    assert result.noise_floor is not None


def test_interleaved_rounds_within_a_time_budget(live):
    """A measurement a command makes on its own takes about ``budget_s`` of timed rounds, at least
    ``MIN_ROUNDS``, and says so; without a budget (``mcomp bench``) every round asked is timed."""
    asked = bench.MIN_ROUNDS + 5
    pair = [("reference", matmul(1.0)), ("candidate", matmul(0.5))]
    progress = []
    cut = bench.interleaved(pair, FEEDS, providers=["CPUExecutionProvider"], warmup=1, runs=asked,
                            budget_s=1e-9, progress=lambda done, total: progress.append((done, total)))
    assert [m.runs for m in cut.models] == [bench.MIN_ROUNDS] * 2 and progress[-1] == (bench.MIN_ROUNDS,) * 2
    assert cut.method.startswith(bench.INTERLEAVED + f"; {bench.MIN_ROUNDS} rounds (of {asked} asked: capped to "
                                 "about 0 s of timed rounds, a round taking ")
    whole = bench.interleaved(pair, FEEDS, providers=["CPUExecutionProvider"], warmup=1, runs=asked, budget_s=60.0)
    assert [m.runs for m in whole.models] == [asked] * 2 and whole.method == bench.INTERLEAVED


def test_models_over_a_share_of_available_memory_are_apart(monkeypatch):
    sources = [matmul(1.0), matmul(0.5)]
    monkeypatch.setattr(data_checks, "available_memory", lambda: 64 << 30)
    assert bench_blocks.apart_reason(sources) is None
    monkeypatch.setattr(data_checks, "available_memory", lambda: len(sources[0]))
    reason = bench_blocks.apart_reason(sources)
    assert reason is not None and "of memory available" in reason


def test_runs_per_block_capped_by_the_budget():
    assert bench_blocks.runs_per_block(0.001, 50, 3) == 50
    assert bench_blocks.runs_per_block(bench_blocks.BUDGET_S / 3 / 20.5, 50, 3) == 20
    assert bench_blocks.runs_per_block(10.0, 50, 3) == bench_blocks.MIN_RUNS
    assert bench_blocks.runs_per_block(10.0, 4, 3) == 4


def test_report_entry_states_the_blocks(live, monkeypatch):
    from mcomp import pipeline
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    monkeypatch.setattr(bench_blocks, "SEQUENTIAL_FROM", 0)
    spec = Pipeline(steps=[single_step("optimize", {})], measure=Measure(runs=3, warmup=1))
    entry = pipeline.measure_latency(matmul(1.0), matmul(0.5), Dataset(FEEDS), ["CPUExecutionProvider"], spec)
    assert live[1][0] == 1
    assert entry["method"].startswith("sequential blocks: ") and entry["noise_floor"] is not None
    assert abs(entry["ratio"] - entry["candidate"]["ratio"]) < 1e-3


def test_a_median_settles_when_its_interval_is_narrow_not_when_runs_fall_in_two_clusters():
    rng = np.random.default_rng(0)
    steady = 0.020 * (1 + 0.002 * rng.standard_normal(bench_blocks.MIN_RUNS))
    assert bench_blocks.median_settled(steady)
    assert not bench_blocks.median_settled(steady[:-1]), "fewer than MIN_RUNS runs say little"
    two_speeds = np.array([0.020, 0.027] * 15)  # a VM moving between two speeds, as this one does
    assert not bench_blocks.median_settled(two_speeds)
    spread = 0.020 * (1 + 0.05 * rng.standard_normal(30))  # ±5 % runs: the median is not known within ±2 %
    assert not bench_blocks.median_settled(spread)
    outliers = np.concatenate([steady, steady, [0.05, 0.06]])  # a few slow runs among many do not unsettle it
    assert bench_blocks.median_settled(outliers)


def test_a_commands_own_measurement_ends_a_block_once_its_median_settles(live, monkeypatch):
    """Blocks of a measurement made with a budget (a report's row, quantize's guard) end when their median
    settles, and the method gives each block's runs; ``mcomp bench`` (no budget) times every run it asks."""
    monkeypatch.setattr(bench_blocks, "SEQUENTIAL_FROM", 0)
    monkeypatch.setattr(bench_blocks, "median_settled", lambda seconds: seconds.size >= bench_blocks.MIN_RUNS)
    models = [("reference", matmul(1.0)), ("candidate", matmul(0.5))]
    runs = bench_blocks.MIN_RUNS + 5
    settled = bench.interleaved(models, FEEDS, providers=["CPUExecutionProvider"], warmup=1, runs=runs,
                                budget_s=60.0)
    reference, candidate = settled.models
    assert candidate.runs == bench_blocks.MIN_RUNS and reference.runs == 2 * bench_blocks.MIN_RUNS
    assert f"up to {runs} timed runs each" in settled.method
    assert f"{bench_blocks.MIN_RUNS}, {bench_blocks.MIN_RUNS}, {bench_blocks.MIN_RUNS} runs" in settled.method
    asked = bench.interleaved(models, FEEDS, providers=["CPUExecutionProvider"], warmup=1, runs=runs)
    assert asked.models[1].runs == runs and f"{runs} timed runs each;" in asked.method
