"""Static quantize survives what breaks onnxruntime's quantizer (issue 12, a JAX/tf2onnx classifier).

The op pattern: a Gemm with per-channel int8 weights and a 2-D bias. onnxruntime 1.32's
``_adjust_weight_scale_for_int32_bias`` indexes the bias by output channel (``bias[i]``) and
compares the row it gets as a truth value: ``ValueError: The truth value of an array with more
than one element is ambiguous``. tf2onnx writes a one-hot MatMul followed by a row-vector Add
([1, N]); onnxruntime's basic optimizer fuses the two into exactly that Gemm. mcomp reads a [1, N]
bias as [N] (the same broadcast), and any node the quantizer still fails on is left float.
"""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from clirun import run_mcomp
from mcomp import data
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize, fallback

TOKENS, WIDTH, BATCH = 257, 16, 4
CPU = ["CPUExecutionProvider"]


def classifier(bias_shape, fused: bool) -> onnx.ModelProto:
    """One-hot tokens [4, 257] → token table (MatMul + Add, or one Gemm) with a bias of ``bias_shape`` → Relu
    → Gemm head: opset 15 plus ai.onnx.ml, as tf2onnx exports it."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((TOKENS, WIDTH)).astype(np.float32), "table"),
             nh.from_array(rng.standard_normal(bias_shape).astype(np.float32), "bias"),
             nh.from_array(rng.standard_normal((WIDTH, 8)).astype(np.float32), "w_head"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "b_head")]
    if fused:
        nodes = [oh.make_node("Gemm", ["x", "table", "bias"], ["e"], name="tok")]
    else:
        nodes = [oh.make_node("MatMul", ["x", "table"], ["m"], name="tok"), oh.make_node("Add", ["m", "bias"], ["e"])]
    nodes += [oh.make_node("Relu", ["e"], ["r"], name="relu"), oh.make_node("Gemm", ["r", "w_head", "b_head"], ["y"], name="head")]
    graph = oh.make_graph(nodes, "jax_classifier", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, TOKENS])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 15), oh.make_opsetid("ai.onnx.ml", 2)])


def one_hot(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": np.eye(TOKENS, dtype=np.float32)[rng.integers(0, TOKENS, BATCH)]} for _ in range(n)]


def quantize(proto):
    ds = data.Dataset(one_hot(), None, False, "test")
    ctx = Context(data={"calibration": ds, "evaluation": ds}, providers=CPU)
    return Quantize(Quantize.Config(latency_guard=False))(ir.serde.deserialize_model(proto), ctx)


def weighted(model: ir.Model) -> tuple[set[str], set[str]]:
    """Gemm/MatMul nodes whose weights were quantized (they read a dequantized initializer), and the others."""
    proto = ir.serde.serialize_model(model)
    inits = {t.name for t in proto.graph.initializer}
    dq = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    nodes = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return {n.name for n in nodes if dq & set(n.input)}, {n.name for n in nodes if not dq & set(n.input)}


def runs(model: ir.Model) -> np.ndarray:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=CPU)
    return session.run(None, one_hot(1, seed=9)[0])[0]


def onnxruntime_fails(proto, tmp_path) -> bool:
    """onnxruntime's own quantize_static, per-channel, on ``proto``: does it raise the issue's ValueError?"""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from mcomp.passes.quantize.schemes.static import FeedReader

    onnx.save(proto, tmp_path / "in.onnx")
    try:
        quantize_static(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), FeedReader(one_hot()),
                        quant_format=QuantFormat.QDQ, per_channel=True, extra_options={"WeightSymmetric": True})
    except ValueError as exc:
        assert "truth value of an array" in str(exc)
        return True
    return False


def test_the_pattern_breaks_onnxruntimes_quantizer(tmp_path):
    """The reproduction: a per-channel Gemm with a 2-D bias (a row of it; or the whole [M, N])."""
    broken = [onnxruntime_fails(classifier(shape, fused=True), tmp_path) for shape in [(1, WIDTH), (BATCH, WIDTH)]]
    if not any(broken):
        pytest.skip(f"onnxruntime {ort.__version__} quantizes a Gemm with a 2-D bias: the bug is fixed there")
    assert broken == [True, True]


def test_a_row_vector_bias_is_read_as_a_vector_and_every_node_is_quantized():
    """tf2onnx's MatMul + Add([1, N]) is fused into the Gemm that breaks onnxruntime; mcomp flattens its bias."""
    result = quantize(classifier((1, WIDTH), fused=False))
    assert result.modified
    quantized, left = weighted(result.model)
    assert len(quantized) == 2 and not left  # the fused token Gemm (its name is the optimizer's) and the head
    assert not any("left float" in note for note in result.notes)
    assert runs(result.model).shape == (BATCH, 8)


@pytest.mark.parametrize("how", ["named by the quantizer's frames", "found by bisection"])
def test_a_node_the_quantizer_fails_on_is_left_float_and_the_rest_quantized(how, monkeypatch):
    """A full [M, N] bias cannot be flattened: that Gemm stays float, the head is quantized, exit 0."""
    if how == "found by bisection":
        monkeypatch.setattr(fallback, "named_node", lambda exc, candidates: None)
    result = quantize(classifier((BATCH, WIDTH), fused=True))
    assert result.modified
    assert weighted(result.model) == ({"head"}, {"tok"})
    [note] = [n for n in result.notes if "left float" in n]
    assert note.startswith("node tok (Gemm) left float: onnxruntime's quantizer failed on it (ValueError: The truth value")
    assert {"node": "tok", "reason": note.split("left float: ")[1]} in result.details["float_reasons"]
    assert "in 2 of 2 quantizable nodes" in result.summary  # tok is counted with the float ops
    assert runs(result.model).shape == (BATCH, 8)


