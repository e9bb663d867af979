import os
from pathlib import Path

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


def test_a_kill_between_the_data_and_model_renames_leaves_no_mismatched_pair(tmp_path, monkeypatch):
    """An output with external data is two renames (data, then .onnx). A run stopped between them
    (here: the second rename fails) leaves no model at the path rather than the previous run's .onnx
    reading the new data at its offsets; the next write puts a consistent pair back."""
    import onnx_ir as ir

    from mcomp import model as model_module

    dest = tmp_path / "out.onnx"
    model = model_io.load(_with_data(tmp_path)).model
    model_io.save(model, dest, external_data=True)
    old_data = (tmp_path / "out.onnx.data").read_bytes()
    changed = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    for value in changed.graph.initializers.values():  # other bytes at other offsets
        array = value.const_value.numpy()
        value.const_value = ir.tensor(np.ascontiguousarray(array.ravel()[::-1].reshape(array.shape)), name=value.name)
    real = os.replace
    calls = []

    def stop_at_the_model(src, dst):
        calls.append(Path(dst).name)
        if Path(dst) == dest:
            raise KeyboardInterrupt  # stands in for a kill between the two renames
        return real(src, dst)

    monkeypatch.setattr(model_module.os, "replace", stop_at_the_model)
    with pytest.raises(KeyboardInterrupt):
        model_io.save(changed, dest, external_data=True)
    monkeypatch.undo()
    assert calls[-2:] == ["out.onnx.data", "out.onnx"]  # (onnx_ir renames its own temp data file before)
    assert (tmp_path / "out.onnx.data").read_bytes() != old_data, "the new data is in place"
    assert not dest.exists(), "no .onnx is left to read the new data at the old one's offsets"
    model_io.save(changed, dest, external_data=True)
    np.testing.assert_allclose(run(model_io.load(dest).model, FEEDS)[0], run(changed, FEEDS)[0], atol=1e-6)


def _with_data(folder: Path) -> Path:
    import onnx_ir as ir

    src = folder / "ext.onnx"
    onnx.save(ir.serde.serialize_model(conv_bn_relu()), str(src), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    return src


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
