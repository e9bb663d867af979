"""Where a big model's copies went (issue 12): one session at a time in a comparison, the weight-only
quantizer reading its weights mapped from a file, shape inference without the weights, a quantize
pass's reference as a file, and mapped pages released once serialized. Small models; the sizes from
which each path is taken are lowered to reach it."""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import big_models  # noqa: E402

from mcomp import evaluate, external_data, offline, sources  # noqa: E402
from mcomp import model as model_io  # noqa: E402
from mcomp.data import Dataset  # noqa: E402
from mcomp.passes.quantize import footprint, mapped_source, prepare, weights_aside  # noqa: E402


def _chain(dim: int = 64, gather: bool = True) -> onnx.ModelProto:
    """ids → Gather(table) → three MatMuls; float weights of ``dim``×``dim``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((100, dim)).astype(np.float32), "table")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="gather")] if gather else []
    prev = "h" if gather else "x"
    for i in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        prev = f"m{i}"
    inputs = ([helper.make_tensor_value_info("ids", TensorProto.INT64, [4])] if gather
              else [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])])
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)],
                              inits if gather else inits[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_compare_releases_the_reference_session_before_the_candidates(monkeypatch):
    """The reference runs and its session is gone before the candidate's is made: two sessions of
    a big model, alive together, were twice its weights resident."""
    made = []
    real = evaluate.session

    def tracked(*args, **kwargs):
        if made:
            assert made[-1]() is None, "the reference session is still alive when the candidate's is made"
        sess = real(*args, **kwargs)
        made.append(weakref.ref(sess))
        return sess

    monkeypatch.setattr(evaluate, "session", tracked)
    model = _chain(gather=False).SerializeToString()
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 64)).astype(np.float32)} for k in range(3)]
    result = evaluate.compare(model, model, Dataset(feeds), ["CPUExecutionProvider"], 1, ["m2"])
    assert len(made) == 2 and made[1]() is None
    assert result["fidelity"]["summary"]["cosine"] == pytest.approx(1.0)


def test_weight_only_source_maps_matmul_weights_and_builds_the_same(tmp_path, monkeypatch):
    """The quantizer's source keeps MatMul weights in its data file (mapped through onnx_ir, not
    parsed inline), and the quantizer's output is the same protobuf as from an inline source."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    monkeypatch.setattr(mapped_source, "MIN_BYTES", 0)
    proto = _chain()
    before = proto.SerializeToString()
    mapped_source.write(proto, tmp_path / "prepared.onnx")
    assert proto.SerializeToString() == before, "the prepared graph is not changed"
    loaded = mapped_source.load(tmp_path / "prepared.onnx")
    external = {t.name for t in loaded.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert external == {"w0", "w1", "w2"}, "MatMul weights only: the Gather table stays inline"
    assert isinstance(ir.from_proto(loaded.graph.initializer[1]), ir.ExternalTensor)
    outputs = []
    for source in (onnx.load_model_from_string(before), loaded):
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=0, bits=4,
                                              op_types_to_quantize=("MatMul", "Gather"))
        quantizer = MatMulNBitsQuantizer(source, bits=4, block_size=32, is_symmetric=True, accuracy_level=0,
                                         nodes_to_exclude=["mm1"], nodes_to_include=["mm0", "mm2", "gather"],
                                         op_types_to_quantize=("MatMul", "Gather"), algo_config=config)
        quantizer.process()
        mapped_source.inline_rest(quantizer.model.model)
        outputs.append(quantizer.model.model.SerializeToString())
    assert outputs[0] == outputs[1]
    assert b"w1" in outputs[1] and not any(t.data_location == TensorProto.EXTERNAL
                                           for t in onnx.load_model_from_string(outputs[1]).graph.initializer)