def test_bisection_names_the_node_whose_exclusion_lets_the_build_through():
    nodes = [f"n{i}" for i in range(9)]
    tried = []

    def fails(excluded):
        tried.append(len(excluded))
        return "n6" not in excluded

    assert fallback.bisect(fails, nodes) == "n6"
    assert len(tried) <= 5  # every candidate excluded, then log2(9) halvings
    assert fallback.bisect(lambda excluded: True, nodes) is None  # not a node's failure


def test_only_failures_inside_onnxruntimes_quantizer_are_caught():
    try:
        raise ValueError("ours")
    except ValueError as exc:
        assert not fallback.inside_quantizer(exc)


def test_the_cli_quantizes_the_classifier_with_exit_0(tmp_path):
    onnx.save(classifier((1, WIDTH), fused=False), tmp_path / "clf.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in one_hot()]))
    res = run_mcomp("quantize", "clf.onnx", "--data", "calib.npz", "--no-latency-guard", "-o", "q.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "q.onnx").exists()
    quantized, left = weighted(ir.load(tmp_path / "q.onnx"))
    assert len(quantized) == 2 and not left


def shared_bias_convs() -> onnx.ModelProto:
    """Four Convs reading one bias initializer ``b`` (tf2onnx shares equal constants; basic-pitch's CQT has
    many such Convs), the first one's output named ``b2``: the name onnxruntime's quantizer gives its third
    copy of ``b`` (``b0``, ``b1``, ``b2``; basic-pitch's ``…/conv1d_25`` and the Conv output ``…/conv1d_252``)."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), f"w{i}") for i in range(4)]
    inits.append(nh.from_array(rng.standard_normal(4).astype(np.float32), "b"))
    outputs = ["b2", "c1", "c2", "c3"]
    nodes = [oh.make_node("Conv", ["x", f"w{i}", "b"], [out], name=f"conv{i}", pads=[1, 1, 1, 1])
             for i, out in enumerate(outputs)]
    nodes.append(oh.make_node("Sum", outputs, ["y"], name="sum"))
    graph = oh.make_graph(nodes, "shared_bias", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 15)])


def test_a_shared_bias_is_copied_under_a_name_no_tensor_has():
    """onnxruntime's quantizer names its copy of a shared bias ``<bias><n>`` whatever else bears that name: the
    model it writes feeds the bias copy where the Conv output ``b2`` was read, and onnxruntime refuses it
    (every static quantization of basic-pitch returned the input; onnxruntime 1.32's ``quantize_static`` on
    this model still writes such a graph). mcomp gives each reader its own bias first, under a fresh name:
    every Conv is quantized and the outputs stay close, whatever onnxruntime's naming."""
    from mcomp.passes.quantize.prepare import unshare_biases

    proto = shared_bias_convs()
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 2, 8, 8)).astype(np.float32)} for i in range(8)]
    unshared = onnx.ModelProto()
    unshared.CopyFrom(proto)
    assert unshare_biases(unshared) == 3  # the first reader keeps ``b``; the three others get their own
    biases = [n.input[2] for n in unshared.graph.node if n.op_type == "Conv"]
    values = {v for n in unshared.graph.node for v in n.output} | {i.name for i in unshared.graph.input}
    assert len(set(biases)) == 4 and not set(biases) & values

    ds = data.Dataset(feeds, None, False, "test")
    ctx = Context(data={"calibration": ds, "evaluation": ds}, providers=CPU)
    result = Quantize(Quantize.Config(latency_guard=False, min_fidelity=0.9))(ir.serde.deserialize_model(proto), ctx)
    assert result.modified, result.notes
    quantized = ir.serde.serialize_model(result.model)
    inits = {t.name for t in quantized.graph.initializer}
    dq = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert all(dq & set(n.input) for n in quantized.graph.node if n.op_type == "Conv")
    want = ort.InferenceSession(proto.SerializeToString(), providers=CPU).run(None, feeds[0])[0]
    got = ort.InferenceSession(quantized.SerializeToString(), providers=CPU).run(None, feeds[0])[0]
    assert np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.98


def test_an_input_model_failing_on_the_data_during_calibration_is_bad_input():
    """Static quantization runs the float model on the data before the quantizer does (the shared-scale scan): a
    model that fails there fails on the user's data (speechmos's AEC model, its GRU state given for 1 example
    beside 16), which was an internal error (exit 1). Now it is bad input that names the model; a candidate's
    failure, which would be mcomp's, is not turned into one."""
    from mcomp.errors import BadInput
    from mcomp.evaluate import run_exposed
    from mcomp.passes.quantize import shared_scale

    proto = shared_bias_convs()
    wrong = [{"x": np.zeros((1, 3, 8, 8), np.float32)}]  # 3 channels where the Convs read 2
    with pytest.raises(BadInput, match=r"^the input model fails on the data \(\[ONNXRuntimeError\]"):
        run_exposed(proto, ["y"], wrong, CPU, which="input")
    with pytest.raises(Exception) as raised:
        run_exposed(proto, ["y"], wrong, CPU)
    assert not isinstance(raised.value, BadInput)
    with pytest.raises(BadInput, match=r"^quantize: the input model fails on the data"):
        shared_scale._run(proto, ["b2"], ["y"], wrong, CPU)
