"""Structured pruning on ONNX graphs: groups (what is coupled), surgery, the driver, similarity merge.

Tiny graphs are built inline, one per coupling pattern; each test checks the group chains, the
shapes after a cut at rate 0.5, that onnxruntime runs the result with the same output shapes,
and — the strongest check of the surgery — that when the removed channels' consumer weights are
zero beforehand, cutting them changes no output. Real models: ``test_prune_structured_real.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import run
from mcomp.kernels.fidelity import relative_l2
from mcomp.passes.prune.structured import find_groups, prune_structured, remove_channels
from mcomp.passes.prune.structured.merge import merge_similar
from mcomp.passes.prune.structured.paths import map_path
from mcomp.passes.prune.structured.prepare import const
from mcomp.passes.prune.structured.surgery import set_input

RNG = np.random.default_rng(0)


def W(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def bn(name, x, y, c, inits):
    inits.update({f"{name}.s": RNG.uniform(0.5, 1.5, c).astype(np.float32), f"{name}.b": W(c),
                  f"{name}.m": W(c), f"{name}.v": RNG.uniform(0.5, 2, c).astype(np.float32)})
    return helper.make_node("BatchNormalization", [x, f"{name}.s", f"{name}.b", f"{name}.m", f"{name}.v"], [y], name=name)


def conv(name, x, y, w, inits, bias=True, **attrs):
    inits[f"{name}.w"] = w
    ins = [x, f"{name}.w"]
    if bias:
        inits[f"{name}.b"] = W(w.shape[0])
        ins.append(f"{name}.b")
    k = w.shape[2]
    return helper.make_node("Conv", ins, [y], name=name, pads=[k // 2] * 4, **attrs)


def node(op, ins, outs, name, **attrs):
    return helper.make_node(op, ins, outs, name=name, **attrs)


def build(nodes, inits, *, inputs=(("x", ["N", 3, 8, 8]),), outputs=(("y", ["N", 4, 8, 8]),), opset=13) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def feeds_for(model: ir.Model, batch: int = 2) -> dict:
    out = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) and d > 0 else batch for d in value.shape]
        out[value.name] = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    return out


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def by_producer(groups, name):
    return next(g for g in groups if any(p.name == name for p in g.producers))


def weight(model: ir.Model, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph if n.name == node_name)
    return const(node.inputs[index])


def half_keep(group) -> np.ndarray:
    """Every other channel of each segment (so Split pieces lose the same share)."""
    return np.concatenate([np.arange(lo, hi)[::2] for lo, hi in group.segments])


def assert_exact_cut(model: ir.Model, feeds: dict | None = None, atol: float = 1e-4) -> ir.Model:
    """Zero what reads the channels about to go; cutting them must then leave every output alone."""
    model = copy(model)
    groups = [g for g in find_groups(model) if g.prunable]
    assert groups, "nothing to cut"
    plans = []
    for group in groups:
        keep = half_keep(group)
        removed = np.setdiff1d(np.arange(group.channels), keep)
        for m in group.members:
            if m.role == "consumer":
                w = const(m.node.inputs[m.input_index]).copy()
                index = [slice(None)] * w.ndim
                index[m.axis] = map_path(m.path, removed)[1]
                w[tuple(index)] = 0
                set_input(model, m.node, m.input_index, w)
        plans.append((group, keep))
    feeds = feeds or feeds_for(model)
    before = run(model, feeds)
    for group, keep in plans:
        remove_channels(model, group, keep, infer=False)
    after = run(model, feeds)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)
    return model


# --------------------------------------------------------------------------- coupling patterns


def conv_bn_relu_conv(opset: int = 13) -> ir.Model:
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), bn("bn1", "c1", "n1", 8, inits),
             node("Relu", ["n1"], ["r1"], "relu1"), conv("conv2", "r1", "y", W(4, 8, 3, 3), inits)]
    return build(nodes, inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_conv_bn_relu_conv_chain_and_cut(opset):
    model = conv_bn_relu_conv(opset)
    groups = find_groups(model)
    assert [g.chain for g in groups] == ["conv1.out => bn1 => relu1 => conv2.in", "conv2.out"]
    first, last = groups
    assert first.prunable and first.channels == 8 and first.reason is None
    assert not last.prunable and "graph output y" in last.reason
    roles = {(m.node.name, m.role, m.axis) for m in first.members if m.tensor}
    assert roles >= {("conv1", "producer", 0), ("bn1", "param", 0), ("conv2", "consumer", 1)}

    feeds = feeds_for(model)
    report = prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "conv1").shape == (4, 3, 3, 3) and weight(model, "conv1", 2).shape == (4,)
    assert all(weight(model, "bn1", i).shape == (4,) for i in range(1, 5))
    assert weight(model, "conv2").shape == (4, 4, 3, 3)
    assert run(model, feeds)[0].shape == (2, 4, 8, 8)
    assert [(r.channels_before, r.channels_after) for r in report.groups] == [(8, 4), (4, 4)]
    assert report.parameters_after < report.parameters_before and report.macs_after < report.macs_before
    assert report.groups[1].reason and report.left_whole == [report.groups[1]]
    assert_exact_cut(conv_bn_relu_conv(opset))


def test_keep_everything_changes_nothing():
    model = conv_bn_relu_conv()
    feeds = feeds_for(model)
    before = run(model, feeds)[0]
    report = prune_structured(model, rate=1e-6, round_to=1)
    assert not report.pruned
    np.testing.assert_allclose(run(model, feeds)[0], before, rtol=1e-5, atol=1e-6)


def residual() -> ir.Model:
    """t = relu(conv1(x)); y = conv3(relu(t + bn2(conv2(t)))) + a one-conv residual x + conv4(x)."""
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), node("Relu", ["c1"], ["t"], "relu1"),
             conv("conv2", "t", "c2", W(8, 8, 3, 3), inits), bn("bn2", "c2", "n2", 8, inits),
             node("Add", ["t", "n2"], ["s"], "add"), node("Relu", ["s"], ["r"], "relu2"),
             conv("conv4", "r", "c4", W(8, 8, 1, 1), inits), node("Add", ["r", "c4"], ["u"], "add2"),
             conv("conv3", "u", "y", W(4, 8, 3, 3), inits)]
    return build(nodes, inits)


def test_residual_add_merges_producers():
    model = residual()
    groups = find_groups(model)
    trunk = by_producer(groups, "conv1")
    assert trunk.prunable
    assert {n.name for n in trunk.producers} == {"conv1", "conv2", "conv4"}
    assert {n.name for n in trunk.consumers} == {"conv2", "conv3", "conv4"}
    assert trunk.chain.startswith("conv1.out => relu1 => conv2.in => add")
    assert len(groups) == 2  # conv2/conv4 started no group of their own
    prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "conv2").shape == (4, 4, 3, 3)
    assert weight(model, "conv4").shape == (4, 4, 1, 1)  # x + conv(x): one weight cut on both axes
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)
    assert_exact_cut(residual())


def depthwise() -> ir.Model:
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 1, 1), inits), node("Relu", ["c1"], ["r1"], "relu1"),
             conv("dw", "r1", "d", W(8, 1, 3, 3), inits, group=8), bn("bn", "d", "n", 8, inits),
             node("Relu", ["n"], ["r2"], "relu2"), conv("conv2", "r2", "y", W(4, 8, 1, 1), inits)]
    return build(nodes, inits)


def test_depthwise_couples_in_and_out():
    model = depthwise()
    (group, _) = find_groups(model)
    assert group.chain == "conv1.out => relu1 => dw => bn => relu2 => conv2.in"
    assert any(m.role == "depthwise" for m in group.members)
    prune_structured(model, rate=0.5, round_to=1)
    dw = next(n for n in model.graph if n.name == "dw")
    assert const(dw.inputs[1]).shape == (4, 1, 3, 3) and dw.attributes["group"].value == 4
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)
    assert_exact_cut(depthwise())


def concat() -> ir.Model:
    inits = {}
    nodes = [conv("ca", "x", "a", W(4, 3, 3, 3), inits), conv("cb", "x", "b", W(6, 3, 3, 3), inits),
             node("Concat", ["a", "b"], ["c"], "cat", axis=1), node("Relu", ["c"], ["r"], "relu"),
             conv("conv3", "r", "y", W(4, 10, 3, 3), inits)]
    return build(nodes, inits)


def test_concat_members_carry_offsets():
    model = concat()
    groups = find_groups(model)
    a, b = by_producer(groups, "ca"), by_producer(groups, "cb")
    assert a.chain == "ca.out => cat => relu => conv3.in"
    assert b.chain == "cb.out => cat[+4] => relu => conv3.in"
    assert [m.offset for m in b.members if m.node.name == "cat"] == [4]
    prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "conv3").shape == (4, 5, 3, 3)
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)
    assert_exact_cut(concat())


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_pieces_are_cut_alike(opset):
    inits = {}
    if opset < 13:
        split = node("Split", ["c1"], ["p", "q"], "split", axis=1, split=[4, 4])
    elif opset < 18:
        inits["sizes"] = np.array([4, 4], np.int64)
        split = node("Split", ["c1", "sizes"], ["p", "q"], "split", axis=1)
    else:
        split = node("Split", ["c1"], ["p", "q"], "split", axis=1, num_outputs=2)
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), split,
             conv("ca", "p", "a", W(4, 4, 3, 3), inits), conv("cb", "q", "b", W(4, 4, 3, 3), inits),
             node("Add", ["q", "b"], ["qb"], "add"),  # a residual on one Split piece
             node("Concat", ["a", "p", "qb"], ["c"], "cat", axis=1), conv("conv3", "c", "y", W(4, 12, 1, 1), inits)]
    model = build(nodes, inits, opset=opset)
    group = by_producer(find_groups(model), "conv1")
    assert group.prunable and group.segments == [(0, 4), (4, 8)]
    assert {n.name for n in group.producers} == {"conv1", "cb"}
    exact = assert_exact_cut(model)
    split_node = next(n for n in exact.graph if n.name == "split")
    sizes = split_node.attributes["split"].value if opset < 13 else const(split_node.inputs[1]).tolist()
    assert list(sizes) == [2, 2]
    prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "ca").shape[1] == 2 and weight(model, "cb").shape == (2, 2, 3, 3)
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("last", [False, True], ids=["channels-first", "channels-last"])
@pytest.mark.parametrize("kind", ["flatten", "reshape", "reshape-inferred"])
def test_flatten_into_gemm(kind, last):
    """Channel c becomes 16 features: a block of them where the channels lead; with ``last``, Keras' and
    TensorFlow's layout (MTCNN's RNet and ONet), the channels moved last by Transpose and the whole
    [N, H, W, C] flattened, every C-th feature at each of the H·W positions."""
    inits = {"fc.w": W(10, 8 * 16), "fc.b": W(10)}
    before = "t" if last else "r"
    if kind == "flatten":
        flat = node("Flatten", [before], ["f"], "flat", axis=1)
    else:
        inits["target"] = np.array([0, 128 if kind == "reshape" else -1], np.int64)
        flat = node("Reshape", [before, "target"], ["f"], "flat")
    moved = [node("Transpose", ["r"], ["t"], "tr", perm=[0, 2, 3, 1])] if last else []
    nodes = [conv("conv1", "x", "c", W(8, 3, 3, 3), inits), node("Relu", ["c"], ["r"], "relu"), *moved, flat,
             node("Gemm", ["f", "fc.w", "fc.b"], ["y"], "fc", transB=1)]
    model = build(nodes, inits, inputs=(("x", ["N", 3, 4, 4]),), outputs=(("y", ["N", 10]),))
    group = by_producer(find_groups(model), "conv1")
    assert group.prunable and group.chain == f"conv1.out => relu => {'tr => ' if last else ''}flat(×16) => fc.in"
    exact = assert_exact_cut(model)
    if kind == "reshape":
        flat_node = next(n for n in exact.graph if n.name == "flat")
        assert const(flat_node.inputs[1]).tolist() == [0, 64]
    prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "fc").shape == (10, 64)
    assert run(model, feeds_for(model))[0].shape == (2, 10)


def se_block() -> ir.Model:
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), node("Relu", ["c1"], ["t"], "relu1"),
             node("GlobalAveragePool", ["t"], ["g"], "gap"), conv("reduce", "g", "rd", W(4, 8, 1, 1), inits),
             node("Relu", ["rd"], ["rr"], "relu_se"), conv("expand", "rr", "ex", W(8, 4, 1, 1), inits),
             node("HardSigmoid", ["ex"], ["hs"], "hsig", alpha=0.2, beta=0.5), node("Mul", ["t", "hs"], ["m"], "scale"),
             conv("conv2", "m", "y", W(4, 8, 3, 3), inits)]
    return build(nodes, inits)


def test_squeeze_excitation():
    model = se_block()
    groups = find_groups(model)
    trunk, inner = by_producer(groups, "conv1"), by_producer(groups, "reduce")
    assert {n.name for n in trunk.producers} == {"conv1", "expand"}
    assert {n.name for n in trunk.consumers} == {"reduce", "conv2"}
    assert inner.chain == "reduce.out => relu_se => expand.in"
    assert trunk is not inner and all(g.prunable for g in (trunk, inner))
    prune_structured(model, rate=0.5, round_to=1)
    assert weight(model, "expand").shape == (4, 2, 1, 1) and weight(model, "reduce").shape == (2, 4, 1, 1)
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)
    assert_exact_cut(se_block())


def test_transpose_into_matmul():
    """A conv's channels moved last by Transpose, read by a MatMul with constant weights (a head)."""
    inits = {"head.w": W(8, 5), "head.b": W(5)}
    nodes = [conv("conv1", "x", "c", W(8, 3, 3, 3), inits), node("Transpose", ["c"], ["t"], "tr", perm=[0, 2, 3, 1]),
             node("MatMul", ["t", "head.w"], ["mm"], "head"), node("Add", ["mm", "head.b"], ["y"], "bias")]
    model = build(nodes, inits, outputs=(("y", ["N", 8, 8, 5]),))
    group = by_producer(find_groups(model), "conv1")
    assert group.chain == "conv1.out => tr => head.in"
    assert_exact_cut(model)


