"""mcomp.torch_io: every PyTorch checkpoint kind -> ONNX, checked against torch with onnxruntime."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mcomp.errors import BadInput
from mcomp.torch_io import TorchExportWarning, is_torch_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ATOL = 1e-5


class Tiny(nn.Module):
    """Conv + BN + pooling + linear; module level so a pickled instance can be loaded back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        return h + z, torch.sigmoid(h)


class SplitsAndReductions(nn.Module):
    """Ops whose form changed in opset 18 (Split num_outputs, Reduce* axes as an input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a, b = y[:, :6].chunk(2, dim=1)  # 3 + 3
        parts = y[:, :6].chunk(3, dim=1)  # 2 + 2 + 2, same input and axis as above
        c, d, e, f = y.chunk(4, dim=1)  # 2 + 2 + 2 + 1: uneven
        pooled = (a * torch.sigmoid(b)).mean(dim=(2, 3))  # [N, 3]
        peaks = torch.stack([p.amax(dim=(1, 2, 3)) for p in parts], dim=1)  # [N, 3]
        rest = torch.logsumexp(c + d + e, dim=(1, 2, 3)) + torch.linalg.vector_norm(f, dim=(1, 2, 3)) + y.amin(dim=(1, 2, 3))
        return pooled + peaks + rest[:, None]


class PinnedBatch(nn.Module):
    """Bakes the batch size into a reshape when exported with static shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, -1).sum(dim=1)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export refuses it, tracing fixes a branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def _tiny() -> Tiny:
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():  # non-trivial BN statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


FACTORY_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return self.fc(y.mean(dim=(2, 3)))


    def make_tiny():
        return Tiny()


    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x, z):
            h = self.fc(x)
            return h + z, torch.sigmoid(h)


    def make_two():
        return Two()
    """
)


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _torch_out(model, *xs: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*(torch.from_numpy(x) for x in xs))
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.numpy() for o in out]


def _io(proto: onnx.ModelProto) -> tuple[list, list]:
    def shape(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return [(i.name, shape(i)) for i in proto.graph.input], [(o.name, shape(o)) for o in proto.graph.output]


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _x(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "tests_module_path.py"
    path.write_text(FACTORY_SRC)
    return path


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/trace are deprecated
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path: Path, how: str, capfd) -> None:
    model = _tiny()
    ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (torch.zeros(2, 3, 8, 8),))
    path = tmp_path / "tiny.jit"
    ts.save(str(path))
    assert is_torch_checkpoint(path)

    proto = load_checkpoint(path, input_shapes={"pixels": (1, 3, 8, 8)})
    assert capfd.readouterr().out == ""  # nothing on stdout
    inputs, outputs = _io(proto)
    assert inputs == [("pixels", ["batch", 3, 8, 8])]
    assert outputs == [("output", ["batch", 5])]
    assert _opset(proto) == 17
    for batch in (1, 4):  # the batch axis is dynamic
        x = _x(batch)
        np.testing.assert_allclose(_run(proto, {"pixels": x})[0], _torch_out(model, x)[0], atol=ATOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_needs_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.script(_tiny()).save(str(path))
    with pytest.raises(BadInput, match="--input-shape"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- torch.export


def test_pt2_static_program_gets_dynamic_batch(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 8, 8),)), str(path))
    assert is_torch_checkpoint(path)

    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchExportWarning)
        proto = load_checkpoint(path)  # the shape comes from the program's example inputs
    inputs, outputs = _io(proto)
    assert inputs == [("input", ["batch", 3, 8, 8])]
    assert outputs == [("output", ["batch", 5])]
    assert _opset(proto) == 17
    for batch in (1, 2, 5):
        x = _x(batch)
        np.testing.assert_allclose(_run(proto, {"input": x})[0], _torch_out(model, x)[0], atol=ATOL)


def test_pt2_dynamic_two_inputs_two_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    batch = torch.export.Dim("b")
    program = torch.export.export(
        model, (torch.zeros(3, 6), torch.zeros(3, 3)), dynamic_shapes=({0: batch}, {0: batch})
    )
    path = tmp_path / "two.pt2"
    torch.export.save(program, str(path))

    proto = load_checkpoint(path, opset=18)
    inputs, outputs = _io(proto)
    assert inputs == [("input_0", ["batch", 6]), ("input_1", ["batch", 3])]
    assert [name for name, _ in outputs] == ["output_0", "output_1"]
    assert _opset(proto) == 18
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((7, 6), dtype=np.float32), rng.standard_normal((7, 3), dtype=np.float32)
    got = _run(proto, {"input_0": x, "input_1": z})
    for g, want in zip(got, _torch_out(model, x, z)):
        np.testing.assert_allclose(g, want, atol=ATOL)

    # names given by --input-shape (matched to the program's argument names)
    proto = load_checkpoint(path, input_shapes={"z": (2, 3), "x": (2, 6)})
    assert [name for name, _ in _io(proto)[0]] == ["x", "z"]


def test_opset_17_from_torch_exporter(tmp_path: Path) -> None:
    """torch's exporter starts at opset 18; the default opset 17 is reached by rewriting
    Split and Reduce*, and the result must run right under onnxruntime's full optimizations."""
    torch.manual_seed(0)
    model = SplitsAndReductions().eval()
    path = tmp_path / "ops.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 8, 8),)), str(path))

    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchExportWarning)
        proto = load_checkpoint(path)
    assert _opset(proto) == 17
    ops = {n.op_type for n in proto.graph.node}
    assert {"Split", "ReduceMean", "ReduceMax"} <= ops
    x = _x(3)
    np.testing.assert_allclose(_run(proto, {"input": x})[0], _torch_out(model, x)[0], atol=1e-4)

    proto18 = load_checkpoint(path, opset=18)
    assert _opset(proto18) == 18
    np.testing.assert_allclose(_run(proto18, {"input": x})[0], _torch_out(model, x)[0], atol=1e-4)


