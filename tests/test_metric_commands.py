"""``--metric file.py:function`` on the pass commands, and labels that are not class indices.

A text recognizer's labels are strings. Read as classes against argmax they gave "accuracy 0.00 %"
in the report, a --max-drop held on that, and distillation crashed on them (TypeError). Now
top-1 accuracy leaves such labels alone and says why, a --metric reads them (in the report, the
gates, and quantize's accuracy budget), and distillation trains on the teacher's outputs alone.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from clirun import DIGITS, DIGITS_EVAL, run_mcomp

METRIC = '''
import numpy as np

def as_text(outputs, labels):
    (scores,) = outputs.values()
    return float(np.mean([str(c) == label for c, label in zip(scores.argmax(-1), labels)]))
'''


@pytest.fixture()
def text_data(tmp_path):
    digits = np.load(DIGITS_EVAL)
    np.savez(tmp_path / "text.npz", image=digits["image"][:120],
             labels=np.array([str(label) for label in digits["labels"][:120]]))
    (tmp_path / "m.py").write_text(METRIC)
    return tmp_path


def test_text_labels_are_not_read_as_classes_and_a_metric_reads_them(text_data):
    folder = text_data
    refused = run_mcomp("quantize", str(DIGITS), "--data", "text.npz", "--max-drop", "0.01", "-o", "q.onnx", cwd=folder)
    assert refused.returncode == 2 and "or a --metric that reads the labels" in refused.stderr, refused.explain()
    assert not (folder / "q.onnx").exists() and len(refused.stderr.strip().splitlines()) == 1

    plain = run_mcomp("optimize", str(DIGITS), "--data", "text.npz", "-o", "o.onnx", "--json", cwd=folder)
    assert plain.returncode == 0, plain.explain()
    accuracy = json.loads(plain.out)["accuracy"]
    assert accuracy == {"known": False, "reason": "the labels are not class indices (text): --metric file.py:function "
                                                  "scores them"}

    # the guard off: whether int8 pays on this CPU, under this load, is not what is tested (it returned the input)
    read = run_mcomp("quantize", str(DIGITS), "--data", "text.npz", "--max-drop", "0.01", "--metric", "m.py:as_text",
                     "--no-latency-guard", "-o", "q.onnx", "--json", cwd=folder)
    assert read.returncode == 0, read.explain()
    doc = json.loads(read.out)
    assert doc["accuracy"]["metric"] == f"{folder / 'm.py'}:as_text" and doc["accuracy"]["reference"] > 0.9
    assert doc["steps"][0]["changes"]["budget"]["budget"] == "accuracy drop ≤ 0.01"
    # in points, on the feeds the pass scored, as the table gives accuracy: not "accuracy drop +0.0312"
    summary = doc["steps"][0]["summary"]
    assert re.search(r", accuracy [+-]\d+\.\d\d pts on the pass's \d+ feeds;", summary), summary


def test_quantize_reads_its_accuracy_budget_with_the_metric(text_data):
    import onnx_ir as ir

    from mcomp import data
    from mcomp.metric import Metric
    from mcomp.passes.quantize.budget import Evaluator

    dataset = data.load(str(text_data / "text.npz"), ir.load(DIGITS))
    source = DIGITS.read_bytes()
    assert Evaluator(source, dataset, ["CPUExecutionProvider"], 1).reference_accuracy is None
    metric = Metric(f"{text_data / 'm.py'}:as_text")
    evaluator = Evaluator(source, dataset, ["CPUExecutionProvider"], 1, metric=metric)
    assert 0.9 < evaluator.reference_accuracy <= 1 and evaluator.score(source).accuracy == evaluator.reference_accuracy


@pytest.mark.slow  # ~7 s; make test is kept near 8 minutes
def test_distillation_with_text_labels_trains_on_the_teacher_alone(text_data):
    folder = text_data
    pruned = run_mcomp("prune", str(DIGITS), "--method", "structured", "--rate", "0.5", "-o", "p.onnx", "-q",
                       cwd=folder)
    assert pruned.returncode == 0, pruned.explain()
    res = run_mcomp("distill", "p.onnx", "--teacher", str(DIGITS), "--data", "text.npz", "--epochs", "1",
                    "--lr", "0.01", "--metric", "m.py:as_text", "-o", "d.onnx", "--json", cwd=folder)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    assert any(n.startswith("distill: the labels are text") for n in doc["notes"]), doc["notes"]
    assert doc["accuracy"]["known"] and doc["accuracy"]["metric"].endswith("m.py:as_text")


TIME_MAJOR_METRIC = '''
import numpy as np

def exact(outputs, labels):  # a CTC decoder's view: [time, batch, classes], one string a batch column
    (scores,) = outputs.values()
    assert scores.shape[1] == len(labels), scores.shape
    texts = ["".join(str(c) for c in column) for column in scores.argmax(-1).T]
    return float(np.mean([t == l for t, l in zip(texts, labels)]))
'''


def test_a_time_major_output_is_joined_along_its_batch_axis_for_the_metric(tmp_path):
    """A CRNN exported from PyTorch emits [time, batch, classes] for a fixed batch of 1 (ddddocr's captcha
    model): the metric gets the outputs as one run over all the data would give them, [time, examples,
    classes], not 64 sequences end to end along the time axis (an exact-string accuracy of 0 %)."""
    import onnx
    from onnx import TensorProto, helper

    # x [1, 3, 4] (time 3, classes 4) → Transpose → y [3, 1, 4]
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ctc.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3, 4)).astype(np.float32)
    texts = ["".join(str(c) for c in row) for row in x.argmax(-1)]
    texts[0] = "wrong"  # 11 of 12 read
    np.savez(tmp_path / "d.npz", x=x[:, None], labels=np.array(texts))
    (tmp_path / "m.py").write_text(TIME_MAJOR_METRIC)
    done = run_mcomp("optimize", "ctc.onnx", "--data", "d.npz", "--metric", "m.py:exact", "-o", "o.onnx", "--json",
                     cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    accuracy = json.loads(done.out)["accuracy"]
    assert accuracy["reference"] == pytest.approx(11 / 12) and accuracy["candidate"] == pytest.approx(11 / 12)
    compared = run_mcomp("compare", "ctc.onnx", "o.onnx", "--data", "d.npz", "--metric", "m.py:exact", "--json",
                         cwd=tmp_path)
    assert compared.returncode == 0, compared.explain()
    assert json.loads(compared.out)["accuracy"]["reference"] == pytest.approx(11 / 12)


def test_a_metric_that_scores_both_models_zero_is_warned_of(text_data):
    """An accuracy budget holds for any model where input and output both score 0 (ddddocr's recognizer, its
    outputs joined the wrong way for the metric): the report says so, with what to check."""
    folder = text_data
    (folder / "z.py").write_text("def zero(outputs, labels):\n    return 0.0\n")
    done = run_mcomp("optimize", str(DIGITS), "--data", "text.npz", "--metric", "z.py:zero", "-o", "o.onnx", "--json",
                     cwd=folder)
    assert done.returncode == 0, done.explain()
    warned = [w for w in json.loads(done.out)["warnings"] if w["kind"] == "labels"]
    assert len(warned) == 1 and "both score 0 on --metric" in warned[0]["message"], warned
    assert "mcomp compare" in warned[0]["advice"]
    assert "both score 0 on --metric" in done.stderr


def test_quantize_refuses_a_drop_budget_on_an_input_that_scores_zero(text_data):
    folder = text_data
    (folder / "z.py").write_text("def zero(outputs, labels):\n    return 0.0\n")
    refused = run_mcomp("quantize", str(DIGITS), "--data", "text.npz", "--metric", "z.py:zero", "--max-drop", "0.01",
                        "-o", "q.onnx", cwd=folder)
    assert refused.returncode == 2 and "the input scores 0 on the data" in refused.stderr, refused.explain()
    assert len(refused.stderr.strip().splitlines()) == 1 and not (folder / "q.onnx").exists()
