"""Progress with counts and an ETA (a five-minute quantize must not show a bare spinner for minutes), the
quantize steps that report those counts, and what the quantize pass writes: only the opset domains its
nodes use, and never a model onnxruntime cannot load (fp16 of a graph whose If bodies read float values).

The clock is faked wherever a figure depends on it: nothing here depends on the machine's speed or load."""

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from mcomp import data, evaluate
from mcomp import model as model_io
from mcomp.cli import console
from mcomp.embedded import builtin_path
from mcomp.graph import all_nodes
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize
from mcomp.passes.quantize.schemes import fp16

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def clock(monkeypatch):
    """A fake ``time.monotonic`` for the console: set ``clock[0]`` to move time."""
    now = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    monkeypatch.delenv("MCOMP_PROGRESS_SECONDS", raising=False)
    console.configure(quiet=False)
    return now


def test_plain_progress_lines_carry_counts_and_an_eta(monkeypatch, capsys, clock):
    monkeypatch.setattr(console, "err", Console(stderr=True, force_terminal=False))
    with console.Progress(enabled=True) as progress:
        progress("quantize: latency guard, timing", 0, 90)  # t=100: the step starts
        clock[0] = 112
        progress("quantize: latency guard, timing", 6, 90)  # 2 s a unit, 84 units left
        clock[0] = 125
        progress("quantize: calibration", 0, 64)  # a new step: no rate yet, so no estimate
        clock[0] = 140
        progress("loading model", 0, 1)  # no counts to show
    assert capsys.readouterr().err.splitlines() == [
        "quantize: latency guard, timing  6/90  ~2:48 left", "quantize: calibration  0/64", "loading model"]


def test_the_eta_is_per_step_and_counts_down_between_reports(clock):
    eta = console.Eta()
    eta.update("prune: step", 2, 10)  # the first report of a step: the rate is measured from here
    assert eta.line() == "prune: step  2/10"
    clock[0] = 130
    eta.update("prune: step", 5, 10)  # 10 s a unit since the step's first report
    assert eta.line() == "prune: step  5/10  ~0:50 left"
    clock[0] = 150  # no report for 20 s: the estimate counts down
    assert eta.line() == "prune: step  5/10  ~0:30 left"
    clock[0] = 999
    assert eta.left() == 0.0
    eta.update("prune: step", 1, 10)  # counts that go back: a new loop, measured afresh
    assert eta.line() == "prune: step  1/10"
    assert console.clock(3723) == "1:02:03" and console.clock(59.6) == "1:00"


def test_the_terminal_status_line_shows_counts_and_eta(monkeypatch, clock):
    screen = io.StringIO()
    monkeypatch.setattr(console, "err", console.Stream(file=screen, force_terminal=True, width=120, markup=False))
    with console.Progress(enabled=True) as progress:
        progress("quantize: per-layer sensitivity", 0, 10)
        clock[0] = 130
        progress("quantize: per-layer sensitivity", 3, 10)
    assert "quantize: per-layer sensitivity  3/10  ~1:10 left" in screen.getvalue()


def digits(**options):
    """The quantize pass on the packaged digits CNN and its data, recording every progress report."""
    loaded = model_io.load(builtin_path("digits"))
    calls = []
    ds = data.load("builtin:digits-eval", loaded.model)
    ctx = Context(data={"calibration": ds, "evaluation": ds}, providers=CPU,
                  progress=lambda description, done, total: calls.append((description, done, total)))
    return Quantize(**options)(loaded.model, ctx), calls


def counted(calls, step: str) -> list[tuple[int, int]]:
    return [(done, total) for description, done, total in calls if description.startswith(step) and total > 1]