def test_pt2_pinned_batch_stays_static(tmp_path: Path) -> None:
    model = PinnedBatch().eval()
    path = tmp_path / "pinned.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), str(path))

    with pytest.warns(TorchExportWarning, match="fixed batch size"):
        proto = load_checkpoint(path)
    assert _io(proto)[0] == [("input", [2, 4])]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(_run(proto, {"input": x})[0], _torch_out(model, x)[0], atol=ATOL)


# --------------------------------------------------------------------------- state_dict + --arch


def test_state_dict_with_arch_file(tmp_path: Path, factory_file: Path) -> None:
    model = _tiny()
    path = tmp_path / "tiny_sd.pth"
    torch.save(model.state_dict(), str(path))
    assert is_torch_checkpoint(path)

    proto = load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"image": (1, 3, 8, 8)})
    inputs, outputs = _io(proto)
    assert inputs == [("image", ["batch", 3, 8, 8])]
    assert outputs == [("output", ["batch", 5])]
    for batch in (1, 3):
        x = _x(batch)
        np.testing.assert_allclose(_run(proto, {"image": x})[0], _torch_out(model, x)[0], atol=ATOL)


def test_state_dict_with_arch_module(tmp_path: Path, factory_file: Path, monkeypatch) -> None:
    """``module:factory`` form; a multi-input model named by --input-shape; a DDP-style prefix."""
    monkeypatch.syspath_prepend(str(factory_file.parent))
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, str(path))

    proto = load_checkpoint(path, arch="tests_module_path:make_two", input_shapes={"x": (2, 6), "z": (2, 3)})
    inputs, outputs = _io(proto)
    assert inputs == [("x", ["batch", 6]), ("z", ["batch", 3])]
    assert [n for n, _ in outputs] == ["output_0", "output_1"]
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((4, 6), dtype=np.float32), rng.standard_normal((4, 3), dtype=np.float32)
    for g, want in zip(_run(proto, {"x": x, "z": z}), _torch_out(model, x, z)):
        np.testing.assert_allclose(g, want, atol=ATOL)


def test_a_training_checkpoints_weights_are_found_under_any_key(tmp_path: Path, factory_file: Path) -> None:
    """resemblyzer's pretrained.pt: {'step', 'model_state', 'optimizer_state'}, with two entries of
    its loss (GE2E similarity) that the model has no place for; was 'not a PyTorch checkpoint'."""
    model = _tiny()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    extra = {"similarity_weight": torch.ones(1), "similarity_bias": torch.zeros(1)}
    path = tmp_path / "train.pt"
    torch.save({"step": 7, "model_state": {**model.state_dict(), **extra}, "optimizer_state": optimizer.state_dict()},
               str(path))
    with pytest.warns(TorchExportWarning) as said:
        proto = load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
    text = " ".join(str(w.message) for w in said)
    assert "under 'model_state'" in text and "[similarity_bias, similarity_weight] (2)" in text
    np.testing.assert_allclose(_run(proto, {"x": _x(2)})[0], _torch_out(model, _x(2))[0], atol=ATOL)


