import numpy as np
import pytest

from helpers import conv_bn_relu
from mcomp import data
from mcomp.errors import BadInput
from mcomp.session import TensorSpec, input_specs


@pytest.fixture
def model():
    return conv_bn_relu()


def test_npz_batch_is_split_and_labels_follow(tmp_path, model):
    x = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(20))
    ds = data.load(tmp_path / "d.npz", model, batch_size=8)
    assert [f["x"].shape[0] for f in ds.feeds] == [8, 8, 4]
    assert [len(l) for l in ds.labels] == [8, 8, 4]
    assert ds.samples == 20 and not ds.synthetic
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in ds.feeds]), x)


def test_stacked_feeds_and_single_npy(tmp_path, model):
    x = np.zeros((3, 2, 3, 8, 8), np.float64)  # rank + 1: three feeds of batch 2, float64 cast to float32
    np.save(tmp_path / "d.npy", x)
    ds = data.load(tmp_path / "d.npy", model)
    assert len(ds) == 3 and ds.feeds[0]["x"].shape == (2, 3, 8, 8) and ds.feeds[0]["x"].dtype == np.float32


def test_an_old_npy_header_loads_without_numpy_warnings_and_a_bad_zip_leaks_no_file(tmp_path, model):
    """numpy warns about a Python-2 header ("created on Python 2") and leaves an invalid zip open
    until garbage collection (a ResourceWarning): neither may reach the user's stderr."""
    import warnings

    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L, 8L, 8L), }"
    hdr += " " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + "\n"
    old = tmp_path / "old.npy"
    old.write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode()
                    + np.ones((2, 3, 8, 8), np.float32).tobytes())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(old, model)
        with pytest.raises(BadInput, match="cannot read arrays"):
            data.load(bad, model)
        import gc

        gc.collect()
    assert ds.feeds[0]["x"].shape == (2, 3, 8, 8)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("arrays, fragment", [
    ({"wrong": np.zeros((1, 3, 8, 8), np.float32)}, "do not match"),
    ({"x": np.zeros((1, 3, 9, 9), np.float32)}, "does not fit"),
    ({"x": np.zeros((3, 8, 8), np.float32)}, "rank"),
    ({"x": np.zeros((4, 3, 8, 8), np.float32), "labels": np.zeros(3)}, "3 labels for 4"),
    ({"x": np.array([["a"]])}, "expects float32"),
])
def test_mismatches_are_bad_input(tmp_path, model, arrays, fragment):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(BadInput, match=fragment):
        data.load(tmp_path / "d.npz", model)


def test_random_is_seeded_and_marked_synthetic(model):
    a = data.load("random", model, input_shapes={"x": (2, 3, 8, 8)})
    b = data.load("random", model, input_shapes={"x": (2, 3, 8, 8)})
    assert a.synthetic and a.labels is None and "accuracy unknown" in a.notes[0]
    np.testing.assert_array_equal(a.feeds[0]["x"], b.feeds[0]["x"])
    assert a.feeds[0]["x"].shape == (2, 3, 8, 8)


def test_fixed_state_input_is_shared_across_feeds():
    specs = [TensorSpec("input", np.dtype("float32"), (1, 576)), TensorSpec("state", np.dtype("float32"), (2, 1, 128)),
             TensorSpec("sr", np.dtype("int64"), ())]
    ds = data.from_arrays({"input": np.zeros((3, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                           "sr": np.array(16000)}, specs, source="t")
    assert len(ds) == 3 and ds.feeds[2]["state"].shape == (2, 1, 128) and int(ds.feeds[1]["sr"]) == 16000


def test_a_state_batched_on_an_inner_axis_is_split_with_the_inputs():
    """silero-vad op15: input [batch, sequence], state [2, batch, 128]. A file of 40 windows and their 40
    states gives feeds of 16, 16 and 8 windows, each with its own states (kept whole, the states of all
    40 went with every feed, and onnxruntime's LSTM refused it)."""
    specs = [TensorSpec("input", np.dtype("float32"), ("batch", "sequence")),
             TensorSpec("state", np.dtype("float32"), (2, "batch", 128)), TensorSpec("sr", np.dtype("int64"), ())]
    state = np.arange(2 * 40 * 128, dtype=np.float32).reshape(2, 40, 128)
    ds = data.from_arrays({"input": np.zeros((40, 576), np.float32), "state": state, "sr": np.array(16000)},
                          specs, source="t")
    assert [f["input"].shape[0] for f in ds.feeds] == [16, 16, 8]
    assert [f["state"].shape for f in ds.feeds] == [(2, 16, 128), (2, 16, 128), (2, 8, 128)]
    np.testing.assert_array_equal(ds.feeds[1]["state"], state[:, 16:32])
    assert ds.inner_batch == {"state": 1} and ds.head(1).inner_batch == {"state": 1}  # distillation moves it first


def test_image_folder_with_classes(tmp_path, model):
    from PIL import Image

    for label, color in (("cat", 30), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 12), (color, color, color)).save(tmp_path / label / f"{i}.png")
    spec = data.ImageFolderSpec(images=tmp_path, size=(8, 8), mean=(0.5,), std=(0.25,))
    ds = data.load(spec, model)
    x = np.concatenate([f["x"] for f in ds.feeds])
    assert x.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(np.concatenate(ds.labels), [0, 0, 0, 1, 1, 1])
    assert x[0, 0, 0, 0] == pytest.approx((30 / 255 - 0.5) / 0.25, abs=1e-5)


def test_bind_input_shapes(model):
    assert data.bind_input_shapes({"": (1, 3, 8, 8)}, model) == {"x": (1, 3, 8, 8)}
    with pytest.raises(BadInput, match="unknown inputs"):
        data.bind_input_shapes({"y": (1,)}, model)
    assert input_specs(model)[0].dynamic_dims == [0]


def test_an_input_given_once_is_used_in_every_run_of_a_stack_of_feeds():
    """openWakeWord's older silero VAD: 32 windows stacked as 32 feeds of [1, 512], and the LSTM's initial
    state [2, 1, 64] given once. It read "inputs hold different numbers of examples {'input': 32, 'h': 1}"."""
    specs = [TensorSpec("input", np.dtype("float32"), ("batch", "sequence")),
             TensorSpec("h", np.dtype("float32"), (2, "batch", 64))]
    ds = data.from_arrays({"input": np.ones((32, 1, 512), np.float32), "h": np.full((2, 1, 64), 0.5, np.float32)},
                          specs, source="t")
    assert len(ds) == 32 and all(f["h"].shape == (2, 1, 64) and f["h"][0, 0, 0] == 0.5 for f in ds.feeds)
    with pytest.raises(BadInput, match="different numbers of examples"):  # two counts above one still disagree
        data.from_arrays({"input": np.ones((32, 1, 512), np.float32), "h": np.zeros((3, 2, 1, 64), np.float32)},
                         specs, source="t")
    with pytest.raises(BadInput, match="different numbers of examples"):  # a state of one example beside feeds of 16
        data.from_arrays({"input": np.ones((40, 512), np.float32), "h": np.zeros((2, 1, 64), np.float32)},
                         specs, source="t")
