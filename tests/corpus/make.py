"""The bad-input corpus of issue 12, as data: each case is a set of files written into a folder
(small models built here, so the repository holds no binaries), the commands it applies to, and
what every one of them must answer: the exit code and a regex of the one error line.

Cases are generated rather than stored because most are a few-hundred-byte variation of the
embedded digits model or of its data; building them costs milliseconds and keeps the repository
small. ``write(case, folder)`` writes one; ``CASES`` lists them; ``COMMANDS`` says how each
command is spelled for a case (``{model}``, ``{other}`` and ``{data_opt}`` are filled from the case).
Every run is a refusal, so nothing may be written in the case's folder and its files stay as they were.
The cases of ``tests/test_bad_inputs.py`` stay there (single commands); this table holds the ones
that apply to many commands, so a new command is checked against all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import mcomp

ASSETS = Path(mcomp.__file__).resolve().parent / "assets"
DIGITS = ASSETS / "digits_cnn.onnx"
DIGITS_EVAL = ASSETS / "digits_eval.npz"

# How each command runs on a case: argv after "mcomp". Short runs: the refusal must come before any work.
COMMANDS: dict[str, list[str]] = {
    "inspect": ["inspect", "{model}"],
    "optimize": ["optimize", "{model}", "--runs", "3", "{data_opt}"],
    "prune": ["prune", "{model}", "--rate", "0.5", "--runs", "3", "{data_opt}"],
    "prune-taylor": ["prune", "{model}", "--method", "taylor", "--rate", "0.5", "--runs", "3", "{data_opt}"],
    "quantize": ["quantize", "{model}", "--runs", "3", "{data_opt}"],
    "distill": ["distill", "{model}", "--teacher", "{model}", "--epochs", "1", "--runs", "3", "{data_opt}"],
    "bench": ["bench", "{model}", "--runs", "3", "{data_opt}"],
    "compare": ["compare", "{model}", "{other}", "--runs", "3", "{data_opt}"],
    "run": ["run", "pipe.yaml", "{model}"],
    "auto": ["auto", "{model}", "--min-fidelity", "0.9", "--trials", "1", "--runs", "3", "{data_opt}"],
}


@dataclass(frozen=True)
class Case:
    """One bad input: ``build(folder)`` writes its files; ``commands`` it applies to; every one of
    them exits ``code`` with one stderr line matching ``message``. ``extra`` is appended to each
    command line; ``data`` is the --data of the commands that take it; ``other`` the second model of compare."""

    name: str
    build: Callable[[Path], None]
    commands: tuple[str, ...]
    message: str
    code: int = 2
    model: str = "model.onnx"
    data: str = "random"
    other: str | None = None
    extra: tuple[str, ...] = ()

    def argv(self, command: str) -> list[str]:
        values = {"model": self.model, "other": self.other or self.model}
        out = []
        for arg in COMMANDS[command]:
            if arg == "{data_opt}":
                out += ["--data", self.data]
            else:
                out.append(arg.format(**values))
        return out + list(self.extra)


def _save(proto: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(proto.SerializeToString())  # no checks: the CLI must do the checking


def _gemm_model(x_shape, w_shape=(4, 3), *, external: bool = False) -> onnx.ModelProto:
    """x → Gemm(W) → y: the smallest model with a weight (prunable, quantizable)."""
    w = numpy_helper.from_array(np.arange(np.prod(w_shape), dtype=np.float32).reshape(w_shape) / 10, "W")
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w_shape[1]])], [w])
    if external:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(10**9)), ("length", "48")):
            w.external_data.add(key=key, value=value)
        graph.initializer[0].CopyFrom(w)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def _external_offset(folder: Path) -> None:
    _save(_gemm_model((1, 4), external=True), folder / "model.onnx")
    (folder / "weights.bin").write_bytes(bytes(100))


def _conv(folder: Path, x_shape, y_shape, kernel) -> None:
    """x → Conv(W: 4×3×3×3) → y, with the declared shapes and kernel_shape given."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=list(kernel))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    _save(proto, folder / "model.onnx")


def _huge_input(folder: Path) -> None:
    _conv(folder, (1, 3, 200000, 200000), (1, 4, 199998, 199998), (3, 3))


def _negative_dim(folder: Path) -> None:
    _save(_gemm_model((1, -5)), folder / "model.onnx")


def _negative_kernel(folder: Path) -> None:
    _conv(folder, (1, 3, 8, 8), (1, 4, 6, 6), (-3, -3))