def test_the_first_fitting_state_dict_is_loaded_and_the_others_named(tmp_path: Path, factory_file: Path) -> None:
    model, ema, other = _tiny(), _tiny(), TwoInTwoOut()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    path = tmp_path / "two.pt"
    torch.save({"head": other.state_dict(), "ema": ema.state_dict(), "model": model.state_dict()}, str(path))
    with pytest.warns(TorchExportWarning, match=r"under 'model'; also fitting: \[ema\] \(1\)"):
        proto = load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
    np.testing.assert_allclose(_run(proto, {"x": _x(2)})[0], _torch_out(model, _x(2))[0], atol=ATOL)


def test_a_state_dict_missing_a_weight_or_of_another_shape_does_not_fit(tmp_path: Path, factory_file: Path) -> None:
    weights = _tiny().state_dict()
    name = next(iter(weights))
    cases = {"missing": {k: v for k, v in weights.items() if k != name},
             "shape": {**weights, name: torch.zeros(*weights[name].shape[:-1], weights[name].shape[-1] + 1)}}
    for case, state_dict in cases.items():
        path = tmp_path / f"{case}.pt"
        torch.save({"model": state_dict, "step": 1}, str(path))
        with pytest.raises(BadInput, match=f"does not fit --arch .*{'missing' if case == 'missing' else 'shape'}"):
            load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (1, 3, 8, 8)})
    path = tmp_path / "none.pt"
    torch.save({"step": 1, "lr": 0.1}, str(path))
    with pytest.raises(BadInput, match=r"holds a dict of \[lr, step\] \(2\): no state_dict or module in it"):
        load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (1, 3, 8, 8)})


HPARAMS_SRC = """
from pathlib import Path

def touch(path):
    Path(path).write_text("ran")
    return {}

class HParams:
    def __init__(self, marker):
        self.marker = marker
        self.layers = [40, 30]

    def __reduce__(self):  # unpickling it runs touch(marker)
        return (touch, (self.marker,))
"""


