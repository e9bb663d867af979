"""The ONNX -> torch interpreter (mcomp.torch_graph): outputs equal onnxruntime's, gradients
flow, training and write_back keep the ONNX model's names, axes and structure."""

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import realmodels
from mcomp import model as model_io
from mcomp.errors import McompError
from mcomp.torch_graph import OnnxModule, UnsupportedOp, supported_ops, to_torch, write_back

ASSETS = Path(__file__).resolve().parents[1] / "core" / "assets"
DIGITS = ASSETS / "digits_cnn.onnx"


def ort_run(model: ir.Model | Path | onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # small models; avoids fighting over the cores with torch
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_run(module: OnnxModule, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
    return [o.numpy() for o in out]


def assert_close(got: list[np.ndarray], ref: list[np.ndarray], rel: float = 1e-4) -> float:
    assert len(got) == len(ref)
    worst = 0.0
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert g.dtype == r.dtype
        if r.size:
            err = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64))))
            assert err <= rel * max(1.0, float(np.max(np.abs(r)))), (err, float(np.max(np.abs(r))))
            worst = max(worst, err)
    return worst


def make_model(nodes, inputs, outputs, inits=(), opset=17) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, [nh.from_array(a, n) for n, a in inits])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def vi(name, dtype=TP.FLOAT, shape=None):
    return oh.make_tensor_value_info(name, dtype, shape)


def digits_batch(n=64):
    d = np.load(ASSETS / "digits_eval.npz")
    return {"image": d["image"][:n].astype(np.float32)}


# ---------------------------------------------------------------------------
# equality with onnxruntime
# ---------------------------------------------------------------------------


def test_digits_matches_onnxruntime():
    module = to_torch(ir.load(DIGITS))
    assert module.input_names == ["image"] and module.output_names == ["logits"]
    feeds = digits_batch()
    assert_close(torch_run(module, feeds), ort_run(DIGITS, feeds))
    # positional call, another batch size (the batch axis is dynamic)
    x = torch.from_numpy(feeds["image"][:3])
    with torch.no_grad():
        (y,) = module(x)
    assert y.shape == (3, 10)


@pytest.mark.realmodel
@pytest.mark.parametrize("name", realmodels.all_models())
def test_real_model_matches_onnxruntime(real_model, name):
    rm = real_model(name)
    module = to_torch(ir.load(rm.path))
    feeds = rm.feeds(seed=0)
    assert module.input_names == list(feeds)
    assert_close(torch_run(module, feeds), ort_run(rm.path, feeds))
    assert sum(p.numel() for p in module.parameters()) > 100_000


