"""Seed corpus: small valid inputs for each fuzz target, built here rather than stored, so that
they follow the onnx and numpy versions the tests run with. A coverage-guided fuzzer gets far
faster from valid files than from nothing: protobuf and zip framing are hard to guess."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mcomp.embedded import builtin_path

# The external-data seed's weights, written beside every model the model target loads.
WEIGHTS_FILE = "weights.bin"
WEIGHTS = np.arange(16, dtype=np.float32).reshape(4, 4)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _add() -> bytes:
    """Y = X + b, dynamic batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    b = numpy_helper.from_array(np.ones(4, np.float32), "b")
    return _model([helper.make_node("Add", ["x", "b"], ["y"])], [x], [y], [b])


def multi_input() -> bytes:
    """Three inputs of different ranks and dtypes (float batch, int64 batch, float scalar): the
    data target loads arrays for it too, reaching the name matching and constant-input paths."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch"])
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"]),
             helper.make_node("Cast", ["idx"], ["z"], to=TensorProto.FLOAT)]
    return _model(nodes, [x, idx, scale], [y, z])


def _external() -> bytes:
    """A MatMul whose weights are external data in WEIGHTS_FILE."""
    w = numpy_helper.from_array(WEIGHTS, "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, value in (("location", WEIGHTS_FILE), ("offset", "0"), ("length", str(WEIGHTS.nbytes))):
        w.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])


def _subgraph() -> bytes:
    """An If with a branch graph each way, and a model-local function: the nested-node walks."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    then = helper.make_graph([helper.make_node("Constant", [], ["y"], value_floats=[1.0, 2.0])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "else", [], [out])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])
    fn = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Twice", ["y"], ["r"], domain="local")]
    graph = helper.make_graph(nodes, "g", [cond, x], [r])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[fn]).SerializeToString()


def _npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def model_seeds() -> dict[str, bytes]:
    return {"digits.onnx": builtin_path("digits").read_bytes(), "add.onnx": _add(), "multi.onnx": multi_input(),
            "external.onnx": _external(), "subgraph.onnx": _subgraph()}


def data_seeds() -> dict[str, bytes]:
    with np.load(builtin_path("digits-eval")) as eval_set:
        image, labels = eval_set["image"][:4], eval_set["labels"][:4]
    rng = np.random.default_rng(0)
    multi = {"x": rng.standard_normal((4, 3)).astype(np.float32), "idx": np.arange(4), "scale": np.float32(2)}
    return {"digits.npz": _npz(image=image, labels=labels), "digits-z.npz": _npz(True, image=image[:2]),
            "digits.npy": _npy(image), "unnamed.npz": _npz(arr_0=image[:1]),
            "multi.npz": _npz(**multi, labels=np.arange(4)), "scalar.npy": _npy(np.float32(1))}


def arrays_seeds() -> dict[str, bytes]:
    """The .npz data seeds, unpacked into members for the arrays target (targets.pack packs them)."""
    from targets import MEMBER_SEP

    out = {}
    for name, blob in data_seeds().items():
        if name.endswith(".npz") and not name.endswith("-z.npz"):
            with zipfile.ZipFile(io.BytesIO(blob)) as npz:
                members = [n.removesuffix(".npy").encode() + b"\0" + npz.read(n) for n in npz.namelist()]
            out[name.removesuffix(".npz")] = MEMBER_SEP.join(members)
    return out


SEEDS = {"model": model_seeds, "data": data_seeds, "arrays": arrays_seeds}
