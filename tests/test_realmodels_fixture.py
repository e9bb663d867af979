"""The real-model fixture: every model fetches, and its feeds run in onnxruntime."""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realmodels  # noqa: E402

# output name -> rank, per model
EXPECTED_OUTPUT_RANKS = {
    "ppocr-det": [4],  # [N,1,H,W] text probability map
    "ppocr-rec": [3],  # [N,W/8,6625] CTC softmax
    "ppocr-cls": [2],  # [N,2] 0/180 softmax
    "silero-vad": [2, 3],  # output [B,1], stateN [2,B,128]
    "silero-vad-op15": [2, 3],
    "silero-vad-seq": [1, 3, 3],  # speech_probs [T], hn, cn
}

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_registry_matches_expectations():
    assert sorted(realmodels.all_models()) == sorted(EXPECTED_OUTPUT_RANKS)


@pytest.mark.realmodel
@pytest.mark.parametrize("name", realmodels.all_models())
def test_real_model_runs(name):
    model = realmodels.fetch(name)
    assert model.name == name and model.path.is_file() and model.note
    sess = _session(model.path)
    feeds = model.feeds()

    inputs = sess.get_inputs()
    assert list(feeds) == [i.name for i in inputs]
    for spec in inputs:
        arr = feeds[spec.name]
        assert arr.dtype == _ORT_DTYPES[spec.type], (spec.name, arr.dtype, spec.type)
        assert arr.shape == tuple(model.input_shapes[spec.name])
        assert np.isfinite(arr).all()
        if arr.ndim and spec.name not in ("state", "h", "c"):  # recurrent state starts at 0
            assert arr.std() > 0.05, f"{spec.name} looks constant"

    outs = sess.run(None, feeds)
    assert [o.ndim for o in outs] == EXPECTED_OUTPUT_RANKS[name]
    for o in outs:
        assert np.isfinite(o).all()
    first = outs[0]
    if name.startswith("ppocr") or name.startswith("silero"):
        assert first.min() >= 0.0 and first.max() <= 1.0  # probabilities
    if name in ("ppocr-rec", "ppocr-cls"):
        np.testing.assert_allclose(first.sum(-1), 1.0, atol=1e-3)
    if name == "ppocr-det":
        assert (first > 0.3).mean() > 0.01  # the rendered text lines are detected


@pytest.mark.realmodel
@pytest.mark.parametrize("name", realmodels.all_models())
def test_feeds_deterministic_and_distinct(name):
    model = realmodels.fetch(name)
    a, b, c = model.feeds(), model.feeds(), model.feeds(seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(a[k].ndim and not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["silero-vad", "ppocr-cls", "silero-vad-seq"])
def test_write_npz_stacked_layout(name, tmp_path):
    model = realmodels.fetch(name)
    out = realmodels.write_npz(model, tmp_path / "sub" / "calib.npz", batches=3)
    assert out == tmp_path / "sub" / "calib.npz"
    first = model.feeds()
    with np.load(out) as z:
        assert sorted(z.files) == sorted(first)
        data = {k: z[k] for k in z.files}
    for k, v in first.items():
        if v.ndim == 0:
            assert data[k].shape == () and data[k] == v and data[k].dtype == v.dtype
        else:
            assert data[k].shape == (3, *v.shape) and data[k].dtype == v.dtype
            np.testing.assert_array_equal(data[k][0], v)
            assert not np.array_equal(data[k][1], data[k][0]) or k in ("state", "h", "c")
    sess = _session(model.path)
    for i in range(3):
        feed = {k: (a if a.ndim == 0 else a[i]) for k, a in data.items()}
        assert all(np.isfinite(o).all() for o in sess.run(None, feed))


@pytest.mark.realmodel
def test_fetch_served_from_cache(monkeypatch):
    realmodels.fetch("silero-vad")

    def no_download(*a, **k):
        raise AssertionError("fetch downloaded although the model is cached")

    monkeypatch.setattr(realmodels.subprocess, "run", no_download)
    realmodels._VERIFIED.clear()  # force the on-disk size + hash check
    assert realmodels.fetch("silero-vad").path.is_file()


@pytest.mark.realmodel
def test_concurrent_fetch_into_empty_cache(tmp_path):
    """Two processes fetching into the same empty cache both get complete files."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import realmodels
        print(realmodels.fetch("silero-vad-seq").path)
    """)
    env = {**os.environ, "MCOMP_MODEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {Path(out.strip()) for out, _ in results}
    assert len(paths) == 1
    (path,) = paths
    spec = realmodels._SPECS["silero-vad-seq"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_download_failure_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(realmodels, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(realmodels, "_VERIFIED", set())

    def failing_pip(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(realmodels.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"silero-vad==6\.2\.3.*\n.*No matching distribution"):
        realmodels.fetch("silero-vad-op15")
    assert not any(tmp_path.rglob("*.onnx"))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="ppocr-det"):
        realmodels.fetch("no-such-model")
