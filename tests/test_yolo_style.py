"""The YOLOv8n-style test model (tests/yolo_style.py) and the shared-scale defect it reproduces.

Marked ``realmodel``: the first run downloads the pinned Ultralytics wheel (for its
yolov8.yaml) and builds the model (~20 s); later runs take both from the cache.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import yolo_style

pytestmark = pytest.mark.realmodel

SIZE = 320
ANCHORS = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2  # 2100


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    return yolo_style.build(tmp_path_factory.mktemp("yolo") / "yolov8n.onnx", size=SIZE, seed=0)


def test_images_are_deterministic_photos():
    a = yolo_style.images(3, size=64, seed=5)
    assert a.shape == (3, 3, 64, 64) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05
    np.testing.assert_array_equal(a[:2], yolo_style.images(2, size=64, seed=5))
    assert not np.array_equal(a, yolo_style.images(3, size=64, seed=6))


def test_builds_and_runs(yolo):
    proto = onnx.load(str(yolo))
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == yolo_style.OPSET
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Sigmoid", "Mul", "Split", "Concat", "MaxPool", "Resize", "Softmax"} <= ops
    assert "BatchNormalization" not in ops and "Identity" not in ops
    sess = _session(yolo)
    assert [i.name for i in sess.get_inputs()] == [yolo_style.INPUT_NAME]
    assert sess.get_inputs()[0].shape == [1, 3, SIZE, SIZE]
    for x in yolo_style.images(2, SIZE, seed=7):
        (y,) = sess.run(None, {yolo_style.INPUT_NAME: x[None]})
        assert y.shape == (1, 84, ANCHORS) and np.isfinite(y).all()
        xy, wh, cls = y[0, :2], y[0, 2:4], y[0, 4:]
        # decoded boxes in pixels (an untrained DFL head: widths ~15 strides), not 0..1
        assert xy.min() > -SIZE and xy.max() < 2 * SIZE and np.ptp(xy) > SIZE / 2
        assert wh.min() >= 0 and 50 < wh.max() < 4 * SIZE
        # sigmoid class probabilities like a trained detector's: mostly ~1e-3, the strongest anchors 0.3-1
        assert cls.min() >= 0 and cls.max() <= 1 and np.median(cls) < 1e-2 and cls.max() > 0.3


def test_write_npz_feeds_the_cli(yolo, tmp_path):
    from mcomp import data
    from mcomp import model as model_io

    npz = yolo_style.write_npz(tmp_path / "calib.npz", 3)
    with np.load(npz) as z:
        assert list(z) == [yolo_style.INPUT_NAME]
        np.testing.assert_array_equal(z[yolo_style.INPUT_NAME][:, 0], yolo_style.images(3))
    ds = data.load(str(npz), model_io.load(yolo).model)
    assert len(ds) == 3 and ds.feeds[0][yolo_style.INPUT_NAME].shape == (1, 3, SIZE, SIZE)


def test_onnxruntime_quantizer_zeroes_the_class_rows(yolo, tmp_path):
    """onnxruntime's QDQ quantizer gives the output Concat one scale, sized for the box
    rows (2-3 px per step): every class probability rounds to 0, while the cosine of the
    whole output stays > 0.99 because the boxes dominate it."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    calib = yolo_style.images(16, SIZE, seed=100)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({yolo_style.INPUT_NAME: x[None]} for x in calib)

        def get_next(self):
            return next(self._it, None)

    qpath = tmp_path / "yolov8n.int8.onnx"
    quantize_static(str(yolo), str(qpath), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)

    q = onnx.load(str(qpath))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    out_scale = float(inits[f"{yolo_style.OUTPUT_NAME}_scale"])
    assert out_scale > 1.0  # one scale for pixels and probabilities

    sf, sq = _session(yolo), _session(qpath)
    for x in yolo_style.images(4, SIZE, seed=200):
        feed = {yolo_style.INPUT_NAME: x[None]}
        (yf,), (yq,) = sf.run(None, feed), sq.run(None, feed)
        assert _cos(yf, yq) > 0.99
        assert _cos(yf[:, 4:], yq[:, 4:]) < 0.1
        assert np.abs(yq[:, 4:]).max() < out_scale / 2 + 1e-6  # all zero, in fact


@pytest.mark.slow
def test_mcomp_quantize_keeps_the_scores_the_whole_cosine_would_lose(yolo):
    """mcomp's default static quantization: the head's Concat stays float (its inputs' ranges differ
    ×100s), and every class row with a score worth the name keeps its shape on held-out images."""
    from mcomp import data, graph
    from mcomp import model as model_io
    from mcomp.kernels.fidelity import worst_slice
    from mcomp.pass_base import Context
    from mcomp.passes.quantize import Quantize

    model = model_io.load(yolo).model
    calib = data.Dataset([{yolo_style.INPUT_NAME: x[None]} for x in yolo_style.images(16, SIZE, seed=100)],
                         None, False, "synthetic photos")
    result = Quantize(latency_guard=False)(graph.copy(model), Context(
        data={"calibration": calib, "evaluation": calib}, providers=["CPUExecutionProvider"]))
    m = result.details
    assert result.modified and m["quantized_ops"].get("Conv", 0) > 10
    head = [w for w in m["shared_scale"] if w["tensor"] == yolo_style.OUTPUT_NAME]
    assert head and head[0]["op_type"] == "Concat" and head[0]["ratio"] > 100
    sf = _session(yolo)
    sq = ort.InferenceSession(model_io.to_bytes(result.model), providers=["CPUExecutionProvider"])
    ref, got = [], []
    for x in yolo_style.images(4, SIZE, seed=200):
        feed = {yolo_style.INPUT_NAME: x[None]}
        ref.append(sf.run(None, feed)[0])
        got.append(sq.run(None, feed)[0])
    ref, got = np.concatenate(ref), np.concatenate(got)
    assert _cos(ref[:, 4:], got[:, 4:]) > 0.9  # the class rows together
    assert worst_slice(ref, got)["cosine"] > 0.8  # held-out images: a little below the 0.95 kept on calibration