def test_the_latency_guard_calibration_and_sensitivity_report_counts():
    # the decision the guard takes depends on the machine; the counts it reports on the way do not
    result, calls = digits(guard_runs=5, min_fidelity=0.99999)
    timing = counted(calls, "quantize: latency guard, timing")
    assert timing and timing[-1][0] == timing[-1][1] > 5  # candidates × rounds, to the end
    assert [done for done, _ in timing] == sorted(done for done, _ in timing)
    assert counted(calls, "quantize: latency guard, building candidates")
    calibration = counted(calls, "quantize: calibration")
    assert calibration[0] == (0, calibration[0][1]) and calibration[0][1] > 1
    sensitivity = counted(calls, "quantize: per-layer sensitivity")
    assert [done for done, _ in sensitivity] == list(range(sensitivity[0][1]))
    assert any(d.startswith("quantize: accuracy budget, trial 1 (") for d, _, _ in calls)


def test_kmeans_reports_each_layer_clustered():
    _, calls = digits(mode="kmeans")
    assert counted(calls, "quantize: k-means clustering") == [(k, 5) for k in range(5)]


@pytest.mark.parametrize("mode", ["static", "fp16", "kmeans"])
def test_the_output_declares_only_the_opset_domains_its_nodes_use(mode):
    result, _ = digits(mode=mode, latency_guard=False)
    assert result.modified, result.summary
    used = {node.domain for node in all_nodes(result.model)} | {""}
    assert set(result.model.opset_imports) <= used, result.model.opset_imports
    written = onnx.load_from_string(model_io.to_bytes(result.model))
    assert {o.domain for o in written.opset_import} <= used


def if_reading_an_outer_value() -> onnx.ModelProto:
    """x → Relu → If(sum > 0: Neg, else: Abs of the Relu's output, read from the outer scope) → MatMul w → y.

    The Relu and MatMul go to float16, the If stays float32; its bodies read the Relu's output by name."""
    def body(op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["r"], [f"{op}_out"])], op, [],
                                 [helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, [1, 4])])

    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceSum", ["r"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
             helper.make_node("If", ["c"], ["b"], name="branch", then_branch=body("Neg"), else_branch=body("Abs")),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantize_fp16(proto: onnx.ModelProto):
    model = ir.serde.deserialize_model(proto)
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 4)).astype(np.float32)} for k in range(4)]
    ctx = Context(data={"evaluation": data.Dataset(feeds, None, False, "test feeds")}, providers=CPU)
    return Quantize(mode="fp16", latency_guard=False)(model, ctx), feeds


def test_fp16_casts_the_outer_values_that_float_if_bodies_read():
    result, feeds = quantize_fp16(if_reading_an_outer_value())
    assert result.modified, result.summary
    session = evaluate.session(model_io.to_bytes(result.model), CPU)  # loads: the If bodies read float32
    reference = evaluate.session(if_reading_an_outer_value().SerializeToString(), CPU)
    got, want = session.run(None, feeds[0])[0], reference.run(None, feeds[0])[0]
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
    assert "r_fp32_for_subgraph" in {o for node in all_nodes(result.model) for o in (v.name for v in node.outputs)}


def test_a_candidate_onnxruntime_cannot_load_returns_the_input_with_the_reason(monkeypatch):
    monkeypatch.setattr(fp16, "_cast_captures", lambda graph, before: None)  # onnxruntime's converter alone
    result, _ = quantize_fp16(if_reading_an_outer_value())
    assert not result.modified
    assert result.details["unchanged"] == "onnxruntime cannot load the quantized model"
    reason = [n for n in result.notes if "onnxruntime cannot load the model" in n]
    assert len(reason) == 1 and "\n" not in reason[0] and "tensor(float16)" in reason[0]


def test_the_guards_count_holds_when_a_big_model_is_timed_in_blocks():
    """Timed in sequential blocks, a measurement reports blocks × runs; the guard's count stays within its total."""
    from mcomp.passes.quantize.guard import Timed

    seen = []
    timed = Timed(lambda description, done, total: seen.append((done, total)), runs=5, first=3, second=1)
    timed.round(12, 20)  # 4 blocks of 5 runs: 12 done of 20, i.e. 3 of 5 rounds
    timed.next(1)
    timed.round(15, 15)
    assert seen == [(9, 20), (15, 20), (20, 20)]