def test_unsafe_uses_are_left_whole():
    inits = {"shape": np.array([-1], np.int64)}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), node("Relu", ["c1"], ["r1"], "relu1"),
             conv("conv2", "r1", "c2", W(6, 8, 3, 3), inits), node("Relu", ["c2"], ["y"], "relu_out"),
             conv("conv3", "r1", "c3", W(6, 8, 3, 3), inits), node("Shape", ["c3"], ["s"], "shape"),
             node("Cast", ["s"], ["z"], "cast", to=TensorProto.FLOAT), node("Reshape", ["z", "shape"], ["z2"], "flat")]
    model = build(nodes, inits, outputs=(("y", ["N", 6, 8, 8]), ("z2", [4])))
    groups = find_groups(model)
    assert by_producer(groups, "conv1").prunable
    assert "reaches graph output y" in by_producer(groups, "conv2").reason
    assert "Shape" in by_producer(groups, "conv3").reason
    assert_exact_cut(model)


def test_subgraph_use_is_left_whole():
    then = helper.make_graph([helper.make_node("ReduceSum", ["r1"], ["o"], keepdims=0)], "then", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, [])])
    other = helper.make_graph([helper.make_node("Constant", [], ["o2"], value_float=0.0)], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [])])
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), node("Relu", ["c1"], ["r1"], "relu1"),
             conv("conv2", "r1", "y", W(4, 8, 3, 3), inits), node("Greater", ["t", "zero"], ["flag"], "cond"),
             helper.make_node("If", ["flag"], ["z"], name="if", then_branch=then, else_branch=other)]
    inits["zero"] = np.zeros(1, np.float32)
    model = build(nodes, inits, inputs=(("x", ["N", 3, 8, 8]), ("t", [1])), outputs=(("y", ["N", 4, 8, 8]), ("z", [])))
    group = by_producer(find_groups(model), "conv1")
    assert not group.prunable and "subgraph" in group.reason