@pytest.mark.realmodel
def test_write_back_into_subgraph_constants(real_model):
    """Silero keeps every weight in Constant nodes inside nested If branches."""
    rm = real_model("silero-vad")
    model = ir.load(rm.path)
    module = to_torch(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    target = model_io.copy(model)
    assert write_back(module, target) == len(list(module.parameters()))
    feeds = rm.feeds(seed=1)
    assert_close(ort_run(target, feeds), torch_run(module, feeds))
    assert np.abs(ort_run(target, feeds)[0] - ort_run(rm.path, feeds)[0]).max() > 1e-4


# ---------------------------------------------------------------------------
# gradients and training
# ---------------------------------------------------------------------------


def layer_weights(model: ir.Model, ops=("Conv", "Gemm")) -> list[str]:
    return [n.inputs[1].name for n in model.graph if n.op_type in ops]


def test_gradients_reach_conv_and_gemm_weights():
    model = ir.load(DIGITS)
    module = to_torch(model)
    names = layer_weights(model)
    assert len(names) == 5
    x = torch.from_numpy(digits_batch(16)["image"])
    labels = torch.from_numpy(np.load(ASSETS / "digits_eval.npz")["labels"][:16])
    loss = torch.nn.functional.cross_entropy(module(x)[0], labels)
    loss.backward()
    for name in names:
        p = module.parameter_for(name)
        assert p is not None and p.requires_grad
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # running statistics are settings, not weights: no gradient by default
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    assert not module.parameter_for(bn.inputs[3].name).requires_grad


def test_trainable_and_names():
    model = ir.load(DIGITS)
    module = to_torch(model, trainable=lambda name: name.startswith("classifier"))
    names = module.tensor_names()
    assert set(names) == {n for n, _ in module.named_parameters()}
    assert set(names.values()) == {v.name for v in model.graph.initializers.values()
                                   if v.const_value.dtype == ir.DataType.FLOAT}
    for attr, onnx_name in names.items():
        assert module.parameter_for(onnx_name) is getattr(module, attr)
        assert getattr(module, attr).requires_grad == onnx_name.startswith("classifier")
    assert module.parameter_for("no such tensor") is None


def test_training_round_trip_on_digits(tmp_path):
    model = ir.load(DIGITS)
    module = to_torch(model)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = np.load(ASSETS / "digits_train.npz")
    images, labels = torch.from_numpy(data["image"]), torch.from_numpy(data["labels"])
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    module.train()
    for _ in range(20):
        idx = torch.randint(0, len(images), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(images[idx])[0], labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    changed = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) >= 10

    target = model_io.copy(model)
    assert write_back(module, target) == len(before)
    out = tmp_path / "tuned.onnx"
    model_io.save(target, out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    orig = onnx.load(str(DIGITS))
    assert [i.name for i in proto.graph.input] == [i.name for i in orig.graph.input]
    assert [o.name for o in proto.graph.output] == [o.name for o in orig.graph.output]
    assert proto.graph.input[0].type == orig.graph.input[0].type  # dynamic batch dim kept
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in orig.graph.node]
    assert [(t.name, t.data_type, list(t.dims)) for t in proto.graph.initializer] == [
        (t.name, t.data_type, list(t.dims)) for t in orig.graph.initializer]
    feeds = {"image": data["image"][:50]}
    ref = torch_run(module, feeds)
    assert_close(ort_run(out, feeds), ref)
    assert np.abs(ort_run(DIGITS, feeds)[0] - ref[0]).max() > 1e-3  # it did train


def test_write_back_rejects_a_reshaped_parameter():
    model = ir.load(DIGITS)
    module = to_torch(model)
    name = layer_weights(model)[0]
    p = module.parameter_for(name)
    p.data = p.data[:1]
    with pytest.raises(McompError, match="shape"):
        write_back(module, model_io.copy(model))


# ---------------------------------------------------------------------------
# QDQ: fake-quantization with a straight-through estimator
# ---------------------------------------------------------------------------


def qdq_conv_model(per_axis: bool) -> ir.Model:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    if per_axis:
        w_scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
        w_zp = np.zeros(4, np.int8)
    else:
        w_scale, w_zp = np.array(np.abs(w).max() / 127, np.float32), np.array(0, np.int8)
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        oh.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        oh.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], axis=0),
        oh.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], axis=0),
        oh.make_node("Conv", ["xd", "wd", "b"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [("x_scale", np.array(4.0 / 255, np.float32)), ("x_zp", np.array(128, np.uint8)),
             ("w", w), ("w_scale", w_scale), ("w_zp", w_zp), ("b", b)]
    return make_model(nodes, [vi("x", shape=["N", 3, 6, 6])], [vi("y", shape=["N", 4, 6, 6])], inits, opset=13)


@pytest.mark.parametrize("per_axis", [False, True])
def test_qdq_fake_quantization(per_axis):
    model = qdq_conv_model(per_axis)
    module = to_torch(model)
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 6, 6)).astype(np.float32)
    (ref,) = ort_run(model, {"x": x})
    xt = torch.from_numpy(x)
    (y,) = module(xt)
    # within one quantization step of the activation times the weight mass
    w = module.parameter_for("w").detach()
    step = 4.0 / 255 * float(w.abs().sum((1, 2, 3)).max())
    assert float((y.detach() - torch.from_numpy(ref)).abs().max()) <= step
    # quantized values are kept in float, so gradients flow through the STE
    y.square().sum().backward()
    assert module.parameter_for("w").requires_grad
    assert float(module.parameter_for("w").grad.abs().sum()) > 0
    assert not module.parameter_for("w_scale").requires_grad
    assert module.parameter_for("b").grad is not None


