"""The shapes every figure is measured at (mcomp.shapes): where each dim comes from, that MACs,
synthetic data and latency use them, that the report records them, and that a model failing at
an assumed shape says how to set one."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import from_text
from mcomp import data, report, shapes, summary
from mcomp import pipeline as pipeline_io
from mcomp.errors import BadInput
from mcomp.pipeline_spec import load_text
from mcomp.session import input_specs


def _conv(dims, *, metadata: dict | None = None, reshape: bool = False) -> ir.Model:
    """images[dims] → Conv(3→4, 3×3, pad 1) → y; with ``reshape``, y is flattened to a fixed
    [1, 4*8*8], so the model runs at 8×8 only."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [onnx.helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    inits = [onnx.numpy_helper.from_array(w, "w")]
    if reshape:
        nodes.append(onnx.helper.make_node("Reshape", ["c", "to"], ["y"], name="flat"))
        inits.append(onnx.numpy_helper.from_array(np.array([1, 256], np.int64), "to"))
    else:
        nodes.append(onnx.helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = onnx.helper.make_graph(nodes, "conv", [onnx.helper.make_tensor_value_info("images", 1, dims)],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1, 256] if reshape else ["batch", 4, "h", "w"])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    proto.ir_version = 8
    for key, value in (metadata or {}).items():
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: value})
    return ir.serde.deserialize_model(proto)


def _two_inputs(x_dims, state_dims) -> ir.Model:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["a"]), onnx.helper.make_node("Identity", ["state"], ["b"])], "two",
        [onnx.helper.make_tensor_value_info("x", 1, x_dims), onnx.helper.make_tensor_value_info("state", 1, state_dims)],
        [onnx.helper.make_tensor_value_info("a", 1, None), onnx.helper.make_tensor_value_info("b", 1, None)])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


DYNAMIC = ["batch", 3, "height", "width"]


def test_assumed_image_dims_say_so_and_how_to_set_them():
    got = shapes.resolve(_conv(DYNAMIC))["images"]
    assert got.shape == (1, 3, 224, 224)
    assert got.source == "assumed" and got.assumed_dims == (0, 2, 3)
    assert got.describe()["set_with"] == "--input-shape images=1,3,H,W"


@pytest.mark.parametrize("value", ["[320, 320]", "320", "(320, 320)"])
def test_imgsz_metadata_is_the_models_own_size(value):
    got = shapes.resolve(_conv(DYNAMIC, metadata={"imgsz": value}))["images"]
    assert got.shape == (1, 3, 320, 320)
    assert got.assumed_dims == (0,)  # the batch only


def test_static_dims_are_the_models_and_nothing_is_assumed():
    got = shapes.resolve(_conv([1, 3, 8, 8]))["images"]
    assert (got.shape, got.source, got.assumed_dims) == ((1, 3, 8, 8), "model", ())


def test_given_shape_wins_and_a_shared_dim_name_follows_it():
    model = _two_inputs(["batch", "sequence"], [2, "batch", 8])
    got = shapes.resolve(model, given={"x": (4, 10)})
    assert got["x"].shape == (4, 10) and got["x"].source == "--input-shape"
    assert got["state"].shape == (2, 4, 8) and got["state"].source == "--input-shape"
    assert got["state"].assumed_dims == ()


def test_a_shared_assumed_dim_stays_assumed_and_consistent():
    got = shapes.resolve(_two_inputs(["batch", "sequence"], [2, "batch", 8]))
    assert got["x"].shape == (1, 32) and got["state"].shape == (2, 1, 8)
    assert got["state"].assumed_dims == (1,)


def test_unnamed_dims_are_not_one_symbol():
    got = shapes.resolve(_two_inputs(["?", "?"], [2, "?", 8]))
    assert got["x"].shape == (1, 32)
    assert got["state"].shape == (2, 32, 8)  # an unnamed dim 1 is no batch


def test_a_leading_sequence_dim_is_not_a_batch():
    spec = input_specs(_two_inputs(["sequence_length", 576], [1, 1, 8]))[0]
    assert not shapes.is_batch_dim(spec, 0)
    feed = {"x": np.zeros((7, 576), np.float32), "state": np.zeros((1, 1, 8), np.float32)}
    assert shapes.example_feed(feed, input_specs(_two_inputs(["sequence_length", 576], [1, 1, 8])))["x"].shape == (7, 576)