# --------------------------------------------------------------------------- the driver


def test_round_to_and_minimum():
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(40, 3, 3, 3), inits), node("Relu", ["c1"], ["r"], "relu"),
             conv("conv2", "r", "y", W(4, 40, 3, 3), inits)]
    model = build(nodes, inits)
    report = prune_structured(copy(model), rate=0.3, round_to=8)
    assert report.groups[0].channels_after == 32  # 28 rounded to a multiple of 8
    report = prune_structured(copy(model), rate=0.9, round_to=8)
    assert report.groups[0].channels_after == 8  # never fewer than round_to


def test_importance_choices():
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(8, 3, 3, 3), inits), bn("bn1", "c1", "n1", 8, inits),
             node("Relu", ["n1"], ["r"], "relu"), conv("conv2", "r", "y", W(4, 8, 3, 3), inits)]
    inits["bn1.s"][:] = [1, 0.01, 1, 0.01, 1, 0.01, 1, 0.01]
    model = build(nodes, inits)
    kept = copy(model)
    prune_structured(kept, rate=0.5, importance="bn", round_to=1)
    np.testing.assert_allclose(weight(kept, "bn1"), [1, 1, 1, 1])
    grads = {"conv1.w": np.zeros((8, 3, 3, 3), np.float32)}
    grads["conv1.w"][[0, 2, 5, 7]] = 1.0
    tay = copy(model)
    report = prune_structured(tay, rate=0.5, importance="taylor", grads=grads, round_to=1)
    assert report.groups[0].importance == "taylor"
    a, b = copy(model), copy(model)
    prune_structured(a, rate=0.5, importance="random", seed=3, round_to=1)
    prune_structured(b, rate=0.5, importance="random", seed=3, round_to=1)
    np.testing.assert_array_equal(weight(a, "conv1"), weight(b, "conv1"))
    with pytest.raises(ValueError):
        prune_structured(copy(model), rate=0.5, importance="taylor")


