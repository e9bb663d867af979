"""Dynamic int8 of MatMul and Gather graphs, composed by mcomp (``dynamic_compose``, ``kernels.column_int8``,
``kernels.table_uint8``): the same graph and the same bytes as onnxruntime's ``quantize_dynamic``, for every
candidate the pass builds, and a big model's float weights left in their file."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import big_models  # noqa: E402
from mcomp import evaluate  # noqa: E402
from mcomp import model as model_io  # noqa: E402
from mcomp.kernels import column_int8, table_uint8  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.quantize import Quantize, mapped_source  # noqa: E402
from mcomp.passes.quantize.dynamic_compose import Composer, unsupported  # noqa: E402
from mcomp.passes.quantize.schemes.base import Unit  # noqa: E402
from helpers import treated_as_big  # noqa: E402

CPU = ["CPUExecutionProvider"]


def matmuls() -> onnx.ModelProto:
    """x feeds two MatMuls (one DynamicQuantizeLinear for both), their sum goes through a Relu, and one weight
    is read by two MatMuls (quantized once)."""
    rng = np.random.default_rng(0)
    weights = {"w0": (64, 32), "w1": (32, 32), "w2": (64, 32)}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="m0"),
             helper.make_node("MatMul", ["x", "w2"], ["h2"], name="m2"),
             helper.make_node("Add", ["h0", "h2"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w1"], ["h1"], name="m1"),
             helper.make_node("MatMul", ["h1", "w1"], ["y"], name="m3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32])],
                              [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                               for n, s in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def with_a_table() -> onnx.ModelProto:
    """``matmuls`` fed by an embedding table read by Gather, whose output is a graph output too: the
    quantized MatMuls read its uint8 output, the graph output is dequantized."""
    model = matmuls()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("ids", TensorProto.INT64, ["b"]))
    table = np.random.default_rng(4).standard_normal((10, 64)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(table, "table"))
    model.graph.node.insert(0, helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"))
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]))
    return model


def with_a_tied_table() -> onnx.ModelProto:
    """``with_a_table`` whose table is read again after the Gather, transposed, by a last MatMul (a tied LM
    head): onnxruntime dequantizes the uint8 table for it."""
    model = with_a_table()
    model.graph.node.extend([helper.make_node("MatMul", ["y", "w_to64"], ["h"], name="to64"),
                             helper.make_node("Transpose", ["table"], ["tableT"], name="tied"),
                             helper.make_node("MatMul", ["h", "tableT"], ["logits"], name="head")])
    model.graph.initializer.append(numpy_helper.from_array(
        np.random.default_rng(6).standard_normal((32, 64)).astype(np.float32), "w_to64"))
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 10]))
    return model


def with_a_gemm() -> onnx.ModelProto:
    """``matmuls`` then a Gemm with an ``alpha``, which neither the scheme nor onnxruntime rewrites as MatMul:
    left to onnxruntime's quantizer."""
    model = matmuls()
    model.graph.node.append(helper.make_node("Gemm", ["y", "wg"], ["z"], name="gemm", alpha=0.5))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((32, 8), np.float32), "wg"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 8]))
    return model


def onnxruntimes(model: onnx.ModelProto, folder: Path, reduce_range=False, exclude=(), only=None) -> onnx.ModelProto:
    onnx.save(model, str(folder / "in.onnx"))
    quantize_dynamic(str(folder / "in.onnx"), str(folder / "out.onnx"), op_types_to_quantize=["MatMul", "Gather"],
                     per_channel=True,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                     nodes_to_quantize=only, extra_options={"MatMulConstBOnly": True})
    return onnx.load(str(folder / "out.onnx"))


def nodes_of(model: onnx.ModelProto) -> list[tuple]:
    return sorted((n.name, n.op_type, tuple(n.input), tuple(n.output),
                   tuple((a.name, helper.get_attribute_value(a)) for a in n.attribute)) for n in model.graph.node)