def test_data_gives_one_example_of_a_batch():
    model = _conv(DYNAMIC)
    feed = {"images": np.zeros((16, 3, 40, 48), np.float32)}
    got = shapes.resolve(model, feed=feed)["images"]
    assert (got.shape, got.source, got.assumed_dims) == ((1, 3, 40, 48), "data", ())
    assert shapes.resolve(model, feed=feed, given={"images": (4, 3, 40, 48)})["images"].shape == (4, 3, 40, 48)


def test_a_static_batch_keeps_the_datas_own_example_batch():
    feed = {"images": np.zeros((2, 3, 8, 8), np.float32)}
    assert shapes.example_feed(feed, input_specs(_conv([2, 3, 8, 8])))["images"].shape == (2, 3, 8, 8)


def test_synthetic_data_and_macs_use_the_resolved_shapes():
    model = _conv(DYNAMIC, metadata={"imgsz": "[64, 96]"})
    ds = data.load("random", model, synthetic_feeds=2)
    assert ds.feeds[0]["images"].shape == (1, 3, 64, 96)
    assert ds.shapes["images"].assumed_dims == (0,)
    info = summary.describe(model)
    assert info["macs"] == 4 * 3 * 9 * 64 * 96
    assert info["macs_input_shapes"] == {"images": [1, 3, 64, 96]}
    assert info["input_shapes"]["images"]["source"] == "assumed"


def _execute(tmp_path, model: ir.Model, extra: str = "", **request) -> dict:
    path = tmp_path / "m.onnx"
    onnx.save(ir.serde.serialize_model(model), path)
    pipe = load_text(f"model: {path}\nmeasure: {{runs: 3, warmup: 0}}\n{extra}steps:\n  - optimize: {{}}\n", "pipe.yaml")
    return pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(tmp_path / "out.onnx"), **request)).report


def test_report_records_the_shapes_and_the_headline_shows_them(tmp_path):
    doc = _execute(tmp_path, _conv(DYNAMIC))
    jsonschema.validate(json.loads(report.to_json(doc)), json.loads(report.SCHEMA_PATH.read_text()))
    assert doc["shapes"] == {"images": {"shape": [1, 3, 224, 224], "source": "assumed", "assumed_dims": [0, 2, 3],
                                        "set_with": "--input-shape images=1,3,H,W"}}
    assert doc["latency"]["feed_shapes"] == {"images": [1, 3, 224, 224]}
    assert doc["input"]["macs"] == 4 * 3 * 9 * 224 * 224
    row = next(r for r in report.headline(doc) if r[0] == "measured at")
    assert row[1] == "images 1×3×224×224" and "set --input-shape images=1,3,H,W" in row[3]


def test_latency_times_one_example_of_a_batched_data_file(tmp_path):
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    doc = _execute(tmp_path, _conv(DYNAMIC), f"data: {{evaluation: {tmp_path / 'calib.npy'}}}\n")
    assert doc["data"]["measured_on"]["feeds"] == 1  # one feed of 16 for fidelity …
    assert doc["latency"]["feed_shapes"] == {"images": [1, 3, 8, 8]}  # … but one example timed
    assert doc["shapes"]["images"] == {"shape": [1, 3, 8, 8], "source": "data", "assumed_dims": []}
    assert doc["input"]["macs"] == 4 * 3 * 9 * 8 * 8


def test_a_failure_at_an_assumed_shape_says_how_to_set_one(tmp_path):
    with pytest.raises(BadInput, match=r"measured at assumed shapes images=1×3×224×224; "
                                       r"set --input-shape images=1,3,H,W"):
        _execute(tmp_path, _conv(DYNAMIC, reshape=True))
    doc = _execute(tmp_path, _conv(DYNAMIC, reshape=True), "input_shape: {images: [1, 3, 8, 8]}\n")
    assert doc["shapes"]["images"]["source"] == "--input-shape"


def test_a_0d_input_stays_an_array_when_the_batch_is_cut():
    """Indexed by (), numpy gives a 0-d array back as a scalar, which onnxruntime refuses."""
    feed = {"x": np.zeros((8, 576), np.float32), "state": np.zeros((2, 8, 128), np.float32),
            "sr": np.array(16000, np.int64)}
    got = shapes.example_feed(feed, input_specs(_two_inputs(["batch", 576], [2, "batch", 128])))
    assert got["x"].shape == (1, 576) and got["state"].shape == (2, 1, 128)
    assert isinstance(got["sr"], np.ndarray) and got["sr"].shape == () and got["sr"] == 16000