def test_quantize_output_as_integer_when_not_only_dequantized():
    nodes = [oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    model = make_model(nodes, [vi("x", shape=[5])], [vi("q", TP.INT8, [5])],
                       [("s", np.array(0.1, np.float32)), ("z", np.array(3, np.int8))], opset=13)
    x = np.array([-20.0, -0.25, 0.05, 0.15, 50.0], np.float32)
    got = torch_run(to_torch(model), {"x": x})
    assert got[0].dtype == np.int8
    np.testing.assert_array_equal(got[0], ort_run(model, {"x": x})[0])


# ---------------------------------------------------------------------------
# unsupported ops
# ---------------------------------------------------------------------------


def test_unsupported_ops_are_all_listed():
    then_g = oh.make_graph([oh.make_node("Bar", ["x"], ["t"], domain="custom", name="bar_in_branch")],
                           "then", [], [vi("t", shape=[2])])
    else_g = oh.make_graph([oh.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", shape=[2])])
    nodes = [
        oh.make_node("Foo", ["x"], ["f"], domain="custom", name="my_foo"),
        oh.make_node("ReduceMax", ["f"], ["c0"], keepdims=0),
        oh.make_node("Cast", ["c0"], ["c"], to=TP.BOOL),
        oh.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        oh.make_node("Scan", ["x"], ["z"], num_scan_inputs=1, body=oh.make_graph(
            [oh.make_node("Identity", ["a"], ["b"])], "body", [vi("a", shape=[])], [vi("b", shape=[])])),
    ]
    graph = oh.make_graph(nodes, "g", [vi("x", shape=[2])], [vi("y", shape=[2]), vi("z", shape=[2])])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("custom", 1)])
    with pytest.raises(UnsupportedOp) as info:
        to_torch(ir.serde.deserialize_model(proto))
    msg = str(info.value)
    for part in ("Foo", "'custom'", "my_foo", "Bar", "bar_in_branch", "Scan"):
        assert part in msg, (part, msg)
    assert isinstance(info.value, McompError)


def test_supported_ops_cover_the_brief():
    ops = set(supported_ops())
    wanted = """Conv ConvTranspose BatchNormalization InstanceNormalization LayerNormalization Gemm MatMul
    Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Relu LeakyRelu PRelu Elu Selu Sigmoid HardSigmoid
    HardSwish Tanh Softmax LogSoftmax Softplus Erf Gelu Clip Mish MaxPool AveragePool GlobalAveragePool
    GlobalMaxPool Flatten Reshape Transpose Squeeze Unsqueeze Concat Split Slice Gather Expand Tile Shape
    Size ConstantOfShape Constant Cast Identity Dropout Where Equal Less Greater Not And Or Min Max Mean Sum
    ReduceMean ReduceSum ReduceMax ReduceMin ReduceL2 ArgMax Range Pad Resize Upsample DepthToSpace
    SpaceToDepth Einsum Sign Floor Ceil Round Trilu CumSum If Loop LSTM GRU RNN QuantizeLinear
    DequantizeLinear""".split()
    assert not set(wanted) - ops


# ---------------------------------------------------------------------------
# recurrent layers and control flow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("lens", [False, True])
def test_recurrent_bidirectional_with_initial_states(op, lens):
    rng = np.random.default_rng(3)
    T, B, I, H, G = 6, 3, 4, 5, 4 if op == "LSTM" else 3
    inits = [("W", rng.standard_normal((2, G * H, I)).astype(np.float32) * 0.5),
             ("R", rng.standard_normal((2, G * H, H)).astype(np.float32) * 0.5),
             ("B", rng.standard_normal((2, 2 * G * H)).astype(np.float32) * 0.5)]
    feeds = {"X": rng.standard_normal((T, B, I)).astype(np.float32),
             "h0": rng.standard_normal((2, B, H)).astype(np.float32)}
    names = ["X", "W", "R", "B", "lens" if lens else "", "h0"]
    inputs = [vi("X", shape=[T, B, I]), vi("h0", shape=[2, B, H])]
    if lens:
        feeds["lens"] = np.array([6, 2, 4], np.int32)
        inputs.append(vi("lens", TP.INT32, [B]))
    if op == "LSTM":
        feeds["c0"] = rng.standard_normal((2, B, H)).astype(np.float32)
        names.append("c0")
        inputs.append(vi("c0", shape=[2, B, H]))
    outs = ["Y", "Yh", "Yc"][: 3 if op == "LSTM" else 2]
    node = oh.make_node(op, names, outs, hidden_size=H, direction="bidirectional")
    shapes = {"Y": [T, 2, B, H], "Yh": [2, B, H], "Yc": [2, B, H]}
    model = make_model([node], inputs, [vi(o, shape=shapes[o]) for o in outs], inits, opset=14)
    module = to_torch(model)
    assert_close(torch_run(module, feeds), ort_run(model, feeds))
    args = {k: torch.from_numpy(v) for k, v in feeds.items()}
    module(**args)[0].sum().backward()
    assert float(module.parameter_for("R").grad.abs().sum()) > 0


def test_if_branches_read_outer_scope_and_loop():
    # y = If(sum(x) > 0, then: x * w (outer scope), else: x - 1);  z = Loop 3 times: acc = acc + x
    then_g = oh.make_graph([oh.make_node("Mul", ["x", "w"], ["t"])], "then", [], [vi("t", shape=[3])])
    else_g = oh.make_graph([oh.make_node("Sub", ["x", "one"], ["e"])], "else", [], [vi("e", shape=[3])])
    body = oh.make_graph(
        [oh.make_node("Add", ["acc_in", "x"], ["acc_out"]), oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Mul", ["acc_out", "w"], ["scan"])],
        "body", [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("acc_in", shape=[3])],
        [vi("cond_out", TP.BOOL, []), vi("acc_out", shape=[3]), vi("scan", shape=[3])])
    nodes = [
        oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["c"]),
        oh.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        oh.make_node("Loop", ["trips", "", "acc0"], ["z", "zs"], body=body),
    ]
    inits = [("w", np.array([1.0, 2.0, 3.0], np.float32)), ("one", np.array(1.0, np.float32)),
             ("zero", np.array(0.0, np.float32)), ("trips", np.array(3, np.int64)),
             ("acc0", np.zeros(3, np.float32))]
    model = make_model(nodes, [vi("x", shape=[3])], [vi("y", shape=[3]), vi("z", shape=[3]), vi("zs", shape=[3, 3])],
                       inits, opset=13)
    module = to_torch(model)
    for x in ([1.0, 2.0, -0.5], [-1.0, -2.0, 0.5]):
        feeds = {"x": np.array(x, np.float32)}
        assert_close(torch_run(module, feeds), ort_run(model, feeds))
    module(torch.tensor([1.0, 2.0, -0.5]))[0].sum().backward()
    assert module.parameter_for("w").grad.tolist() == [1.0, 2.0, -0.5]


# ---------------------------------------------------------------------------
# op semantics that change across opsets, and shapes computed at run time
# ---------------------------------------------------------------------------

RNG = np.random.default_rng(7)
X4 = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731
F32 = lambda *v: np.array(v, np.float32)  # noqa: E731

# (id, op, opset, attributes, runtime inputs, constant inputs (name, array) after them, number of outputs)
CASES = [
    ("slice-attr", "Slice", 9, {"starts": [1, -3], "ends": [100, -1], "axes": [2, 3]}, [X4], [], 1),
    ("slice-steps", "Slice", 13, {}, [X4, I64(-1, 4), I64(-1000, 0), I64(3, 2), I64(-2, -3)], [], 1),
    ("pad-attr-reflect", "Pad", 7, {"mode": "reflect", "pads": [0, 0, 1, 2, 0, 0, 2, 1]}, [X4], [], 1),
    ("pad-input-edge", "Pad", 13, {"mode": "edge"}, [X4, I64(0, 1, 2, 0, 0, 0, -1, 3)], [], 1),
    ("pad-axes-constant", "Pad", 18, {}, [X4, I64(1, 2), F32(0.5), I64(-1)], [], 1),
    ("clip-attr", "Clip", 7, {"min": -0.5, "max": 0.5}, [X4], [], 1),
    ("clip-input", "Clip", 13, {}, [X4], [("lo", F32(-0.2)), ("hi", F32(0.3))], 1),
    ("split-attr", "Split", 11, {"axis": 3, "split": [3, 4]}, [X4], [], 2),
    ("split-input", "Split", 13, {"axis": -1}, [X4, I64(2, 5)], [], 2),
    ("split-num-outputs", "Split", 18, {"axis": 3, "num_outputs": 3}, [X4], [], 3),
    ("squeeze-attr", "Squeeze", 11, {"axes": [0]}, [X4[:1]], [], 1),
    ("squeeze-input", "Squeeze", 13, {}, [X4[:1], I64(0)], [], 1),
    ("unsqueeze-attr", "Unsqueeze", 11, {"axes": [0, -1]}, [X4], [], 1),
    ("unsqueeze-input", "Unsqueeze", 13, {}, [X4, I64(1, -1)], [], 1),
    ("reducemean-attr", "ReduceMean", 11, {"axes": [1, -1], "keepdims": 0}, [X4], [], 1),
    ("reducemean-input", "ReduceMean", 18, {}, [X4, I64(2)], [], 1),
    ("reducesum-input", "ReduceSum", 13, {"keepdims": 0}, [X4, I64(1, 3)], [], 1),
    ("reducel2", "ReduceL2", 11, {"axes": [2]}, [X4], [], 1),
    ("softmax-coerced", "Softmax", 11, {"axis": 1}, [X4], [], 1),
    ("softmax-axis", "Softmax", 13, {"axis": 1}, [X4], [], 1),
    ("reshape-0-and-minus-1", "Reshape", 13, {}, [X4, I64(0, -1, 7)], [], 1),
    ("shape-start-end", "Shape", 15, {"start": 1, "end": -1}, [X4], [], 1),
    ("resize10-nearest", "Resize", 10, {"mode": "nearest"}, [X4], [("s", F32(1, 1, 2, 0.6))], 1),
    ("resize-asymmetric-floor", "Resize", 13,
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [X4], [("roi", F32()), ("s", F32(1, 1, 2, 2))], 1),
    ("resize-linear-half-pixel", "Resize", 13, {"mode": "linear"}, [X4], [("roi", F32()), ("s", F32(1, 1, 1.6, 0.7))], 1),
    ("resize-linear-align-corners", "Resize", 13, {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
     [X4], [("roi", F32()), ("s", F32()), ("sz", I64(2, 3, 9, 4))], 1),
    ("resize-linear-pytorch-half-pixel", "Resize", 13,
     {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
     [X4], [("roi", F32()), ("s", F32(1, 1, 3, 1.5))], 1),
    ("upsample7", "Upsample", 7, {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, [X4], [], 1),
    ("upsample9-linear", "Upsample", 9, {"mode": "linear"}, [X4], [("s", F32(1, 1, 2, 1.5))], 1),
    ("conv-same-upper", "Conv", 13, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, [X4],
     [("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))], 1),
    ("conv-depthwise-dilated", "Conv", 13, {"group": 3, "dilations": [2, 1], "pads": [2, 1, 2, 1]}, [X4],
     [("w", RNG.standard_normal((6, 1, 3, 3)).astype(np.float32)), ("b", F32(1, 2, 3, 4, 5, 6))], 1),
    ("convtranspose-output-padding", "ConvTranspose", 13, {"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 1]},
     [X4], [("w", RNG.standard_normal((3, 2, 3, 3)).astype(np.float32))], 1),
    ("maxpool-ceil", "MaxPool", 13, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [X4], [], 1),
    ("avgpool-pads-exclude", "AveragePool", 13, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [X4], [], 1),
    ("avgpool-asym-include", "AveragePool", 13,
     {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0], "count_include_pad": 1, "ceil_mode": 1, "strides": [2, 2]}, [X4], [], 1),
    ("gather-negative", "Gather", 13, {"axis": 3}, [X4, I64(-1, 0, 2)], [], 1),
    ("expand", "Expand", 13, {}, [X4[:, :1], I64(2, 3, 1, 1)], [], 1),
    ("range-float", "Range", 13, {}, [F32(1), F32(-2), F32(-0.7)], [], 1),
    ("cumsum-exclusive-reverse", "CumSum", 14, {"exclusive": 1, "reverse": 1}, [X4, I64(2)], [], 1),
    ("trilu", "Trilu", 14, {"upper": 0}, [X4, I64(1)], [], 1),
    ("depthtospace-crd", "DepthToSpace", 13, {"blocksize": 2, "mode": "CRD"},
     [RNG.standard_normal((1, 8, 2, 3)).astype(np.float32)], [], 1),
    ("einsum", "Einsum", 13, {"equation": "bchw,bcHw->bhH"}, [X4, X4], [], 1),
    ("hardswish", "HardSwish", 14, {}, [X4 * 4], [], 1),
    ("gelu-tanh", "Gelu", 20, {"approximate": "tanh"}, [X4], [], 1),
    ("layernorm", "LayerNormalization", 17, {"axis": -2}, [X4], [("s", RNG.standard_normal((5, 7)).astype(np.float32))], 1),
    ("argmax-last", "ArgMax", 13, {"axis": 1, "select_last_index": 1}, [np.array([[1, 3, 3, 0]], np.float32)], [], 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case):
    _, op, opset, attrs, runtime, consts, nout = case
    names = [f"i{k}" for k in range(len(runtime))] + [n for n, _ in consts]
    dtype = {np.float32: TP.FLOAT, np.int64: TP.INT64}
    inputs = [vi(n, dtype[a.dtype.type], None) for n, a in zip(names, runtime)]
    node = oh.make_node(op, names, [f"y{k}" for k in range(nout)], **attrs)
    graph = oh.make_graph([node], "g", inputs, [onnx.ValueInfoProto(name=f"y{k}") for k in range(nout)],
                          [nh.from_array(a, n) for n, a in consts])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto.ir_version = 8
    feeds = dict(zip(names, runtime))
    module = to_torch(ir.serde.deserialize_model(proto))
    assert_close(torch_run(module, feeds), ort_run(proto, feeds))


def test_dynamic_shapes_follow_the_input():
    """Shape -> Gather -> Concat -> Reshape: flattening that works for any batch and size."""
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        oh.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        oh.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [("zero", np.array(0, np.int64)), ("ax0", I64(0)), ("minus1", I64(-1))]
    model = make_model(nodes, [vi("x", shape=["N", "C", "H"])], [vi("y", shape=["N", "K"])], inits, opset=13)
    module = to_torch(model)
    for shape in [(1, 2, 3), (4, 5, 6)]:
        x = torch.randn(shape)
        assert module(x)[0].shape == (shape[0], shape[1] * shape[2])