def test_shape_inference_sees_no_weights_and_infers_the_same(monkeypatch):
    """onnx's shape inference runs on the graph without its big float weights; the result, weights
    moved back in, is what inference of the whole model gives."""
    proto = _chain()
    expected = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True).SerializeToString()
    monkeypatch.setattr(weights_aside, "MIN_BYTES", 0)
    seen = []
    real = onnx.shape_inference.infer_shapes

    def spy(model, *args, **kwargs):
        seen.append([t.HasField("raw_data") for t in model.graph.initializer if t.data_type == TensorProto.FLOAT])
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    inferred, how = prepare.infer_shapes(proto)
    assert how == "onnx" and seen == [[False] * 4]
    assert inferred.SerializeToString() == expected


def test_quantize_reference_of_a_big_model_is_a_file(tmp_path, monkeypatch):
    """A pass's reference: bytes for a small model (as before), a file with its data beside it for a
    big one; memory at load measures that file as it is."""
    folder = tmp_path / "in"
    folder.mkdir()
    big_models.build(folder / "m.onnx", layers=2, dim=64)
    small = model_io.load(folder / "m.onnx").model
    assert sources.kept_source(small, tmp_path) == model_io.to_bytes(small)
    monkeypatch.setattr(sources, "BIG_WEIGHTS", 1)
    kept = sources.kept_source(small, tmp_path)
    assert isinstance(kept, str) and Path(kept + ".data").is_file()
    found = footprint.compare(kept, model_io.to_bytes(small), tmp_path)
    if found is not None:  # Linux
        assert found["input"]["peak_mb"] >= 0 and found["output"]["peak_mb"] >= 0
    assert Path(kept).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in", "reference.onnx",
                                                                                 "reference.onnx.data"]


def test_serializing_a_mapped_model_releases_its_pages(tmp_path, monkeypatch):
    """The pages a serialization reads are released, each weight's once its bytes are taken: the
    protobuf holds the bytes, and the mapped ones stayed resident beside it."""
    folder = tmp_path / "in"
    folder.mkdir()
    big_models.build(folder / "m.onnx", layers=2, dim=64)
    monkeypatch.setattr(external_data, "MAPPED_FROM", 0)
    model = model_io.load(folder / "m.onnx").model
    released, per_tensor = [], []
    monkeypatch.setattr(external_data, "release_pages", lambda m: released.append(m))
    monkeypatch.setattr(external_data, "_release", lambda data: per_tensor.append(np.asarray(data).nbytes))
    proto = model_io.to_proto(model)
    assert released == [model, model]  # on entry (earlier reads) and at exit
    assert per_tensor == [64 * 64 * 4] * 2, "each weight's pages, once its bytes were taken"
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)


def test_weight_only_quantizer_reads_its_weights_from_a_file(tmp_path, monkeypatch):
    """In the quantize pass, onnxruntime's quantizer is given the graph with its MatMul weights in a
    data file (no float weight inline), and the pass's output is the one an inline source gives."""
    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    folder = tmp_path / "in"
    folder.mkdir()
    big_models.build(folder / "m.onnx", layers=3, dim=128)
    given = []
    real = mapped_source.load

    def spy(path):
        proto = real(path)
        given.append(sorted(t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL))
        return proto

    def quantize(out: Path, **options) -> tuple[bytes, dict]:
        pipeline = Pipeline(steps=[single_step("quantize", {"mode": "weight-only", **options})],
                            measure=Measure(runs=3, warmup=1, latency=False))
        outcome = execute(pipeline, RunRequest(model=str(folder / "m.onnx"), output=str(out),
                                               load=model_io.LoadOptions(input_shapes={"x": (1, 128)})))
        changes = outcome.report["steps"][0]["changes"]
        return (out.parent / (out.name + ".data")).read_bytes(), {k: changes.get(k) for k in ("explain", "budget")}

    # 64 KiB weights: under MIN_BYTES, inline as before; a fidelity floor sends layers back to float
    # (candidates then read float weights back from the file), and --explain runs the prepared graph
    runs = [({}, quantize(tmp_path / "inline0.onnx")),
            ({"explain": True, "min_fidelity": 0.997},
             quantize(tmp_path / "inline1.onnx", explain=True, min_fidelity=0.997))]
    assert given == [] and runs[1][1][1]["budget"]["float_nodes"], "the floor left layers float"
    assert runs[1][1][1]["explain"], "--explain gave its table"
    monkeypatch.setattr(mapped_source, "load", spy)
    monkeypatch.setattr(mapped_source, "MIN_BYTES", 0)
    for k, (options, expected) in enumerate(runs):
        data, changes = quantize(tmp_path / f"mapped{k}.onnx", **options)
        assert data == expected[0]
        assert changes["explain"] == expected[1]["explain"]
        assert changes["budget"]["float_nodes"] == expected[1]["budget"]["float_nodes"]
    assert given and all(names == ["w0", "w1", "w2"] for names in given)