def tensors_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("reduce_range", [False, True])
def test_weights_are_onnxruntimes_bytes(tmp_path, reduce_range):
    """Columns of zeros, of a denormal (scale below float32's smallest normal: 1.0), constant, exact halves
    after scaling (rounded half to even), and the whole ±127 ramp."""
    w = np.random.default_rng(1).standard_normal((300, 700)).astype(np.float32)
    w[:, 3], w[:, 5], w[:, 7] = 0.0, 1e-40, -2.5
    w[:, 9] = np.arange(300, dtype=np.float32) * np.float32(0.05)
    w[:, 11] = np.linspace(-1.27, 1.27, 300, dtype=np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 300])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 700])], [numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", 13)])
    theirs = tensors_of(onnxruntimes(model, tmp_path, reduce_range))
    q, scale = column_int8.quantize(w, reduce_range)
    assert q.dtype == theirs["w_quantized"].dtype and np.array_equal(q, theirs["w_quantized"])
    assert np.array_equal(scale, theirs["w_scale"]) and not theirs["w_zero_point"].any()


@pytest.mark.parametrize("exclude, only", [((), None), (("m2",), None), (("m1",), None), ((), ["m0", "m3"]),
                                           ((), ["m0", "m1"])])
def test_a_candidate_is_onnxruntimes_graph(tmp_path, exclude, only):
    """The last case: w1 is read by m1, quantized, then by m3, float, which reads it dequantized."""
    model = matmuls()
    theirs = onnxruntimes(model, tmp_path, exclude=exclude, only=only)
    ours = Composer(model, reduce_range=False).compose(set(only or ["m0", "m1", "m2", "m3"]) - set(exclude))
    same_model(ours, theirs, {"x": np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)})


@pytest.mark.parametrize("exclude, only", [((), None), (("embed",), None), (("m0",), None), (("m0", "m2"), None),
                                           ((), ["embed", "m1"])])
def test_a_candidate_with_a_table_is_onnxruntimes_graph(tmp_path, exclude, only):
    """The Gather's uint8 output is read by the quantized MatMuls as it is (no DynamicQuantizeLinear), and
    dequantized before a float reader (an excluded MatMul) and for the graph output."""
    model = with_a_table()
    theirs = onnxruntimes(model, tmp_path, exclude=exclude, only=only)
    ours = Composer(model, reduce_range=False).compose(set(only or ["embed", "m0", "m1", "m2", "m3"]) - set(exclude))
    onnx.checker.check_model(ours)  # nodes in an order that runs
    same_model(ours, theirs, {"ids": np.array([3, 0, 9, 3], np.int64)})


@pytest.mark.parametrize("exclude", [(), ("embed",), ("embed", "to64")])
def test_a_tied_table_is_dequantized_for_its_later_reader_as_onnxruntime_does(tmp_path, exclude):
    model = with_a_tied_table()
    units = {"embed", "m0", "m1", "m2", "m3", "to64"}
    assert unsupported(model, [Unit(n, "Gather" if n == "embed" else "MatMul", 1) for n in units], True) is None
    theirs = onnxruntimes(model, tmp_path, exclude=exclude)
    ours = Composer(model, reduce_range=False).compose(units - set(exclude))
    onnx.checker.check_model(ours)
    same_model(ours, theirs, {"ids": np.array([1, 7], np.int64)})


def test_a_table_read_before_its_gather_stays_float_for_that_reader(tmp_path):
    """The tied head's Transpose placed before the Gather (as onnxruntime's optimizer orders it): it reads the
    float table, kept beside the uint8 one, as onnxruntime's quantizer leaves it."""
    model = with_a_tied_table()
    tied = next(i for i, n in enumerate(model.graph.node) if n.name == "tied")
    model.graph.node.insert(0, model.graph.node.pop(tied))
    units = {"embed", "m0", "m1", "m2", "m3", "to64"}
    assert unsupported(model, [Unit(n, "Gather" if n == "embed" else "MatMul", 1) for n in units], True) is None
    ours = Composer(model, reduce_range=False).compose(units)
    onnx.checker.check_model(ours)
    same_model(ours, onnxruntimes(model, tmp_path), {"ids": np.array([1, 7], np.int64)})


def test_a_table_read_before_and_after_its_gather_is_left_to_onnxruntime():
    """onnxruntime would keep the float table for the earlier reader under the name its dequantized copy takes."""
    model = with_a_tied_table()
    model.graph.node.insert(0, helper.make_node("Transpose", ["table"], ["early"], name="early"))
    model.graph.output.append(helper.make_tensor_value_info("early", TensorProto.FLOAT, [64, 10]))
    assert "before and after" in unsupported(model, [Unit("embed", "Gather", 1), Unit("m0", "MatMul", 1)], True)