@pytest.mark.parametrize("target", ["params", "macs"])
def test_target_bisection(target):
    inits = {}
    nodes = [conv("conv1", "x", "c1", W(32, 3, 3, 3), inits), node("Relu", ["c1"], ["r1"], "relu1"),
             conv("conv2", "r1", "c2", W(32, 32, 3, 3), inits), node("Relu", ["c2"], ["r2"], "relu2"),
             conv("conv3", "r2", "y", W(4, 32, 3, 3), inits)]
    model = build(nodes, inits)
    report = prune_structured(model, rate=0.0, target=target, target_value=0.4, round_to=1,
                              input_shapes={"x": (1, 3, 8, 8)})
    key = "parameters" if target == "params" else "macs"
    assert 1 - report.ratio(key) >= 0.4
    assert 1 - report.ratio(key) < 0.55  # the smallest rate that meets it, not a much larger one
    assert 0 < report.rate < 0.6


# --------------------------------------------------------------------------- similarity merge


def twins() -> ir.Model:
    """conv1's channels 4..7 are positive multiples of 0..3 (filter and bias): a merge is exact."""
    inits = {}
    w = W(8, 3, 3, 3)
    w[4:] = w[:4] * np.array([2.0, 0.5, 3.0, 1.5], np.float32)[:, None, None, None]
    nodes = [conv("conv1", "x", "c1", w, inits), node("Relu", ["c1"], ["r"], "relu"),
             node("MaxPool", ["r"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
             conv("conv2", "p", "y", W(4, 8, 3, 3), inits)]
    inits["conv1.b"][4:] = inits["conv1.b"][:4] * np.array([2.0, 0.5, 3.0, 1.5], np.float32)
    return build(nodes, inits, outputs=(("y", ["N", 4, 4, 4]),))


def test_merge_folds_twins_exactly():
    model = twins()
    feeds = feeds_for(model)
    before = run(model, feeds)[0]
    report = merge_similar(model, rate=0.5, round_to=1)
    assert report.groups[0].channels_after == 4 and report.groups[0].merged == 4
    np.testing.assert_allclose(run(model, feeds)[0], before, rtol=1e-4, atol=1e-4)
    magnitude = twins()
    prune_structured(magnitude, rate=0.5, round_to=1)
    assert relative_l2(before, run(magnitude, feeds)[0]) > 0.05


def test_merge_falls_back_where_no_fold_is_exact():
    model = se_block()
    report = merge_similar(model, rate=0.5, round_to=1)
    trunk = report.groups[0]
    assert trunk.importance == "l1" and "does not commute" in trunk.note
    assert run(model, feeds_for(model))[0].shape == (2, 4, 8, 8)


def test_slices_are_removed_as_np_delete_would_and_the_result_is_c_ordered():
    """``surgery.without`` takes the kept slices (np.delete along axis 1 of an 8192×8192 weight returned a
    Fortran-ordered copy: 0.6 s, and 0.6 s more to reorder it, of a 0.75 GiB model's 2.7 s prune)."""
    from mcomp.passes.prune.structured.surgery import without

    a = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    for axis, positions in ((0, {1, 3}), (1, {0, 5, 2}), (2, {4})):
        cut = without(a, positions, axis)
        assert np.array_equal(cut, np.delete(a, sorted(positions), axis=axis)) and cut.flags["C_CONTIGUOUS"]
