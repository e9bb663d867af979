import numpy as np
import onnx
import onnx_ir as ir
import pytest

from helpers import run
from mcomp.errors import BadInput, ConfigError, NotApplicable
from mcomp.model import copy
from mcomp.pass_base import Context
from mcomp.passes.prune import Prune
from mcomp.passes.prune.unstructured import allocate

FEEDS = {"x": np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)}


def mlp(layers: int = 4, width: int = 32, seed: int = 0) -> ir.Model:
    """x[N,16] → (Gemm → Relu) × layers → y[N,10]; weights of different scales per layer."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, dims = [], [], "x", [16] + [width] * (layers - 1) + [10]
    for i in range(layers):
        w = (rng.standard_normal((dims[i], dims[i + 1])) * (i + 1)).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"), onnx.numpy_helper.from_array(rng.uniform(0.1, 0.2, dims[i + 1]).astype(np.float32), f"b{i}")]
        nodes.append(onnx.helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}"))
        prev = f"g{i}"
        if i < layers - 1:
            nodes.append(onnx.helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = onnx.helper.make_graph(nodes, "mlp", [onnx.helper.make_tensor_value_info("x", 1, ["N", 16])],
                                   [onnx.helper.make_tensor_value_info(prev, 1, ["N", 10])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.serde.deserialize_model(proto)


def sparsity(model, name):
    w = model.graph.initializers[name].const_value.numpy()
    return 1 - np.count_nonzero(w) / w.size


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_achieved_sparsity_matches_the_request(rate, scope):
    result = Prune(rate=rate, scope=scope, protect_ends=False)(mlp(), Context())
    achieved = result.details["achieved"]["sparsity"]
    assert abs(achieved - rate) <= 0.005
    assert result.modified and len(result.details["layers"]) == 4
    if scope == "layer":
        for layer in result.details["layers"]:
            assert abs(layer["sparsity"] - rate) <= 0.01


def test_global_scope_prunes_small_layers_more():
    result = Prune(rate=0.5, scope="global", protect_ends=False)(mlp(), Context())
    s = [sparsity(result.model, f"w{i}") for i in range(4)]
    assert s[0] > s[3]  # layer 0 has the smallest weights


def test_first_and_last_layers_are_protected_by_default():
    result = Prune(rate=0.5)(mlp(), Context())
    assert sparsity(result.model, "w0") == 0 and sparsity(result.model, "w3") == 0
    assert sparsity(result.model, "w1") > 0
    reasons = {s["tensor"]: s["reason"] for s in result.details["left_whole"]}
    assert "first layer" in reasons["w0"] and "last layer" in reasons["w3"]


def test_exclude_by_name_and_op_type():
    result = Prune(rate=0.5, exclude=["fc1"], protect_ends=False)(mlp(), Context())
    assert sparsity(result.model, "w1") == 0 and sparsity(result.model, "w2") > 0
    with pytest.raises(ConfigError, match="no prunable weights"):
        Prune(rate=0.5, exclude=["Gemm"])(mlp(), Context())


def test_per_layer_cap_is_respected_and_total_still_met():
    scores = [np.full(100, 0.01), np.linspace(1, 2, 100)]
    counts = allocate(scores, 0.5, "global", cap=0.6)
    assert counts[0] == 60 and sum(counts) == 100


def test_random_is_seeded_and_magnitude_beats_random_on_fidelity():
    model = mlp()
    expected = run(model, FEEDS)[0]
    a = Prune(method="random", rate=0.5)(copy(model), Context(seed=1)).model
    b = Prune(method="random", rate=0.5)(copy(model), Context(seed=1)).model
    np.testing.assert_array_equal(a.graph.initializers["w1"].const_value.numpy(), b.graph.initializers["w1"].const_value.numpy())
    mag = Prune(method="magnitude", rate=0.5)(copy(model), Context()).model
    err = lambda m: np.linalg.norm(run(m, FEEDS)[0] - expected)
    assert err(mag) < err(a)


def test_target_params_counts_all_parameters():
    model = mlp()
    result = Prune(rate=0.3, target="params")(model, Context())
    from mcomp.summary import tensor_counts

    counts = tensor_counts(result.model, nonzero=True)[0]
    assert abs((1 - counts.nonzero / counts.parameters) - 0.3) <= 0.005


def test_unstructured_refuses_a_macs_target():
    with pytest.raises(ValueError, match="structured method"):
        Prune.Config(method="magnitude", target="macs")


def test_report_has_compressed_sizes_and_the_speed_note():
    result = Prune(rate=0.9, protect_ends=False)(mlp(width=128), Context())
    sizes = result.details["compressed_bytes"]
    assert sizes["after"]["zstd"] < sizes["before"]["zstd"] * 0.6
    assert any("not faster" in n for n in result.notes)


def test_taylor_uses_gradients_of_the_data_and_hits_the_rate():
    from mcomp import data

    model = mlp()
    rng = np.random.default_rng(0)
    ds = data.Dataset([{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)],
                      [rng.integers(0, 10, 8) for _ in range(4)], False, "t")
    result = Prune(method="taylor", rate=0.6, steps=3)(copy(model), Context(data={"training": ds}))
    assert abs(result.details["achieved"]["sparsity"] - 0.6) <= 0.005
    magnitude = Prune(method="magnitude", rate=0.6)(copy(model), Context()).model
    differs = any(not np.array_equal(result.model.graph.initializers[n].const_value.numpy() == 0,
                                     magnitude.graph.initializers[n].const_value.numpy() == 0) for n in ("w1", "w2"))
    assert differs  # the gradients, not the magnitudes alone, chose the weights


def test_taylor_without_data_is_refused_before_it_runs():
    with pytest.raises(BadInput, match="needs data: taylor importance takes gradients"):
        Prune(method="taylor", rate=0.5)(mlp(), Context())


def test_pruning_what_is_already_pruned_does_not_modify():
    first = Prune(rate=0.5)(mlp(), Context())
    assert first.modified
    again = Prune(rate=0.5)(first.model, Context())  # the lowest half is the zeros already there
    assert not again.modified
    assert again.details["achieved"]["sparsity"] == first.details["achieved"]["sparsity"]


def _dynamic_int8() -> ir.Model:
    """x → DynamicQuantizeLinear → MatMulInteger(int8 weights) → Cast → Mul(scales): a model quantized
    dynamically, as ddddocr ships its captcha recognizer (ConvInteger, MatMulInteger)."""
    h, T = onnx.helper, onnx.TensorProto
    inits = [onnx.numpy_helper.from_array(np.arange(-8, 8, dtype=np.int8).reshape(4, 4), "wq"),
             onnx.numpy_helper.from_array(np.array(0, np.int8), "wz"),
             onnx.numpy_helper.from_array(np.array(0.1, np.float32), "ws")]
    nodes = [h.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             h.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"], name="mm"),
             h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT), h.make_node("Mul", ["xs", "ws"], ["s"]),
             h.make_node("Mul", ["accf", "s"], ["y"])]
    graph = h.make_graph(nodes, "q", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]))


def test_pruning_an_already_quantized_model_says_so():
    """Before: "no prunable weights left after --exclude and the protected first/last layers", with no
    --exclude given; and structured pruning's "0 of 0 channel groups" without a reason."""
    with pytest.raises(NotApplicable, match=r"already quantized \(DynamicQuantizeLinear ×1, MatMulInteger ×1\), and "
                                          "pruning reads float weights"):
        Prune(rate=0.5, protect_ends=False)(_dynamic_int8(), Context())
    result = Prune(rate=0.5, method="structured")(_dynamic_int8(), Context(input_shapes={}))
    assert not result.modified and any("already quantized" in note for note in result.notes)


def test_structured_pruning_that_cuts_nothing_says_why_in_its_summary():
    """openWakeWord's wake-word heads normalize each Gemm's output with a LayerNorm spelled out in ReduceMean
    over the channels: the summary read "0 of 2 channel groups cut; 2 groups left whole" and no reason."""
    h, T = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 4)), ("b2", (4,)))]
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["g"]), h.make_node("ReduceMean", ["g"], ["mu"], axes=[-1]),
             h.make_node("Sub", ["g", "mu"], ["c"]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    graph = h.make_graph(nodes, "ln", [h.make_tensor_value_info("x", T.FLOAT, [1, 16])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    model = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]))
    result = Prune(rate=0.5, method="structured")(model, Context(input_shapes={}))
    assert not result.modified
    assert "left whole (ReduceMean reduces over the channels ×1" in result.summary, result.summary
