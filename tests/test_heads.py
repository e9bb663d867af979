"""Top-1 agreement on raw logits of any rank, where the graph shows a linear head computes them.

Found on a real model: ddddocr's text recognizer (``common.onnx``) emits CTC logits ``[T, 1, 8210]``
from a Gemm and a Reshape. Its int8 copy reported cosine 0.988 and no top-1 figure, while 0.9 % of
its time steps (2 % of the strings it read) changed: the value rule sees class scores only in
``[N, C]`` outputs and (log-)softmax, since a rank-3 feature map has a last axis too.
"""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from clirun import run_mcomp
from helpers import conv_bn_relu
from mcomp import evaluate
from mcomp.heads import linear_heads
from mcomp.passes.quantize import budget

STEPS, FEATURES, CLASSES = 10, 8, 12


def ctc_recognizer(seed: int = 0, noise: float = 0.0) -> onnx.ModelProto:
    """features [T, 1, F] → Reshape [T, F] → Gemm (transB, bias) → Reshape [T, 1, C]: ddddocr's tail."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)
    w += noise * np.random.default_rng(99).standard_normal(w.shape).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat"], ["rows"], name="flatten"),
         helper.make_node("Gemm", ["rows", "w", "b"], ["scores"], transB=1, name="head"),
         helper.make_node("Reshape", ["scores", "back"], ["logits"], name="unflatten")],
        "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, 1, FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seqlen"])],  # declared wrong, as there
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b"),
         numpy_helper.from_array(np.array([-1, FEATURES], np.int64), "flat"),
         numpy_helper.from_array(np.array([STEPS, 1, CLASSES], np.int64), "back")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def tied_lm_head(vocab: int = 16, dim: int = 4) -> ir.Model:
    """hidden [1, T, D] · Transpose(table [V, D]) × scale: a language model's tied head."""
    table = np.random.default_rng(0).standard_normal((vocab, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["h", "table_t"], ["raw"]),
         helper.make_node("Mul", ["scale", "raw"], ["logits"]),
         helper.make_node("Add", ["h", "h"], ["doubled"])],  # two computed inputs: not a bias
        "lm", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 5, dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, vocab]),
         helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 5, dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0.5, np.float32), "scale")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_a_linear_head_is_found_through_reshapes_biases_scales_and_a_tied_transpose():
    assert linear_heads(ir.serde.deserialize_model(ctc_recognizer())) == {"logits": CLASSES}
    assert linear_heads(tied_lm_head()) == {"logits": 16}  # not "doubled": Add of two computed tensors
    assert linear_heads(conv_bn_relu()) == {}  # a feature map: top-1 over its last axis means nothing


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_raw_rank_3_logits_get_top1_agreement_only_with_their_head():
    x = np.random.default_rng(1).standard_normal((STEPS, 1, FEATURES)).astype(np.float32)
    ref, cand = _logits(ctc_recognizer(), x), _logits(ctc_recognizer(noise=0.3), x)
    assert ref.shape == (STEPS, 1, CLASSES)
    expected = float(np.mean(ref.argmax(-1) == cand.argmax(-1)))
    assert expected < 1.0  # the perturbed head reads some steps differently
    by_value = evaluate.fidelity([[ref]], [[cand]], ["logits"])
    assert "top1_agreement" not in by_value["outputs"]["logits"] and by_value["summary"]["top1_agreement"] is None
    with_head = evaluate.fidelity([[ref]], [[cand]], ["logits"], heads={"logits": CLASSES})
    assert with_head["summary"]["top1_agreement"] == expected
    other_width = evaluate.fidelity([[ref]], [[cand]], ["logits"], heads={"logits": CLASSES + 1})
    assert other_width["summary"]["top1_agreement"] is None  # a Reshape moved the head's classes elsewhere


def test_quantize_budget_reads_top1_on_raw_logits(tmp_path):
    """``--fidelity-metric top1`` bounds what it names on such a model; it fell back to cosine."""
    from mcomp.data import Dataset

    x = np.random.default_rng(2).standard_normal((4, STEPS, 1, FEATURES)).astype(np.float32)
    dataset = Dataset(feeds=[{"x": x[i]} for i in range(4)])
    heads = linear_heads(ir.serde.deserialize_model(ctc_recognizer()))
    scorer = budget.Evaluator(ctc_recognizer().SerializeToString(), dataset, ["CPUExecutionProvider"], 1,
                              heads=heads)
    score = scorer.score(ctc_recognizer(noise=0.3).SerializeToString())
    assert score.top1 is not None and score.top1 < 1.0


def test_compare_prints_top1_agreement_of_a_ctc_recognizer(tmp_path):
    onnx.save(ctc_recognizer(), tmp_path / "ref.onnx")
    onnx.save(ctc_recognizer(noise=0.3), tmp_path / "cand.onnx")
    x = np.random.default_rng(3).standard_normal((6, STEPS, 1, FEATURES)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    res = run_mcomp("compare", "ref.onnx", "cand.onnx", "--data", "data.npz", "--runs", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "top-1 agreement (logits):" in res.stdout.decode()


def test_sigmoid_outputs_are_read_through_reshapes_and_a_qdq_pair_but_not_through_arithmetic():
    """What distillation trains per element: a Sigmoid's output as it leaves a QDQ model (Q, DQ) or a
    Reshape; a Sigmoid followed by arithmetic is not one (its values are no longer probabilities)."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["qdq"]),
             helper.make_node("Flatten", ["s"], ["flat"]),
             helper.make_node("Mul", ["s", "scale"], ["scaled"]),
             helper.make_node("Softmax", ["x"], ["soft"], axis=-1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("qdq", "flat", "scaled", "soft")],
        [numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
         numpy_helper.from_array(np.array(0, np.uint8), "zero")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    from mcomp.heads import sigmoid_outputs, softmax_outputs

    assert sigmoid_outputs(model) == {"qdq", "flat"}
    assert softmax_outputs(model) == {"soft"}
