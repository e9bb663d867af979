"""mcomp.graph: walkers, MACs (one formula per op, for the report and for quantization's ranking),
and the reason given when a MACs count misses nodes."""

import numpy as np
import onnx
import pytest

from helpers import conv_bn_relu, from_text
from mcomp import evaluate, graph
from mcomp.model import to_proto


def gemm(trans_a: int, trans_b: int) -> onnx.ModelProto:
    """Y[2,5] = A·B with A [M=2, K=3] and B [K=3, N=5], each stored transposed when asked."""
    a = [3, 2] if trans_a else [2, 3]
    b = np.zeros((5, 3) if trans_b else (3, 5), np.float32)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transA=trans_a, transB=trans_b, name="gemm")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, a)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])],
        [onnx.numpy_helper.from_array(b, "w")])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_macs_are_m_k_n_under_any_transposition(trans_a, trans_b):
    proto = gemm(trans_a, trans_b)
    assert graph.macs_by_node(proto) == {"gemm": 2 * 3 * 5}


def test_macs_by_node_agrees_with_the_total_and_scales_with_the_batch():
    model = conv_bn_relu()
    total = graph.macs(model, {"x": (4, 3, 8, 8)})
    by_node = graph.macs_by_node(to_proto(model), {"x": (4, 3, 8, 8)})
    assert total.unknown == [] and total.reason is None
    assert sum(by_node.values()) == total.total == 4 * (4 * 8 * 8) * (3 * 3 * 3)


@pytest.mark.parametrize("level", ["extended", "all"])
def test_onnxruntimes_fused_conv_and_gemm_count_like_the_ops_they_fuse(tmp_path, level):
    """At the extended level the CPU provider writes every Conv+Relu as FusedConv and Gemm+Relu as
    FusedGemm, at `all` blocked-layout (NCHWc) Convs, none of which onnx inference can type: a
    CNN's MACs read 0 after ``optimize``. (The digits CNN's channels are multiples of the block, so
    the count is unchanged; elsewhere NCHWc counts the padded channels it computes.)"""
    import onnx_ir as ir
    import onnxruntime as ort

    from mcomp.embedded import builtin_path

    options = ort.SessionOptions()
    options.graph_optimization_level = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(builtin_path("digits")), options, providers=["CPUExecutionProvider"])
    fused = onnx.load(tmp_path / "fused.onnx")
    written = {(n.domain, n.op_type) for n in fused.graph.node}
    conv = ("com.microsoft", "FusedConv") if level == "extended" else ("com.microsoft.nchwc", "Conv")  # `all`: NCHWc
    assert {conv, ("com.microsoft", "FusedGemm")} <= written
    before = graph.macs(ir.load(builtin_path("digits")), {"image": (8, 1, 8, 8)})
    after = graph.macs(ir.from_proto(fused), {"image": (8, 1, 8, 8)})
    assert after.unknown == [] and after.total == before.total > 0