def same_model(ours: onnx.ModelProto, theirs: onnx.ModelProto, feed) -> None:
    assert nodes_of(ours) == nodes_of(theirs)
    a, b = tensors_of(ours), tensors_of(theirs)
    assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    run = [evaluate.session(m.SerializeToString(), CPU).run(None, feed) for m in (ours, theirs)]
    assert all(np.array_equal(x, y) for x, y in zip(*run))


def test_tables_are_onnxruntimes_bytes(tmp_path):
    """One scale per table: all positive (the range still takes 0), all negative, all zero (scale 1), a
    denormal range (scale 1), values that land on halves, and a 3-D table; quantized in row slices."""
    rng = np.random.default_rng(5)
    tables = {"positive": rng.uniform(0.5, 3, (700, 16)), "negative": -rng.uniform(0.5, 3, (40, 8)),
              "zeros": np.zeros((5, 4)), "denormal": np.full((3, 4), 1e-40), "cube": rng.standard_normal((6, 5, 4)),
              "halves": np.linspace(-2.55, 0, 256).reshape(64, 4)}
    for name, table in tables.items():
        table = table.astype(np.float32)
        model = helper.make_model(helper.make_graph(
            [helper.make_node("Gather", ["t", "i"], ["y"], name="g")], "g",
            [helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(table, "t")]),
            opset_imports=[helper.make_opsetid("", 13)])
        theirs = tensors_of(onnxruntimes(model, tmp_path))
        q, scale, zero_point = table_uint8.quantize(table, threads=2)
        assert q.dtype == np.uint8 and np.array_equal(q, theirs["t_quantized"]), name
        assert scale == theirs["t_scale"] and zero_point == theirs["t_zero_point"], name


