"""int4 weight-only as a size mode (issue 13): written when fidelity holds and the slowdown is within
--max-slowdown; block size and accuracy level chosen by measurement; size and memory at load reported.

The guard's clock is replaced (``fixed_timing``) wherever a decision is asserted, so the tests hold
on any machine load; the transformer tests use the shared exports of ``transformer_models``.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import transformer_models as tm
from mcomp import data
from mcomp.model import to_bytes
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize
from test_quantize_pass import fixed_timing

CPU = ["CPUExecutionProvider"]


def context(feeds: list[dict]) -> Context:
    return Context(data={"evaluation": data.Dataset(feeds, None, False, "test")}, providers=CPU)


def outputs(model_bytes: bytes, feeds: list[dict]) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(model_bytes, providers=CPU)
    return [session.run(None, feed) for feed in feeds]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def linear_stack(dims=(256, 512, 512, 256), seed=0) -> onnx.ModelProto:
    """x → MatMul → Gemm(transB) → MatMul: one layer in each form the scheme takes or rewrites."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((n, k) if i == 1 else (k, n)) * 0.05).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        if i == 1:
            inits.append(onnx.numpy_helper.from_array(np.zeros(n, np.float32) + 0.1, "b1"))
            nodes.append(helper.make_node("Gemm", [prev, "w1", "b1"], ["h1"], name="layer1", transB=1))
        else:
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", dims[0]])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["b", dims[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def stack_context(n=4) -> Context:
    rng = np.random.default_rng(1)
    return context([{"x": rng.standard_normal((2, 256)).astype(np.float32)} for _ in range(n)])


@pytest.mark.parametrize("name", [pytest.param("bert", marks=pytest.mark.slow), "gpt2"])  # bert: ~25 s at load
def test_int4_is_written_for_size_on_transformers(monkeypatch, name):
    """Slower than the input (×1.3 by the injected clock), but within the default bound: written."""
    fixed_timing(monkeypatch, {"*": 1.3})
    m = tm.build(name)
    feeds = [m.feeds(batch=1, seq=16, seed=s) for s in range(4)]
    source = m.path.read_bytes()
    result = Quantize(mode="weight-only")(_ir(source), context(feeds))
    assert result.modified, result.summary
    written = to_bytes(result.model)
    assert any(n.op_type == "MatMulNBits" for n in result.model.graph)
    assert len(written) <= 0.5 * len(source)
    ref, got = outputs(source, feeds), outputs(written, feeds)
    for k in range(len(ref[0])):  # each output over the feeds, as the budget measures it
        assert cosine(np.concatenate([r[k].ravel() for r in ref]), np.concatenate([g[k].ravel() for g in got])) >= 0.98
    d = result.details
    guard = d["latency_guard"]
    assert guard["within"] is True and guard["max_slowdown"] == 1.5 and guard["ratio"] == 1.3
    assert d["setting"]["block_size"] in (32, 64, 128) and d["setting"]["accuracy_level"] in (1, 4)
    assert d["setting"]["candidates"][0]["block_size"] == 128  # the smallest model is tried first
    memory = d["memory_at_load"]
    assert memory["output"]["peak_mb"] < memory["input"]["peak_mb"]
    assert "within --max-slowdown ×1.5" in " ".join(result.notes) and "memory at load" in result.summary
    if name == "gpt2":  # its Gemms and tied LM head are rewritten into MatMulNBits' form
        assert d["matmul_form"] == {"gemm": 16, "transposed": 1} and d["candidate_layers"] == 19  # + 2 Gathers
        assert d["quantized_ops"]["MatMul"] >= 12  # the budget may keep the most sensitive few float


def _ir(data_bytes: bytes):
    import onnx_ir as ir

    return ir.serde.deserialize_model(onnx.load_model_from_string(data_bytes))


def test_a_slowdown_beyond_max_slowdown_returns_the_input(monkeypatch):
    fixed_timing(monkeypatch, {"*": 1.4})
    model = _ir(linear_stack().SerializeToString())
    result = Quantize(mode="weight-only", max_slowdown=1.2)(model, stack_context())
    assert not result.modified and result.model is model
    assert result.details["unchanged"] == "slower than --max-slowdown ×1.2 allows (×1.400)"
    assert result.details["latency_guard"]["within"] is False
    assert any("beyond --max-slowdown ×1.2" in n for n in result.notes)


def test_a_slowdown_within_max_slowdown_writes_int4(monkeypatch):
    fixed_timing(monkeypatch, {"*": 1.4})
    result = Quantize(mode="weight-only", max_slowdown=1.45)(_ir(linear_stack().SerializeToString()), stack_context())
    assert result.modified
    assert sum(n.op_type == "MatMulNBits" for n in result.model.graph) == 3  # the Gemm too
    assert result.details["latency_guard"]["allowed"] == 1.45


def test_the_a_a_median_widens_the_bound(monkeypatch):
    """A second session of the input itself ran ×1.1: a ×1.3 candidate is within ×1.2 of that."""
    fixed_timing(monkeypatch, {"*": 1.3}, aa=1.1)
    result = Quantize(mode="weight-only", max_slowdown=1.2)(_ir(linear_stack().SerializeToString()), stack_context())
    assert result.modified and result.details["latency_guard"]["allowed"] == pytest.approx(1.32)


