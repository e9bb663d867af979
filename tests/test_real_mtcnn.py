"""A multi-task model's regressions beside its class scores: MTCNN's ONet (``realmodels`` "mtcnn-onet").

ONet gives face boxes ``[N, 4]``, five landmarks ``[N, 10]`` and a face / not-a-face softmax ``[N, 2]``.
Read by shape alone, every one of them was class scores: the report gave "top-1 agreement" over box
coordinates, accuracy was read from the boxes (the first ``[N, K]`` output), distillation fitted the
boxes with a temperature softmax, and Taylor importance took its cross-entropy on them.
"""

import json

import numpy as np
import pytest

import realmodels
from clirun import run_mcomp
from mcomp.kernels import fidelity as fk
from mcomp.passes.distill.objective import output_kinds
from mcomp.passes.prune.gradients import _loss

NAMES = ["dense_5", "dense_6", "softmax_2"]


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_raw_outputs_beside_softmax_scores_of_another_width_are_regressions():
    rng = np.random.default_rng(0)
    boxes, marks = rng.normal(0, 0.2, (8, 4)).astype(np.float32), rng.uniform(0, 1, (8, 10)).astype(np.float32)
    logits = rng.normal(0, 2, (8, 2)).astype(np.float32)
    assert fk.beside_normalized_scores([boxes, marks, _softmax(logits)]) == {0, 1}
    assert fk.beside_normalized_scores([boxes, marks, np.log(_softmax(logits))]) == {0, 1}  # log-softmax too
    assert fk.beside_normalized_scores([logits, _softmax(logits)]) == set()  # logits and their probabilities
    assert fk.beside_normalized_scores([boxes, logits]) == set()  # no normalized output: read as before
    assert fk.beside_normalized_scores([boxes]) == set()
    assert fk.beside_normalized_scores([boxes, None, _softmax(logits), np.arange(8)]) == {0}


def test_distillation_and_taylor_read_the_softmax_not_the_boxes():
    import torch

    rng = np.random.default_rng(1)
    outputs = [rng.normal(0, 0.2, (8, 4)), rng.uniform(0, 1, (8, 10)), _softmax(rng.normal(0, 2, (8, 2)))]
    outputs = [o.astype(np.float32) for o in outputs]
    kinds = output_kinds(NAMES, outputs, softmax={"softmax_2"})
    assert [k.kind for k in kinds] == ["regression", "regression", "classifier"]
    labels = np.array([0, 1] * 4)
    loss = _loss([torch.from_numpy(o) for o in outputs], labels)
    expected = torch.nn.functional.nll_loss(torch.log(torch.from_numpy(outputs[2])), torch.from_numpy(labels))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.fixture(scope="module")
def onet(tmp_path_factory):
    """The model, and 32 crops labelled with its own face / not-a-face readings (so its accuracy is 100 %)."""
    import onnxruntime as ort

    model = realmodels.fetch("mtcnn-onet")
    folder = tmp_path_factory.mktemp("onet")
    crops = np.concatenate([model.feeds(seed=s)["input_3"] for s in range(4)])
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    labels = session.run(["softmax_2"], {"input_3": crops})[0].argmax(axis=1)
    np.savez(folder / "crops.npz", input_3=crops, labels=labels)
    return model.path, folder


def test_the_report_gives_top1_and_accuracy_from_the_softmax_only(onet):
    path, folder = onet
    done = run_mcomp("prune", path, "--rate", "0.3", "--data", "crops.npz", "-o", "pruned.onnx",
                     "--report", "pruned.json", cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "pruned.json").read_text())
    outputs = doc["fidelity"]["outputs"]
    assert "top1_agreement" not in outputs["dense_5"] and "top1_agreement" not in outputs["dense_6"]
    assert "top1_agreement" in outputs["softmax_2"]
    assert doc["accuracy"]["known"] and doc["accuracy"]["reference"] == 1.0  # its own readings, from the softmax


def test_structured_pruning_cuts_the_channels_keras_flattened_last(onet):
    """ONet's last conv reaches its dense layer through Transpose to NHWC and Flatten: that group was left
    whole ("Flatten merges the channels with other axes"), and with it the model's largest weight."""
    path, folder = onet
    done = run_mcomp("prune", path, "--method", "structured", "--rate", "0.5", "--data", "crops.npz",
                     "-o", "cut.onnx", "--report", "cut.json", cwd=folder)
    assert done.returncode == 0, done
    changes = json.loads((folder / "cut.json").read_text())["steps"][0]["changes"]
    assert not any("Flatten" in reason for reason in changes["left_whole_reasons"])
    assert changes["parameters_after"] < 0.3 * changes["parameters_before"]  # ×0.465 with the group left whole