def test_a_big_models_float_layer_stays_in_its_file(tmp_path, monkeypatch):
    """With a layer excluded, the candidates of a model whose weights are mapped read that layer from the
    input's data file (no inline copy), and so does --explain's run of the prepared graph; the pass writes MatMulInteger + a float MatMul that load and run with
    their data, and the input folder is untouched."""
    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    folder = tmp_path / "in"
    folder.mkdir()
    dim = 512
    big_models.build(folder / "m.onnx", layers=3, dim=dim)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    names = [n.name for n in onnx.load_model(str(folder / "m.onnx"), load_external_data=False).graph.node]
    treated_as_big(monkeypatch)
    built = []
    original = Composer.compose
    monkeypatch.setattr(Composer, "compose", lambda self, q: built.append(original(self, q)) or built[-1])
    pipeline = Pipeline(steps=[single_step("quantize", {"mode": "dynamic", "exclude": [names[1]], "guard_runs": 5,
                                                           "explain": True})],
                        measure=Measure(runs=3, warmup=1, latency=False))
    out = tmp_path / "out.onnx"
    outcome = execute(pipeline, RunRequest(model=str(out.parent / "in" / "m.onnx"), output=str(out),
                                           load=model_io.LoadOptions(input_shapes={"x": (1, dim)})))
    step = outcome.report["steps"][0]
    assert built and all(mapped_source.reference_folders(c) == {str(folder.resolve())} for c in built)
    assert sorted(r["node"] for r in step["changes"]["explain"]) == [names[0], names[2]]  # --explain ran that graph
    if step["modified"]:  # the latency guard may keep the input on this machine; the candidates were checked above
        written = onnx.load_model(str(out), load_external_data=False)
        assert sorted(n.op_type for n in written.graph.node).count("MatMulInteger") == 2
        x = {"x": np.random.default_rng(2).standard_normal((1, dim)).astype(np.float32)}
        want = evaluate.session(str(folder / "m.onnx"), CPU).run(None, x)[0]
        got = evaluate.session(str(out), CPU).run(None, x)[0]
        assert np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_big_llms_table_stays_in_its_file_and_is_composed(tmp_path, monkeypatch):
    """An LLM's shape (``big_models --layout llm``): the embedding table, read by the Gather and by the tied
    head's Transpose, stays in the input's data file in the prepared graph like the MatMul weights; the
    composed model's Gather reads the uint8 table, and the model loads and runs with its data."""
    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    folder = tmp_path / "in"
    folder.mkdir()
    big_models.build_llm(folder / "m.onnx", layers=2, dim=512, vocab=1024)  # 1 MiB a layer: shared with the input (``offline._share_unchanged``)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    treated_as_big(monkeypatch)
    prepared = []
    original = Composer.__init__
    monkeypatch.setattr(Composer, "__init__", lambda self, proto, *args: prepared.append(proto) or original(self, proto, *args))
    built = []
    compose = Composer.compose
    monkeypatch.setattr(Composer, "compose", lambda self, q: built.append(compose(self, q)) or built[-1])
    pipeline = Pipeline(steps=[single_step("quantize", {"mode": "dynamic", "latency_guard": False})],
                        measure=Measure(runs=3, warmup=1, latency=False))
    out = tmp_path / "out.onnx"
    outcome = execute(pipeline, RunRequest(model=str(folder / "m.onnx"), output=str(out),
                                           load=model_io.LoadOptions(input_shapes={"ids": (2,)})))
    step = outcome.report["steps"][0]
    assert step["changes"]["builder"] == "mcomp: composed MatMul/Gather graph"
    table = next(t for t in prepared[0].graph.initializer if t.name == "table")
    assert table.data_location == TensorProto.EXTERNAL and mapped_source.reference_folders(prepared[0]) == {
        str(folder.resolve())}
    # the all-int8 candidate refers to its quantized weights in the pass's file rather than holding them
    locations = {e.value for t in built[0].graph.initializer for e in t.external_data if e.key == "location"}
    assert [Path(p).name for p in locations] == ["quantized.weights"]
    written = onnx.load_model(str(out), load_external_data=False)
    ops = [n.op_type for n in written.graph.node]
    assert ops.count("MatMulInteger") == 2
    gather = next(n for n in written.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "table_quantized" and "table" not in {t.name for t in written.graph.initializer}
    # onnxruntime's optimizer puts the head's Transpose(table) first; moved after the Gather, it reads the
    # dequantized uint8 table, and the float table is not stored beside it
    assert "table_DequantizeLinear" in {n.name for n in written.graph.node}
    ids = {"ids": np.array([5, 200], np.int64)}
    want = evaluate.session(str(folder / "m.onnx"), CPU).run(None, ids)[0]
    got = evaluate.session(str(out), CPU).run(None, ids)[0]
    assert np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_float_layer_the_input_file_does_not_hold_outlives_the_pass(monkeypatch):
    """A big model held in memory (from a checkpoint, say) has its weights spilled to the pass's own file; a
    layer left float is read back into the result, whose weights were otherwise in a folder the pass deletes."""
    treated_as_big(monkeypatch)
    result = Quantize(mode="dynamic", latency_guard=False, exclude=["m1"])(ir.serde.deserialize_model(matmuls()),
                                                                          Context(providers=CPU))
    assert result.modified and result.details["builder"] == "mcomp: composed MatMul/Gather graph"
    float_weight = result.model.graph.initializers["w1"].const_value
    assert np.array_equal(float_weight.numpy(), numpy_helper.to_array(matmuls().graph.initializer[1]))


def test_a_big_models_gemm_on_a_transposed_weight_is_rewritten_and_composed(monkeypatch):
    """The Gemm's weight, spilled to a file like every big weight, is read back for onnxruntime's rewrite to
    transpose it: the Gemm becomes MatMul + Add and the graph is composed, as onnxruntime quantizes it."""
    treated_as_big(monkeypatch)
    model = matmuls()
    model.graph.node.append(helper.make_node("Gemm", ["y", "wg", "bg"], ["z"], name="head", transB=1))
    model.graph.initializer.extend([numpy_helper.from_array(np.random.default_rng(7).standard_normal((8, 32))
                                                            .astype(np.float32), "wg"),
                                    numpy_helper.from_array(np.ones(8, np.float32), "bg")])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 8]))
    result = Quantize(mode="dynamic", latency_guard=False)(ir.serde.deserialize_model(model), Context(providers=CPU))
    assert result.details["builder"] == "mcomp: composed MatMul/Gather graph" and result.details["gemm_as_matmul"] == 1
    assert result.details["quantized_ops"] == {"MatMul": 5}
    ops = {n.name: n.op_type for n in result.model.graph}
    assert ops["head_MatMul_quant"] == "MatMulInteger" and ops["head_Add"] == "Add" and "Gemm" not in ops.values()