def test_the_fastest_accuracy_level_is_kept(monkeypatch):
    rounds = fixed_timing(monkeypatch, {"block 128, accuracy level 1": 1.2, "block 128, accuracy level 4": 0.9,
                                        "*": 2.0})
    result = Quantize(mode="weight-only", min_fidelity=0.9)(_ir(linear_stack().SerializeToString()), stack_context())
    assert rounds == [["block 128, accuracy level 1", "block 128, accuracy level 4"]]
    assert result.details["setting"]["accuracy_level"] == 4 and result.details["latency_guard"]["ratio"] == 0.9
    levels = {n.attributes["accuracy_level"].value for n in result.model.graph if n.op_type == "MatMulNBits"}
    assert levels == {4} and "accuracy level 4" in result.summary


def test_a_given_block_size_and_level_are_fixed(monkeypatch):
    rounds = fixed_timing(monkeypatch, {"*": 1.0})
    result = Quantize(mode="weight-only", block_size=32, accuracy_level=1, min_fidelity=0.9)(
        _ir(linear_stack().SerializeToString()), stack_context())
    assert rounds == [["block 32, accuracy level 1"]]
    assert [(c["block_size"], c["accuracy_level"]) for c in result.details["setting"]["candidates"]] == [(32, 1)]
    blocks = {n.attributes["block_size"].value for n in result.model.graph if n.op_type == "MatMulNBits"}
    assert blocks == {32}


def test_a_layer_left_float_is_the_input_layer(monkeypatch):
    """Candidates are composed from one quantizer run: an excluded layer is the float layer, the others
    match onnxruntime's own quantizer run with that layer excluded."""
    fixed_timing(monkeypatch, {"*": 1.0})
    proto = linear_stack()
    result = Quantize(mode="weight-only", block_size=32, accuracy_level=1, exclude=["layer2"], min_fidelity=0.9)(
        _ir(proto.SerializeToString()), stack_context())
    graph = {n.name: n for n in result.model.graph}
    assert graph["layer2"].op_type == "MatMul" and graph["layer0_Q4"].op_type == "MatMulNBits"
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ort_q = MatMulNBitsQuantizer(linear_stack(), block_size=32, is_symmetric=True, accuracy_level=1,
                                 nodes_to_exclude=["layer1", "layer2"])
    ort_q.process()
    x = {"x": np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)}
    ours = onnx.load_model_from_string(to_bytes(result.model))
    theirs = ort_q.model.model
    for model in (ours, theirs):  # layer0's output, the one layer both quantized
        model.graph.output.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, None))
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=CPU).run(["h0"], x)[0] for m in (ours, theirs))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slow, kept", [({}, (32, 1)), ({(32, 1): 3.0}, (32, 4)),
                                        ({(32, 1): 3.0, (32, 4): 3.0}, (64, 1)), ({"*": 3.0}, None)])
def test_a_fit_beyond_max_slowdown_is_made_again_at_the_most_accurate_setting_within_it(monkeypatch, slow, kept):
    """No block holds a cosine of 0.99 with every layer quantized (block 32, level 1 scores 0.9897), so
    layers go back to float at block 32, level 1. Only where that model is beyond --max-slowdown ×1.5 is
    every setting timed whole, and the fit made again at the first within it, smallest block and most
    accurate level first; where none is, the input is returned with the first fit's reasons."""
    label = "block {}, accuracy level {}".format
    rounds = fixed_timing(monkeypatch, {**{label(*s): r for s, r in slow.items() if s != "*"},
                                        "*": slow.get("*", 0.9)})
    result = Quantize(mode="weight-only", min_fidelity=0.99)(_ir(linear_stack().SerializeToString()), stack_context())
    whole = {label(b, level): slow.get((b, level), slow.get("*", 0.9)) for b in (32, 64, 128) for level in (1, 4)}
    setting = result.details["setting"]
    if not slow:
        assert rounds == [[label(32, 1)]] and "whole_settings" not in setting
    else:
        assert rounds[:2] == [[label(32, 1)], list(whole)] and setting["whole_settings"] == whole
    if kept is None:
        assert not result.modified and len(rounds) == 2
        assert any("beyond --max-slowdown" in n for n in result.notes)
        return
    assert result.modified and rounds[-1] == [label(*kept)]
    assert (setting["block_size"], setting["accuracy_level"]) == kept and result.details["budget"]["float_nodes"]
    nodes = [n for n in result.model.graph if n.op_type == "MatMulNBits"]
    assert {(n.attributes["block_size"].value, n.attributes["accuracy_level"].value) for n in nodes} == {kept}
    assert not any("returned unchanged" in n for n in result.notes)
    assert sum("kept in float" in n for n in result.notes) == 1
    assert any("layers were left float again" in n for n in result.notes) == bool(slow)


def test_untimed_the_fit_runs_at_the_most_accurate_level(monkeypatch):
    rounds = fixed_timing(monkeypatch, {"*": 5.0})
    result = Quantize(mode="weight-only", min_fidelity=0.99, latency_guard=False)(
        _ir(linear_stack().SerializeToString()), stack_context())
    assert rounds == [] and result.modified
    assert {n.attributes["accuracy_level"].value for n in result.model.graph if n.op_type == "MatMulNBits"} == {1}


def test_max_slowdown_is_for_size_modes_only():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_slowdown applies to"):
        Quantize.Config(mode="dynamic", max_slowdown=1.2)
    with pytest.raises(ValidationError):
        Quantize.Config(mode="weight-only", max_slowdown=0.9)
    assert Quantize.Config(mode="weight-only").block_size is None