@pytest.mark.realmodel
def test_silero_vad_with_a_data_file_of_one_batch_and_its_scalar_sample_rate(real_model, tmp_path):
    """A user's data file for silero-vad: forty 576-sample windows as one batch, their states (batched
    on axis 1), and the sample rate once, as a 0-d array. Every command timed it as one example and
    failed (exit 2, "reference fails on the data (Unable to handle object of type numpy.int64)"); the
    states of all forty went with each feed of 16 windows (``data._split``)."""
    import json

    from clirun import run_mcomp

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vad.npz", input=(0.1 * rng.standard_normal((40, 576))).astype(np.float32),
             state=np.zeros((2, 40, 128), np.float32), sr=np.array(16000, np.int64))
    res = run_mcomp("optimize", real_model("silero-vad-op15").path, "--data", "vad.npz", "--runs", "5",
                    "-o", "out.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    latency = json.loads((tmp_path / "out.report.json").read_text())["latency"]
    assert latency["feed_shapes"] == {"input": [1, 576], "state": [2, 1, 128], "sr": []}


def test_the_hint_for_several_assumed_inputs_is_a_command_line_the_cli_takes(tmp_path):
    """openWakeWord's silero VAD (input, h, c all with assumed dims): the hint read "set --input-shape
    input=1,sequence h=2,1,64 c=2,1,64", which the CLI refused ("Got unexpected extra argument(s)")."""
    import shlex

    from clirun import run_mcomp
    from mcomp.session import TensorSpec

    specs = [TensorSpec("a", np.dtype("float32"), ("batch", "steps")),
             TensorSpec("h", np.dtype("float32"), (2, "n", 4))]
    hint = shapes.assumed_note({s.name: shapes.fill(s) for s in specs})
    assert "set --input-shape a=1,steps --input-shape h=2,n,4" in hint, hint
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("ReduceSum", ["a"], ["y"], keepdims=0),
         onnx.helper.make_node("ReduceSum", ["h"], ["z"], keepdims=0)], "g",
        [onnx.helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, list(s.shape)) for s in specs],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, []),
         onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    options = shlex.split(hint.split("; set ")[1].rstrip(")").replace("steps", "8").replace("n,", "1,"))
    done = run_mcomp("inspect", "m.onnx", *options, cwd=tmp_path)
    assert done.returncode == 0 and "(from --input-shape)" in done.out, done.explain()


def test_a_failure_on_synthetic_data_names_the_integer_inputs_it_filled_with_zeros(tmp_path):
    """silero's VAD branches on its sample rate ``sr`` (int64): synthetic data gives it 0, and the model
    failed with onnxruntime's words alone. Here a Reshape takes its target from an integer input."""
    model = from_text("""
        <ir_version: 8, opset_import: ["": 14]>
        g (float[4, 4] x, int64[2] dims) => (float[4, 4] y) {
            y = Reshape <allowzero = 1> (x, dims)
        }""")
    with pytest.raises(BadInput, match=r"synthetic input dims is all zeros \(integers and booleans\): give --data"):
        _execute(tmp_path, model)
    assert data.zeroed_inputs(input_specs(model)) == ["dims"]
    assert shapes.assumed_note({}, ["a", "b"]) == (" (synthetic inputs a, b are all zeros (integers and booleans): "
                                                   "give --data with the values the model expects)")
    assert shapes.assumed_note({}) == ""


def test_a_bare_n_past_axis_0_is_a_batch_only_where_axis_0_is_not():
    """onnx-asr's feature extractors take waveforms [batch_size, N] (N samples): both dims read as batches,
    the samples were assumed 1 and a file's batch of 4 clips was timed as one run."""
    from mcomp.session import TensorSpec

    f32 = np.dtype("float32")
    waveforms = TensorSpec("waveforms", f32, ("batch_size", "N"))
    assert shapes.is_batch_dim(waveforms, 0) and not shapes.is_batch_dim(waveforms, 1)
    time_major = TensorSpec("x", f32, ("time", "N", 8))
    assert not shapes.is_batch_dim(time_major, 0) and shapes.is_batch_dim(time_major, 1)
    assert shapes.is_batch_dim(TensorSpec("x", f32, ("N", 3)), 0)
    feed = shapes.example_feed({"waveforms": np.zeros((4, 16000), np.float32)}, [waveforms])
    assert feed["waveforms"].shape == (1, 16000)