def test_past_protobufs_limit_onnxruntimes_quantizers_return_the_input_with_the_reason(monkeypatch):
    """onnxruntime's quantizers take the model as one protobuf (here a lowered limit): a 2.5 GiB chain exited 1
    with protobuf's EncodeError in dynamic mode. Composed MatMul graphs are not bound by it."""
    from mcomp import model as model_module

    monkeypatch.setattr(model_module, "PROTOBUF_LIMIT", 10_000)
    ctx = Context(providers=CPU)
    composed = Quantize(mode="dynamic", latency_guard=False)(ir.serde.deserialize_model(matmuls()), ctx)
    assert composed.modified
    for mode in ("dynamic", "fp16"):
        result = Quantize(mode=mode, latency_guard=False)(ir.serde.deserialize_model(with_a_gemm()), ctx)
        assert not result.modified and "past protobuf's 2 GB" in result.summary
        assert any("--mode weight-only" in note for note in result.notes)


@pytest.mark.parametrize("name, exclude, quantized", [
    ("bert", [], {"MatMul": 24, "Gather": 3}), ("bert", ["Gather"], {"MatMul": 24}),
    ("gpt2", [], {"MatMul": 16, "Gather": 2}), ("vit", [], {"MatMul": 25})])
def test_real_transformers_are_composed_as_onnxruntime_quantizes_them(monkeypatch, name, exclude, quantized):
    """Real exports (opset 18, dynamo), composed node for node and byte for byte as onnxruntime's quantizer
    writes them: BERT's MatMuls and its word, position and token-type tables (each dequantized for the Add
    that sums them), or with its tables excluded; GPT-2's 16 Gemms rewritten as MatMul + Add and its tied
    table dequantized for the LM head; ViT's MatMuls and its classifier Gemm on a transposed weight."""
    import transformer_models as tm

    from mcomp.model import load
    from mcomp.passes.quantize import dynamic_compose

    model = tm.build(name)
    ctx = Context(providers=CPU)
    options = {"mode": "dynamic", "latency_guard": False, "exclude": exclude, "min_fidelity": 0.5}
    ours = Quantize(**options)(load(model.path).model, ctx)
    assert ours.details["builder"] == "mcomp: composed MatMul/Gather graph" and ours.details["quantized_ops"] == quantized
    assert ours.details.get("gemm_as_matmul", 0) == {"gpt2": 16, "vit": 1}.get(name, 0)
    monkeypatch.setattr(dynamic_compose, "unsupported", lambda *args: "onnxruntime's, to compare")
    theirs = Quantize(**options)(load(model.path).model, ctx)
    assert theirs.details["builder"].startswith("onnxruntime's quantize_dynamic")
    a, b = (ir.serde.serialize_model(r.model) for r in (ours, theirs))
    assert nodes_of(a) == nodes_of(b)
    x, y = tensors_of(a), tensors_of(b)
    assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("mode", ["dynamic", "weight-only"])
@pytest.mark.parametrize("exclude", [["head"], ["Gemm"]])
def test_exclude_names_a_gemm_as_the_input_has_it(mode, exclude):
    """A Gemm rewritten as MatMul (``head_MatMul`` in dynamic mode, ``head`` in weight-only) is still excluded
    by its name or op type in the input."""
    model = with_a_gemm()
    model.graph.node[-1].CopyFrom(helper.make_node("Gemm", ["y", "wg"], ["z"], name="head"))  # rewritable: no alpha
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(
        np.random.default_rng(8).standard_normal((32, 64)).astype(np.float32), "wg"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 64]))
    options = {"latency_guard": False, "min_fidelity": 0.5, "exclude": exclude}
    result = Quantize(mode=mode, **options)(ir.serde.deserialize_model(model), Context(providers=CPU))
    assert result.modified
    rewritten = "head_MatMul" if mode == "dynamic" else "head"
    assert {"node": rewritten, "reason": "--exclude"} in result.details["float_reasons"]
    assert any(n.op_type == "MatMul" and n.name == rewritten for n in result.model.graph)  # float
