"""The quantize pass's acceptance checks on third-party models (PP-OCR, Silero VAD)."""

import numpy as np
import onnx
import pytest

import realmodels
from mcomp import bench, data
from mcomp import model as model_io
from mcomp.kernels.fidelity import worst_slice
from mcomp.pass_base import Context
from mcomp.passes.quantize import Quantize
from mcomp.session import make_session, resolve_providers

pytestmark = pytest.mark.realmodel
CPU = resolve_providers("cpu")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """Each model quantized once with the defaults, calibrated on realistic feeds."""
    cache = {}

    def get(name):
        if name not in cache:
            rm = realmodels.fetch(name)
            npz = realmodels.write_npz(rm, tmp_path_factory.mktemp(name) / "calib.npz", batches=8)
            loaded = model_io.load(rm.path)
            calibration = data.load(str(npz), loaded.model)
            result = Quantize()(model_io.copy(loaded.model), Context(data={"calibration": calibration,
                                                                          "evaluation": calibration}, providers=CPU))
            cache[name] = (rm, loaded, result)
        return cache[name]

    return get


@pytest.mark.parametrize("name", realmodels.all_models())
def test_default_loads_and_is_never_slower(quantized, name):
    rm, loaded, result = quantized(name)
    proto = model_io.to_proto(result.model)
    onnx.checker.check_model(proto)
    candidate = proto.SerializeToString()
    session = make_session(candidate, CPU)
    feed = rm.feeds(seed=11)  # not in the calibration set
    reference = make_session(model_io.to_bytes(loaded.model), CPU).run(None, feed)
    got = session.run(None, feed)
    assert [g.shape for g in got] == [r.shape for r in reference]
    if not result.modified:
        assert result.metrics["unchanged"] and result.metrics["notes"]
        return
    assert result.metrics["latency_guard"]["faster"]
    timing = bench.interleaved([("input", model_io.to_bytes(loaded.model)), ("quantized", candidate)],
                               [rm.feeds(seed=k) for k in range(4)], providers=CPU, runs=30)
    floor = timing.noise_floor
    assert timing.models[1].ratio <= max(1.0, floor.p90) + 0.03, (timing.to_dict(), result.metrics["summary"])
    out = np.concatenate([g.ravel() for g in got if g.dtype.kind == "f"]).astype(np.float64)
    ref = np.concatenate([r.ravel() for r in reference if r.dtype.kind == "f"]).astype(np.float64)
    assert out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref)) > 0.95
    for r, g in zip(reference, got):  # and no part of an output is broken (a detector's class rows, a time step)
        if r.dtype.kind == "f" and r.ndim:
            worst = worst_slice(r, g)
            assert worst is None or worst["cosine"] > 0.9, (name, worst)


@pytest.mark.parametrize("name", ["ppocr-cls", "ppocr-det", "ppocr-rec"])
def test_opset_11_and_12_inputs_are_upgraded_and_the_report_says_so(quantized, name):
    rm, loaded, result = quantized(name)
    before = model_io.onnx_opset(loaded.model)
    assert before in (11, 12)
    # 13 for per-channel Q/DQ, or 14 where hard-swish patterns were fused first
    assert any(f"opset upgraded {before} → 1" in n for n in result.metrics["notes"])
    assert result.metrics["opset"]["output"] >= 13
    if result.modified:
        assert model_io.onnx_opset(result.model) >= 13


def test_weights_held_in_constant_nodes_are_quantized(quantized):
    rm, loaded, result = quantized("ppocr-det")
    assert result.modified, result.metrics["summary"]
    assert result.metrics["quantized_ops"].get("Conv", 0) > 20
    assert result.metrics["quantized_weight_bytes"]["ratio"] > 3.5


def test_if_subgraph_model_is_left_float_with_a_reason(quantized):
    rm, loaded, result = quantized("silero-vad")
    assert not result.modified
    assert any("subgraphs" in r["reason"] for r in result.metrics["float_reasons"])