def test_a_blocked_layout_cnn_that_alternates_with_standard_ops_is_counted_whole(tmp_path):
    """At `all`, onnxruntime wraps each NCHWc Conv in ReorderInput/ReorderOutput around the standard ops it
    does not block (a swish here): ten such blocks took more inference rounds than the count allowed, and
    ReorderInput had no rule, so PP-OCR's classifier read 44 of its convs uncounted; nor had the blocked
    Upsample a nearest ×2 Resize becomes (ddddocr's YOLOX-style detector: 47 of its 83 convs). The blocked convs count
    the channels they pad to the block (12 → 16 on AVX2 and AVX-512 alike), so never fewer MACs than before."""
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(10):
        depthwise = i % 2 == 1
        w = rng.standard_normal((12, 1 if depthwise else 12, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], group=12 if depthwise else 1),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"m{i}"])]
        prev = f"m{i}"
        if i == 4:  # a nearest ×2 upsampling, as a detector's neck has: NCHWc Upsample at `all` (YOLOX: 47 uncounted)
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
            nodes.append(helper.make_node("Resize", [prev, "", "scales"], ["up"], mode="nearest",
                                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
            prev = "up"
    graph_proto = helper.make_graph(nodes, "swish",
                                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 16, 16])],
                                    [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 12, 32, 32])], inits)
    source = tmp_path / "swish.onnx"
    onnx.save(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)]), source)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    blocked = onnx.load(tmp_path / "all.onnx")
    if not any(n.domain == "com.microsoft.nchwc" for n in blocked.graph.node):
        pytest.skip("this CPU has no NCHWc kernels (onnxruntime's `all` level wrote no blocked ops)")
    before = graph.macs(ir.load(source))
    after = graph.macs(ir.from_proto(blocked))
    assert ("com.microsoft.nchwc", "Upsample") in {(n.domain, n.op_type) for n in blocked.graph.node}
    assert after.unknown == [] and after.reason is None
    assert after.total >= before.total > 0


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_layers_count_their_gates_and_stay_counted_when_quantized(tmp_path, direction):
    """An LSTM over [seq 5, batch 2, input 6] with hidden 8: per step, direction and example, 4 gates of
    8 × (6 + 8). Dynamic int8 turns it into onnxruntime's DynamicQuantizeLSTM, which onnx inference does
    not type: the Gemm after it went uncounted (silero VAD's sequence model, 'no ratio')."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
               (("W", (dirs, 32, 6)), ("R", (dirs, 32, 8)), ("head", (8, 3)))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=8, direction=direction),
             helper.make_node("Slice", ["y", "s0", "s1", "ax"], ["y_last"]),  # the last step: [1, dirs, 2, 8]
             helper.make_node("Reshape", ["y_last", "shape"], ["last"]),
             helper.make_node("Gemm", ["last", "head"], ["out"])]
    consts = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              (("s0", [4]), ("s1", [5]), ("ax", [0]), ("shape", [-1, 8]))]
    graph_proto = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 6])],
                                    [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], weights + consts)
    source = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)]), source)
    lstm = 5 * 2 * dirs * 4 * 8 * (6 + 8)
    head = 2 * dirs * 8 * 3
    count = graph.macs(ir.load(source))
    assert count.unknown == [] and count.total == lstm + head
    quantize_dynamic(str(source), str(tmp_path / "dynamic.onnx"))
    quantized = ir.load(tmp_path / "dynamic.onnx")
    assert "DynamicQuantizeLSTM" in {n.op_type for n in quantized.graph}
    again = graph.macs(quantized)
    assert again.unknown == [] and again.total == count.total


@pytest.mark.realmodel
def test_a_network_inside_if_branches_is_counted_through_onnxruntimes_folding(real_model):
    """Silero VAD's streaming model is one If on the sample rate, its network inside both branches, each
    Pad's widths computed from constants there: onnx inference and onnxscript's folding typed none of its
    convs ("MACs 0"); onnxruntime's basic folding reaches into the branches."""
    import onnx_ir as ir

    rm = real_model("silero-vad")
    count = graph.macs(ir.load(rm.path), rm.input_shapes)
    assert count.total > 0
    assert not any(name.endswith("stft/Conv") or "/encoder/" in name for name in count.unknown), count.unknown


def test_onnxruntimes_folding_for_the_count_gets_no_big_weight():
    """``macs_by_node`` passes whole protos: a big model's weights would have gone through a session and
    been written again, to be read for shapes only. Above 1 KB they reach it as typed inputs."""
    from onnx import TensorProto, helper, numpy_helper

    from mcomp.value_shapes import _weights_as_inputs

    graph_proto = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(np.ones((32, 32), np.float32), "w"),
         numpy_helper.from_array(np.ones(4, np.float32), "b")])
    proto = helper.make_model(graph_proto)
    _weights_as_inputs(proto)
    assert [t.name for t in proto.graph.initializer] == ["b"]
    inputs = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input}
    assert inputs == {"x": [1, 32], "w": [32, 32]}


