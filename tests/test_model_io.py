import os

import numpy as np
import onnx
import pytest

from helpers import conv_bn_relu, run
from mcomp import model as model_io
from mcomp.errors import BadInput

FEEDS = {"x": np.ones((1, 3, 8, 8), np.float32)}


def save_proto(model, path):
    import onnx_ir as ir

    onnx.save(ir.serde.serialize_model(model), str(path))


def test_roundtrip_and_source_facts(tmp_path):
    path = tmp_path / "m.onnx"
    save_proto(conv_bn_relu(), path)
    loaded = model_io.load(path)
    assert loaded.source.kind == "onnx" and loaded.source.bytes == path.stat().st_size
    assert loaded.source.sha256 == model_io.sha256_file(path)
    out = model_io.save(loaded.model, tmp_path / "out.onnx", protect=(path,))
    assert out.bytes > 0
    np.testing.assert_allclose(run(model_io.load(tmp_path / "out.onnx").model, FEEDS)[0], run(loaded.model, FEEDS)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]  # no temp files left


def test_refuses_to_overwrite_the_input(tmp_path):
    path = tmp_path / "m.onnx"
    save_proto(conv_bn_relu(), path)
    before = path.read_bytes()
    with pytest.raises(BadInput, match="overwrite the input"):
        model_io.save(model_io.load(path).model, path, protect=(path,))
    assert path.read_bytes() == before


def test_external_data_in_and_out(tmp_path, monkeypatch):
    import onnx_ir as ir

    src = tmp_path / "ext.onnx"
    onnx.save(ir.serde.serialize_model(conv_bn_relu()), str(src), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    loaded = model_io.load(src)
    expected = run(loaded.model, FEEDS)[0]
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 100)  # stand-in for the 2 GB limit
    model_io.save(loaded.model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 100
    monkeypatch.undo()
    stored = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    assert any(onnx.external_data_helper.uses_external_data(t) for t in stored.graph.initializer)
    np.testing.assert_allclose(run(model_io.load(tmp_path / "big.onnx").model, FEEDS)[0], expected, atol=1e-6)


def test_missing_external_data_is_bad_input(tmp_path):
    import onnx_ir as ir

    src = tmp_path / "ext.onnx"
    onnx.save(ir.serde.serialize_model(conv_bn_relu()), str(src), save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    os.remove(tmp_path / "ext.onnx.data")
    with pytest.raises(BadInput, match="external data"):
        model_io.load(src)


def test_old_opset_is_loaded_and_too_old_refused(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    for opset, ok in ((7, True), (6, False)):
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        proto.ir_version = 3
        onnx.save(proto, str(tmp_path / f"o{opset}.onnx"))
        if ok:
            assert model_io.load(tmp_path / f"o{opset}.onnx").model.opset_imports[""] == 7
        else:
            with pytest.raises(BadInput, match="opset 6"):
                model_io.load(tmp_path / f"o{opset}.onnx")


def test_default_output_name():
    assert str(model_io.default_output("dir/net.onnx", "prune")) == "dir/net.prune.onnx"
    with pytest.raises(BadInput, match="needs -o"):
        model_io.default_output("-", "prune")