def test_a_lightning_checkpoints_weights_load_without_rebuilding_its_other_objects(tmp_path: Path, factory_file: Path,
                                                                                    monkeypatch) -> None:
    """PESTO's checkpoint: hyper-parameters of omegaconf classes beside the state_dict, and the
    architecture one submodule of the trained model ('encoder.'). weights_only refused the
    classes (--trust-checkpoint then needs omegaconf installed and runs the file's code); the
    tensors need none of them. Nothing the pickle names runs: its hyper-parameters would write a file."""
    (tmp_path / "hp_mod.py").write_text(HPARAMS_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import hp_mod

    model, marker = _tiny(), tmp_path / "ran.txt"
    weights = {**{f"encoder.{k}": v for k, v in model.state_dict().items()}, "confidence.weight": torch.ones(3)}
    path = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 36, "state_dict": weights, "hparams": {"encoder": hp_mod.HParams(str(marker))}}, str(path))
    assert not marker.exists()
    with pytest.warns(TorchExportWarning) as said:
        proto = load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
    text = " ".join(str(w.message) for w in said)
    assert "not rebuilt (inert stand-ins for [hp_mod.touch] (1))" in text, text
    assert "took the entries under 'encoder.'" in text and "[confidence.weight] (1)" in text, text
    assert not marker.exists()
    np.testing.assert_allclose(_run(proto, {"x": _x(2)})[0], _torch_out(model, _x(2))[0], atol=ATOL)
    whole = tmp_path / "whole.pt"  # a pickled module has no weights beside its objects: trust is still asked
    torch.save({"model": hp_mod.HParams(str(marker))}, str(whole))
    with pytest.raises(BadInput, match=r"holds a pickled object \(hp_mod.touch\).*--trust-checkpoint"):
        load_checkpoint(whole, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
    assert not marker.exists()


def test_legacy_format_state_dict(tmp_path: Path, factory_file: Path) -> None:
    model = _tiny()
    path = tmp_path / "old.bin"  # no telling suffix: recognised by its pickle header
    torch.save(model.state_dict(), str(path), _use_new_zipfile_serialization=False)
    assert is_torch_checkpoint(path)
    proto = load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
    x = _x(2)
    np.testing.assert_allclose(_run(proto, {"x": x})[0], _torch_out(model, x)[0], atol=ATOL)


def test_state_dict_needs_arch(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(_tiny().state_dict(), str(path))
    with pytest.raises(BadInput, match="--arch module:factory"):
        load_checkpoint(path, input_shapes={"x": (1, 3, 8, 8)})


def test_state_dict_that_does_not_fit(tmp_path: Path, factory_file: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(TwoInTwoOut().state_dict(), str(path))
    with pytest.raises(BadInput, match="does not fit"):
        load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (1, 3, 8, 8)})


def test_bad_arch(tmp_path: Path, factory_file: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(_tiny().state_dict(), str(path))
    shapes = {"x": (1, 3, 8, 8)}
    with pytest.raises(BadInput, match="module:factory"):
        load_checkpoint(path, arch="no_colon_here", input_shapes=shapes)
    with pytest.raises(BadInput, match="no such file"):
        load_checkpoint(path, arch=f"{tmp_path / 'missing.py'}:make", input_shapes=shapes)
    with pytest.raises(BadInput, match="no attribute"):
        load_checkpoint(path, arch=f"{factory_file}:nope", input_shapes=shapes)
    with pytest.raises(BadInput, match="cannot import"):
        load_checkpoint(path, arch="surely_not_a_module_xyz:make", input_shapes=shapes)


def test_module_needs_input_shape(tmp_path: Path, factory_file: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(_tiny().state_dict(), str(path))
    with pytest.raises(BadInput, match="--input-shape"):
        load_checkpoint(path, arch=f"{factory_file}:make_tiny")
    with pytest.raises(BadInput, match="do not fit"):
        load_checkpoint(path, arch=f"{factory_file}:make_tiny", input_shapes={"x": (1, 7, 8, 8)})


# --------------------------------------------------------------------------- pickled modules


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "whole.pt"
    torch.save(model, str(path))
    assert is_torch_checkpoint(path)

    with pytest.raises(BadInput, match="--trust-checkpoint"):
        load_checkpoint(path, input_shapes={"x": (1, 3, 8, 8)})

    proto = load_checkpoint(path, trust=True, input_shapes={"x": (1, 3, 8, 8)})
    assert _io(proto)[0] == [("x", ["batch", 3, 8, 8])]
    x = _x(3)
    np.testing.assert_allclose(_run(proto, {"x": x})[0], _torch_out(model, x)[0], atol=ATOL)


def test_fallback_to_torchscript_exporter(tmp_path: Path) -> None:
    path = tmp_path / "branchy.pt"
    torch.save(DataDependent(), str(path))
    with pytest.warns(TorchExportWarning, match="TorchScript-based exporter"):
        proto = load_checkpoint(path, trust=True, input_shapes={"x": (2, 3)})
    assert _io(proto)[0] == [("x", ["batch", 3])]
    x = np.ones((4, 3), dtype=np.float32)  # the traced branch (zeros sum to 0: x - 1)
    np.testing.assert_allclose(_run(proto, {"x": x})[0], x - 1)


# --------------------------------------------------------------------------- not checkpoints


def test_not_a_checkpoint(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04this is not a pickle at all" * 10)
    with pytest.raises(BadInput, match="not a PyTorch checkpoint"):
        load_checkpoint(garbage, input_shapes={"x": (1, 3)})
    with pytest.raises(BadInput, match="not a PyTorch checkpoint"):
        load_checkpoint(garbage, trust=True, input_shapes={"x": (1, 3)})

    text = tmp_path / "notes.pth"
    text.write_text("hello")
    assert is_torch_checkpoint(text)  # by its name ...
    with pytest.raises(BadInput, match="not a PyTorch checkpoint"):
        load_checkpoint(text)  # ... but torch cannot read it

    with pytest.raises(BadInput, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_sniff(tmp_path: Path) -> None:
    onnx_file = ROOT / "core" / "assets" / "digits_cnn.onnx"
    assert not is_torch_checkpoint(onnx_file)
    disguised = tmp_path / "model.pt"  # an ONNX file with a torch name is still ONNX
    disguised.write_bytes(onnx_file.read_bytes())
    assert not is_torch_checkpoint(disguised)
    assert not is_torch_checkpoint(ROOT / "core" / "assets" / "digits_eval.npz")  # a zip, not torch
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    assert not is_torch_checkpoint(npy)
    assert not is_torch_checkpoint(tmp_path)  # a folder
    assert not is_torch_checkpoint(tmp_path / "missing.pt")
    assert is_torch_checkpoint(ROOT / "core" / "assets" / "digits_cnn.pt")


# --------------------------------------------------------------------------- the shipped model


def test_digits_checkpoint(monkeypatch, capfd) -> None:
    monkeypatch.chdir(ROOT)
    data = np.load(ROOT / "core" / "assets" / "digits_eval.npz")
    images, labels = data["image"], data["labels"]

    proto = load_checkpoint(
        Path("core/assets/digits_cnn.pt"), arch="scripts/digits_arch.py:digits_cnn", input_shapes={"image": (1, 1, 8, 8)}
    )
    captured = capfd.readouterr()
    assert captured.out == ""  # stdout carries data (`-o -`); the exporter must not print there

    inputs, outputs = _io(proto)
    assert inputs == [("image", ["batch", 1, 8, 8])]
    assert outputs == [("output", ["batch", 10])]
    got = _run(proto, {"image": images})[0]
    assert (got.argmax(1) == labels).mean() >= 0.97

    shipped = onnx.load(str(ROOT / "core" / "assets" / "digits_cnn.onnx"))
    want = _run(shipped, {"image": images})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


class ScaledBy(nn.Module):
    def forward(self, x: torch.Tensor, rate: int) -> torch.Tensor:
        return x * rate if rate > 8000 else x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated
def test_a_torchscript_forward_taking_a_python_value_is_refused_naming_it(tmp_path: Path) -> None:
    """silero-vad's silero_vad.jit: forward(x, sr: int). Shapes for both gave 'the inputs x=1,512 sr=1 do not
    fit the model (The following operation failed in the TorchScript interpreter.)'."""
    path = tmp_path / "scaled.jit"
    torch.jit.save(torch.jit.script(ScaledBy()), str(path))
    with pytest.raises(BadInput, match=r"its forward takes rate: int, not tensors; mcomp exports tensor inputs only"):
        load_checkpoint(path, input_shapes={"x": (1, 4), "rate": (1,)})


def test_a_checkpoint_takes_its_input_shape_from_the_data(tmp_path: Path, factory_file: Path) -> None:
    """`mcomp quantize crepe.pth --arch … --data tones.npz` asked for --input-shape though the data's arrays
    said [256, 1024]: with no --input-shape, one example of the data gives the shape to export at, from the
    arrays' headers (labels left out), in pass commands, compare and bench alike."""
    from clirun import run_mcomp

    from mcomp import data as data_io

    torch.save(_tiny().state_dict(), str(tmp_path / "tiny.pth"))
    np.savez(tmp_path / "d.npz", x=_x(6), labels=np.arange(6) % 5)
    np.save(tmp_path / "one.npy", _x(3))
    assert data_io.example_shapes(tmp_path / "d.npz") == {"x": (1, 3, 8, 8)}
    assert data_io.example_shapes(tmp_path / "one.npy") == {"": (1, 3, 8, 8)}
    assert data_io.checkpoint_shapes([tmp_path / "m.onnx"], [tmp_path / "d.npz"]) is None  # not a checkpoint
    arch = ["--arch", f"{factory_file}:make_tiny"]
    for args in (["optimize", "tiny.pth", "--data", "d.npz", "-o", "o.onnx"],
                 ["compare", "tiny.pth", "tiny.pth", "--data", "one.npy", "--runs", "3"],
                 ["bench", "tiny.pth", "--data", "d.npz", "--runs", "3"]):
        res = run_mcomp(*args, *arch, cwd=tmp_path)
        assert res.returncode == 0, res.explain()
    proto = onnx.load(str(tmp_path / "o.onnx"))
    assert _io(proto)[0] == [("x", ["batch", 3, 8, 8])]


def test_a_safetensors_state_dict_loads_with_arch(tmp_path: Path, factory_file: Path) -> None:
    """Hugging Face's weights format (a JSON header and raw tensors, nothing to unpickle) was read as ONNX:
    'not a valid ONNX model (… Wire format was corrupt)'. Recognised by its suffix or its header."""
    from safetensors.torch import save_file

    model = _tiny()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "weights.bin").write_bytes((tmp_path / "model.safetensors").read_bytes())
    for name in ("model.safetensors", "weights.bin"):
        assert is_torch_checkpoint(tmp_path / name)
        proto = load_checkpoint(tmp_path / name, arch=f"{factory_file}:make_tiny", input_shapes={"x": (2, 3, 8, 8)})
        np.testing.assert_allclose(_run(proto, {"x": _x(2)})[0], _torch_out(model, _x(2))[0], atol=ATOL)
    arch, shapes = f"{factory_file}:make_tiny", {"x": (1, 3, 8, 8)}
    save_file(dict(list(weights.items())[:2]), str(tmp_path / "part.safetensors"))  # one shard of several
    with pytest.raises(BadInput, match="does not fit --arch .*missing"):
        load_checkpoint(tmp_path / "part.safetensors", arch=arch, input_shapes=shapes)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(BadInput, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors", arch=arch, input_shapes=shapes)


def test_a_sharded_safetensors_checkpoint_loads_from_its_index(tmp_path: Path, factory_file: Path) -> None:
    """save_pretrained past max_shard_size writes model-0000k-of-0000n.safetensors and an index naming each
    weight's shard: the index reads them all; one shard alone points at it; an index cannot name a file
    elsewhere, and a shard it names must be there."""
    import json

    from safetensors.torch import save_file

    model = _tiny()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(tmp_path / shard))
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    arch, shapes = f"{factory_file}:make_tiny", {"x": (2, 3, 8, 8)}
    assert is_torch_checkpoint(index)
    proto = load_checkpoint(index, arch=arch, input_shapes=shapes)
    np.testing.assert_allclose(_run(proto, {"x": _x(2)})[0], _torch_out(model, _x(2))[0], atol=ATOL)
    with pytest.raises(BadInput, match="is one shard: pass model.safetensors.index.json"):
        load_checkpoint(tmp_path / "model-00001-of-00002.safetensors", arch=arch, input_shapes=shapes)
    index.write_text(json.dumps({"weight_map": dict(weight_map, extra="../elsewhere.safetensors")}))
    with pytest.raises(BadInput, match="is not a file name beside the index"):
        load_checkpoint(index, arch=arch, input_shapes=shapes)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(BadInput, match="shard model-00002-of-00002.safetensors is missing"):
        load_checkpoint(index, arch=arch, input_shapes=shapes)


TOKENS_SRC = """
import torch
from torch import nn


class Tagger(nn.Module):  # token ids in, as a language model takes them
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids):
        return self.head(self.table(input_ids).mean(1))


class Mixed(nn.Module):  # features and ids side by side
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, 4)
        self.proj = nn.Linear(6, 4)

    def forward(self, x, ids):
        return self.proj(x) + self.table(ids).mean(1)


def tagger():
    torch.manual_seed(0)
    return Tagger()


def mixed():
    torch.manual_seed(0)
    return Mixed()
"""


def test_a_model_reading_token_ids_is_exported_with_integer_inputs(tmp_path: Path) -> None:
    """A fine-tuned BERT's checkpoint (state_dict or safetensors) with --arch: export ran it on float zeros and
    said 'the inputs input_ids=1,16 do not fit the model (Expected tensor for argument #1 'indices' to have one
    of the following scalar types: Long, Int …)'."""
    (tmp_path / "tokens.py").write_text(TOKENS_SRC)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tokens_for_test", tmp_path / "tokens.py")
    tokens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tokens)
    ids = np.random.default_rng(0).integers(0, 50, (3, 7))
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    for factory, shapes, feeds, args in (
            ("tagger", {"input_ids": (1, 7)}, {"input_ids": ids}, (ids,)),
            ("mixed", {"x": (1, 6), "ids": (1, 7)}, {"x": x, "ids": ids}, (x, ids))):
        model = getattr(tokens, factory)().eval()
        path = tmp_path / f"{factory}.pt"
        torch.save(model.state_dict(), str(path))
        proto = load_checkpoint(path, arch=f"{tmp_path / 'tokens.py'}:{factory}", input_shapes=shapes)
        types = [i.type.tensor_type.elem_type for i in proto.graph.input]
        assert types == [onnx.TensorProto.INT64] if factory == "tagger" else [onnx.TensorProto.FLOAT,
                                                                              onnx.TensorProto.INT64], types
        with torch.no_grad():
            want = model(*(torch.from_numpy(a) for a in args)).numpy()
        np.testing.assert_allclose(_run(proto, feeds)[0], want, atol=ATOL)