def _digits(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(DIGITS.read_bytes())


def _digits_with(array_fn: Callable[[np.ndarray], np.ndarray], labels: bool = True) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        _digits(folder)
        data = np.load(DIGITS_EVAL)
        image = array_fn(data["image"].copy())
        arrays = {"image": image} | ({"labels": data["labels"][: len(image)]} if labels else {})
        np.savez(folder / "data.npz", **arrays)
    return build


def _nan(image: np.ndarray) -> np.ndarray:
    image[3, 0, 2, 5] = np.nan
    return image


def _inf(image: np.ndarray) -> np.ndarray:
    image[0, 0, 0, 1] = np.inf
    return image


def _unrelated(folder: Path) -> None:
    """The digits model and a model with the same input but an unrelated output (name and shape)."""
    _digits(folder)
    node = helper.make_node("ReduceMean", ["image"], ["mean"], name="mean", axes=[1, 2, 3], keepdims=0)
    graph = helper.make_graph([node], "other", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch"])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    _save(proto, folder / "other.onnx")


def _provider(folder: Path) -> None:
    _digits(folder)
    (folder / "pipe.yaml").write_text("model: model.onnx\nsteps:\n  - optimize: {}\nmeasure: {runs: 3}\n")


def _broken_safetensors(folder: Path) -> None:
    """A safetensors header (its length, then JSON) cut short: Hugging Face's weights format, damaged."""
    header = b'{"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}'
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header[:20] + b"\0" * 60)


PASSES = ("optimize", "prune", "quantize", "distill")
RUNNING = PASSES + ("bench", "compare")
DATA_COMMANDS = ("optimize", "prune-taylor", "quantize", "distill", "bench", "compare")

CASES: list[Case] = [
    Case("external-offset-past-end", _external_offset, ("inspect", "optimize", "prune", "quantize", "bench", "compare"),
         r"'W'.*weights\.bin.*(offset|past the end)"),
    Case("input-too-large", _huge_input, ("optimize", "prune", "quantize", "bench", "compare"),
         r"'x'.*1×3×200000×200000.*--input-shape"),
    Case("negative-dim", _negative_dim, ("inspect",) + RUNNING, r"'x'.*-5"),
    Case("negative-kernel-shape", _negative_kernel, ("inspect",) + RUNNING, r"(?i)conv.*kernel_shape"),
    Case("provider-unknown", _provider, PASSES + ("bench", "compare", "run", "auto"),
         r"'foo'.*cpu, cuda, auto", extra=("--provider", "foo")),
    Case("data-nan", _digits_with(_nan), DATA_COMMANDS, r"data\.npz.*'image'.*NaN.*\[3, 0, 2, 5\]", data="data.npz"),
    Case("data-inf", _digits_with(_inf), DATA_COMMANDS, r"data\.npz.*'image'.*inf.*\[0, 0, 0, 1\]", data="data.npz"),
    Case("data-empty", _digits_with(lambda a: np.zeros((0, 1, 1, 8, 8), np.float32), labels=False), DATA_COMMANDS,
         r"data\.npz.*'image'.*empty", data="data.npz"),
    Case("data-int64", _digits_with(lambda a: (a * 16).astype(np.int64)), DATA_COMMANDS,
         r"data\.npz.*'image'.*int64.*float32", data="data.npz"),
    Case("compare-unrelated", _unrelated, ("compare",), r"other\.onnx.*outputs", other="other.onnx"),
    Case("safetensors-broken", _broken_safetensors, ("inspect",) + RUNNING,
         r"model\.safetensors: not a safetensors file", model="model.safetensors"),
]

BY_NAME = {c.name: c for c in CASES}


def write(case: Case, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    case.build(folder)


def params() -> list[tuple[str, str, bool]]:
    """Every (case, command, slow) triple the table-driven test runs. ``slow`` is False for a cover of
    the table (each case and each command at least once, for ``make test``); the rest run in
    ``make test-slow``, so CI still runs every pair."""
    out, cases, commands = [], set(), set()
    for c in CASES:
        for command in c.commands:
            quick = c.name not in cases or command not in commands
            cases.add(c.name)
            commands.add(command)
            out.append((c.name, command, not quick))
    return out


if __name__ == "__main__":  # writes every case under the folder given, for trying them by hand
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus-out")
    for c in CASES:
        write(c, root / c.name)
        for command in c.commands:
            print(f"(cd {root / c.name} && mcomp {' '.join(c.argv(command))})")