def test_a_qdq_cnn_at_onnxruntimes_all_level_is_counted_whole(tmp_path):
    """A QDQ CNN optimized at `all` becomes onnxruntime's QLinearConv (NHWC), QLinearAdd, QLinearMul,
    QLinearGlobalAveragePool: onnx inference types none of them, and every conv went uncounted (PP-OCR's
    classifier after static int8 and `optimize --level all`: 54 of 54). Counted, it is the float model's."""
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w0", (16, 3, 3, 3)), ("w1", (16, 16, 3, 3)), ("fc", (16, 4)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Add", ["c1", "c1"], ["a"]), helper.make_node("Mul", ["a", "a"], ["m"]),
             helper.make_node("GlobalAveragePool", ["m"], ["p"]), helper.make_node("Flatten", ["p"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["y"])]
    graph_proto = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", f, [1, 3, 16, 16])],
                                    [helper.make_tensor_value_info("y", f, [1, 4])], inits)
    onnx.save(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "float.onnx")

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Feeds(),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(str(tmp_path / "qdq.onnx"), options, providers=["CPUExecutionProvider"])
    fused = onnx.load(tmp_path / "all.onnx")
    if not any(n.domain == "com.microsoft" and n.op_type.startswith("QLinear") for n in fused.graph.node):
        pytest.skip("onnxruntime wrote no com.microsoft QLinear ops on this CPU")
    before = graph.macs(ir.load(tmp_path / "float.onnx"))
    after = graph.macs(ir.from_proto(fused))
    assert after.unknown == [] and after.total == before.total > 0


def test_a_count_that_misses_nodes_says_why():
    # the MatMul's input is reshaped to a shape fed at run time: no shape inference can know it
    model = from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 6] x, int64[2] s) => (float y) <float[3, 4] w = {0,0,0,0,0,0,0,0,0,0,0,0}> {
            r = Reshape (x, s)
            y = MatMul (r, w)
        }""")
    count = graph.macs(model)
    assert count.total == 0 and count.unknown and count.reason
    assert "not counted" in count.reason


def test_proto_walker_enters_subgraphs():
    model = from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (bool c, float[2] x) => (float[2] y) {
            y = If (c) <then_branch = t () => (float[2] a) { a = Neg (x) },
                        else_branch = e () => (float[2] b) { b = Abs (x) }>
        }""")
    ops = sorted(n.op_type for n in graph.proto_nodes(to_proto(model).graph))
    assert ops == ["Abs", "If", "Neg"] and graph.node_count(model) == 3


def test_feeds_for_renames_by_position_and_rejects_a_different_count():
    from mcomp.data import Dataset
    from mcomp.errors import BadInput

    ds = Dataset([{"a": np.zeros(1), "b": np.ones(1)}])
    assert evaluate.feeds_for(ds, ["a", "b"], ["a", "b"]) is ds
    renamed = evaluate.feeds_for(ds, ["a", "b"], ["x", "y"])
    assert list(renamed.feeds[0]) == ["x", "y"] and renamed.feeds[0]["y"][0] == 1
    with pytest.raises(BadInput, match="do not match"):
        evaluate.feeds_for(ds, ["a", "b"], ["x"])


def test_measurement_data_prefers_evaluation_then_calibration_then_synthetic():
    from mcomp.data import Dataset

    model = conv_bn_relu()
    ev, cal = Dataset([{"x": np.zeros((1, 3, 8, 8), np.float32)}], source="ev"), Dataset(
        [{"x": np.zeros((1, 3, 8, 8), np.float32)}], source="cal")
    assert evaluate.measurement_data({"evaluation": ev, "calibration": cal}, model) is ev
    assert evaluate.measurement_data({"calibration": cal}, model) is cal
    synthetic = evaluate.measurement_data({}, model, feeds=3, seed=1)
    assert synthetic.synthetic and len(synthetic) == 3


def test_a_shape_inferred_negative_is_not_counted_and_the_reason_says_why():
    """openWakeWord's mel front end at an assumed 32 samples, shorter than its STFT window: the output
    length came out negative and ``inspect`` printed "MACs -542,784"."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 1, 64), np.float32), "w")
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="stft")], "mel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w]),
        opset_imports=[helper.make_opsetid("", 13)])
    model = ir.serde.deserialize_model(proto)
    short = graph.macs(model, {"x": (1, 1, 32)})
    assert short.total >= 0 and short.unknown == ["stft"], short
    assert "negative dims" in short.reason
    assert graph.macs(model, {"x": (1, 1, 128)}).total == 4 * 65 * 64