@pytest.mark.parametrize("external,floor", [(True, None), (False, None), (True, 0.99999)],
                         ids=["external-input", "inline-input", "layers-left-float"])
def test_big_weight_only_prepare_keeps_matmul_weights_out_of_the_protobuf(tmp_path, monkeypatch, external, floor):
    """A big model's prepared graph never holds its MatMul weights inline: the quantizer maps each
    from the input's own data file (external input) or from the pass's file (inline input), and
    the pass's output is byte for byte the one a small model's inline path gives, also where a
    fidelity floor leaves layers float (their weights read back from the input's file)."""
    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    folder = tmp_path / "in"
    folder.mkdir()
    dim = 512  # 1 MiB weights: what onnxruntime's offline optimizer passes through is shared from 1 MiB
    big_models.build(folder / "m.onnx", layers=3, dim=dim)
    if not external:  # the same model, its weights inline
        inline = onnx.load_model(str(folder / "m.onnx"))
        (folder / "m.onnx.data").unlink()
        onnx.save_model(inline, str(folder / "m.onnx"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    given, real = [], mapped_source.load

    def spy(path):
        proto = real(path)
        given.append({t.name: dict((e.key, e.value) for e in t.external_data)["location"]
                      for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL})
        return proto

    def quantize(out: Path) -> bytes:
        options = {"mode": "weight-only", "block_size": 32, "latency_guard": False}
        if floor is not None:
            options["min_fidelity"] = floor
        pipeline = Pipeline(steps=[single_step("quantize", options)],
                            measure=Measure(runs=3, warmup=1, latency=False))
        execute(pipeline, RunRequest(model=str(folder / "m.onnx"), output=str(out),
                                     load=model_io.LoadOptions(input_shapes={"x": (1, dim)})))
        model = onnx.load_model(str(out))
        return {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}

    expected = quantize(tmp_path / "inline.onnx")
    if floor is not None:
        assert {"w0", "w1", "w2"} & set(expected), "some layer stayed float"
    monkeypatch.setattr(mapped_source, "load", spy)
    for module in (prepare, evaluate, offline):  # big: the prepared graph's weights go aside, the optimizer's are shared
        monkeypatch.setattr(module, "BIG_WEIGHTS", 1)
    monkeypatch.setattr(external_data, "MAPPED_FROM", 0)  # the input's weights stay mapped from its file
    assert quantize(tmp_path / "spilled.onnx") == expected
    assert given and set(given[0]) == {"w0", "w1", "w2"}
    places = {Path(location).name for location in given[0].values()}
    assert places == ({"m.onnx.data"} if external else {"prepared.weights"})
    assert all(Path(location).is_absolute() for location in given[0].values())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "the input is not touched"


@pytest.mark.parametrize("mapped", [False, True])
def test_weight_only_candidate_past_protobufs_limit(tmp_path, monkeypatch, mapped):
    """A candidate whose float layers would pass protobuf's 2 GB inline (here a lowered limit) keeps
    them in the input's data file and is run, timed and written from there: the pass returns a model
    of int4 and float layers that loads and runs with its data. Where the float weights are not in
    the input's file (an input held in memory), the input comes back unchanged with the reason, not
    an internal error. Every layer quantized works either way."""
    from mcomp import model as model_module
    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import Measure, Pipeline, single_step

    folder = tmp_path / "in"
    folder.mkdir()
    dim = 512  # 1 MiB weights: what onnxruntime's offline optimizer passes through is shared from 1 MiB
    big_models.build(folder / "m.onnx", layers=3, dim=dim)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    names = [n.name for n in onnx.load_model(str(folder / "m.onnx"), load_external_data=False).graph.node]
    monkeypatch.setattr(model_module, "PROTOBUF_LIMIT", 600_000)  # a float layer is 1 MiB; int4 ones ~150 KiB
    if mapped:  # as for a big model: weights mapped from the input's file, the pass's graph referring to them
        monkeypatch.setattr(external_data, "MAPPED_FROM", 0)
        monkeypatch.setattr(mapped_source, "MIN_BYTES", 0)
        for module in (prepare, evaluate, offline, sources):
            monkeypatch.setattr(module, "BIG_WEIGHTS", 1)

    def quantize(out: Path, **options) -> dict:
        pipeline = Pipeline(steps=[single_step("quantize", {"mode": "weight-only", **options})],
                            measure=Measure(runs=3, warmup=1, latency=False))
        outcome = execute(pipeline, RunRequest(model=str(folder / "m.onnx"), output=str(out),
                                               load=model_io.LoadOptions(input_shapes={"x": (1, dim)})))
        return outcome.report["steps"][0]

    step = quantize(tmp_path / "float_layer.onnx", exclude=[names[1]], max_slowdown=100.0, guard_runs=5)
    if not mapped:
        assert "input returned unchanged" in step["summary"] and "protobuf's 2 GB" in step["summary"]
    else:
        assert "unchanged" not in step["summary"], step["summary"]
        written = onnx.load_model(str(tmp_path / "float_layer.onnx"), load_external_data=False)
        assert sorted(n.op_type for n in written.graph.node) == ["MatMul", "MatMulNBits", "MatMulNBits"]
        assert (tmp_path / "float_layer.onnx.data").is_file()
        x = {"x": np.random.default_rng(2).standard_normal((1, dim)).astype(np.float32)}
        want = evaluate.session(str(folder / "m.onnx"), ["CPUExecutionProvider"]).run(None, x)[0]
        got = evaluate.session(str(tmp_path / "float_layer.onnx"), ["CPUExecutionProvider"]).run(None, x)[0]
        assert np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.95
        assert step["changes"]["memory_at_load"] is None or step["changes"]["memory_at_load"]["output"]["peak_mb"] > 0
    step = quantize(tmp_path / "all.onnx", min_fidelity=0.5, latency_guard=False)
    assert "unchanged" not in step["summary"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_model_sharing_its_inputs_weights_runs_from_their_folder_without_a_copy(tmp_path, monkeypatch):
    """A big model whose weights are still its input's (``optimize`` changes only the graph) is given
    to onnxruntime as bytes reading the input's data file where it is: no temp file, no copy of the
    weights, and the same outputs as the file itself. Weights in memory past ``INLINE_LIMIT``, or
    data files in two folders, take the written-file path as before."""
    folder = tmp_path / "in"
    folder.mkdir()
    big_models.build(folder / "m.onnx", layers=2, dim=64)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(external_data, "MAPPED_FROM", 0)  # the weights stay mapped from the input's file
    monkeypatch.setattr(sources, "BIG_WEIGHTS", 1)
    model = model_io.load(folder / "m.onnx").model
    feed = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
    expected = evaluate.session(str(folder / "m.onnx"), ["CPUExecutionProvider"]).run(None, feed)[0]
    with sources.runnable(model) as source:
        assert isinstance(source, sources.ModelBytes) and Path(source.folder) == folder.resolve()
        assert len(source) < 4096 and sources.weight_bytes(source) == 2 * 64 * 64 * 4
    got = evaluate.session(model, ["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(got, expected)
    assert all(isinstance(v.const_value, ir.ExternalTensor) and Path(v.const_value.location).is_absolute()
               for v in external_data.external_tensors(model)), "the model's own references are left as they were"
    assert sorted(p.name for p in folder.iterdir()) == before

    monkeypatch.setattr(sources, "INLINE_LIMIT", 0)  # a pass's new weights in memory: written beside them
    changed = model.graph.initializers["w0"]
    changed.const_value = ir.Tensor(np.zeros((64, 64), np.float32), name="w0")
    assert sources.in_their_folder(model) is None
    with sources.runnable(model) as source:
        assert isinstance(source, str) and Path(source + ".data").is_file()


def test_a_candidates_size_is_counted_without_serializing_its_weights():
    """The 2 GB check on weight-only candidates counts raw weights by their length (``ByteSize`` walks
    every byte): never below the serialized size, and over it by at most a few bytes a tensor."""
    from mcomp.passes.quantize.schemes.weight_only import serialized_size

    proto = _chain(dim=96)
    proto.graph.initializer.add().CopyFrom(helper.make_tensor("small", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    proto.graph.initializer[1].doc_string = "a weight with a long description " * 20
    exact, counted = proto.ByteSize(), serialized_size(proto)
    assert exact <= counted <= exact + 100 * len(proto.graph.initializer)


def _prepacking_off(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    except RuntimeError:  # never set
        return False


def test_a_big_int4_model_is_measured_with_its_weights_prepacked(tmp_path, monkeypatch):
    """Without prepacking, onnxruntime's MatMulNBits dequantizes its whole weight at every run (×21 the
    float model on a 2.5 GiB chain, against ×0.2 as users run it), and its int8 kernels run ×3 slower:
    a big int4 or int8 model keeps prepacking, a big float model goes without (one copy of its weights
    fewer); found in an ir.Model's nodes, in bytes and in a file."""
    from test_quantize_int4 import _ir, linear_stack, stack_context

    from mcomp.passes.quantize import Quantize

    monkeypatch.setattr(evaluate, "BIG_WEIGHTS", 1)  # every model is big
    float_model = linear_stack()
    for mode in ("weight-only", "dynamic", "static"):  # MatMulNBits; MatMulInteger; QDQ pairs
        quantized = Quantize(mode=mode, latency_guard=False, min_fidelity=0.5)(
            _ir(float_model.SerializeToString()), stack_context()).model
        assert {n.op_type for n in quantized.graph} - {"MatMul", "Gemm", "Add"}, mode  # quantized
        data = model_io.to_bytes(quantized)
        (tmp_path / f"{mode}.onnx").write_bytes(data)
        for source in (quantized, data, str(tmp_path / f"{mode}.onnx")):
            assert sources.needs_prepacking(source), mode
            assert not _prepacking_off(evaluate.session(source, ["CPUExecutionProvider"]))
    (tmp_path / "float.onnx").write_bytes(float_model.SerializeToString())
    for source in (_ir(float_model.SerializeToString()), float_model.SerializeToString(), tmp_path / "float.onnx"):
        assert not sources.needs_prepacking(source)
        assert _prepacking_off(evaluate.session(source, ["CPUExecutionProvider"]))


def test_the_final_measurement_maps_a_results_weights_from_its_file(tmp_path, monkeypatch):
    """A pass's result with ``INLINE_LIMIT`` of weights or more in memory (here a lowered limit; a quantizer's
    output, deserialized from its protobuf) is measured from a file written once, its arrays swapped for
    that file's mappings: held as arrays and as bytes, a 0.75 GiB model's int8 result put the run at 1.73×
    the model. Below the limit it is measured from its bytes, as before."""
    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)  # 1 MiB
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 512])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 512])],
                                   [onnx.numpy_helper.from_array(w, "w")])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    result = ir.serde.deserialize_model(proto)
    with sources.runnable(result, spill=True) as source:
        assert isinstance(source, bytes)
    monkeypatch.setattr(sources, "INLINE_LIMIT", 1 << 20)
    with sources.runnable(result, spill=True) as source:
        assert isinstance(source, str)
        x = {"x": np.ones((1, 512), np.float32)}
        np.testing.assert_allclose(evaluate.session(source, ["CPUExecutionProvider"]).run(None, x)[0], x["x"] @ w,
                                   rtol=1e-4, atol=1e-4)
    tensor = result.graph.initializers["w"].const_value
    assert not isinstance(tensor, ir.serde.TensorProtoTensor) and np.array_equal(tensor.numpy(), w)
