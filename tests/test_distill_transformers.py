"""The distill pass on transformers (tests/transformer_models.py: BERT and GPT-2, 4 layers, hidden
256, at sequence length 16): hints along the hidden axis of a structured-pruned BERT, the
hidden-state and attention-map losses, and a student never returned worse than it came."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

import transformer_models as tm
from mcomp import data as data_io
from mcomp import model as model_io
from mcomp.errors import BadInput
from mcomp.pass_base import Context
from mcomp.passes.distill import Distill, hints, layers
from mcomp.passes.distill.objective import Hint, Objective, OutputKind
from mcomp.passes.prune import Prune

SEQ = 16


def _data(name: str, tmp_path_factory, examples: int = 48) -> data_io.Dataset:
    m = tm.build(name)
    path = tmp_path_factory.mktemp(f"{name}-data") / "tokens.npz"
    np.savez(path, **m.feeds(batch=examples, seq=SEQ, seed=0))
    return data_io.load(path, model_io.load(m.path).model)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    teacher = model_io.load(tm.build("bert").path).model
    student = Prune(method="structured", rate=0.3)(model_io.copy(teacher), Context(threads=1)).model
    return teacher, student, _data("bert", tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return model_io.load(tm.build("gpt2").path).model, _data("gpt2", tmp_path_factory, 32)


def distill(student: ir.Model, teacher: ir.Model, data: data_io.Dataset, **options):
    options = {"epochs": 1, "batch_size": 16, **options}
    ctx = Context(reference=teacher, data={"training": data}, threads=1)
    return Distill(**options)(model_io.copy(student), ctx)


def _perturbed(model: ir.Model, scale: float = 0.05) -> ir.Model:
    """A copy whose largest weight carries seeded noise of ``scale`` × its spread (the damage of a compression)."""
    copy = model_io.copy(model)
    value = max((v for v in copy.graph.initializers.values() if v.const_value is not None),
                key=lambda v: v.const_value.size)
    array = value.const_value.numpy()
    noise = np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype) * scale * float(array.std())
    value.const_value = ir.tensor(array + noise, name=value.name)
    return copy


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items() if v.const_value is not None}


@pytest.mark.slow  # about 30 s: a structured prune, the LR range test, 2 epochs
def test_pruned_bert_distils_with_hints_on_the_hidden_axis(bert):
    teacher, student, data = bert
    result = distill(student, teacher, data, epochs=2)  # defaults otherwise: auto hints, LR range test
    notes = " ".join(result.notes)
    assert "(axis 2)" in notes  # the FFN's [N, seq, 720] activations mapped onto the teacher's 1024 hidden
    assert result.details["loss"]["hints"]
    training = result.details["training"]
    assert training["lr_source"] == "LR range test" and 1e-5 <= training["lr"] <= 1e-3  # a transformer's rates
    fidelity = result.details["fidelity"]
    if result.modified:  # the honest outcome either way: better, or returned as it came with the note
        assert result.details["best_epoch"] > 0
        assert fidelity["after"]["cosine"] >= fidelity["before"]["cosine"] - 1e-4
    else:
        assert "returned unchanged" in notes or "is returned unchanged" in notes
        assert fidelity["after"] == fidelity["before"]


@pytest.mark.slow  # about 16 s: two runs
def test_gpt2_at_a_bad_rate_is_returned_unchanged(gpt2):
    model, data = gpt2
    student = _perturbed(model)  # a student that is its teacher would be skipped before training
    before = _weights(student)
    for val_split, where in ((0.25, "validation examples"), (0.0, "training examples (no validation data)")):
        result = distill(student, model, data, lr=1.0, val_split=val_split)
        assert result.details["loss"]["outputs"] == {"logits": "KL·T²"}  # per position over the vocabulary
        assert not result.modified and result.details["best_epoch"] == 0
        assert any("is returned unchanged" in n and where in n for n in result.notes), result.notes
        after = _weights(result.model)
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_hidden_state_and_attention_losses_run_and_are_reported(bert):
    teacher, student, data = bert
    result = distill(student, teacher, data, hints=[], hidden_loss=True, attention_loss="kl", lr=1e-4)
    loss = result.details["loss"]
    assert len(loss["hidden"]["pairs"]) == 5  # the embeddings and 4 layer outputs
    assert loss["attention"]["pairs"] == [f"softmax{s}=softmax{s}" for s in ("", "_1", "_2", "_3")]
    assert loss["attention"]["loss"].startswith("KL")
    rows = result.details["history"]
    assert all("val_loss_attention" in r and "val_loss_hidden" in r and "val_output_loss" in r for r in rows)
    assert rows[0]["val_loss_attention"] < 1e-3  # FFN pruning barely moves the first attention maps


def test_hint_on_a_batch_seq_hidden_pair_maps_the_last_axis(bert):
    teacher, student, _ = bert
    assert hints.feature_axis(student, "gelu_3", 3) == 2  # read by the FFN's second MatMul
    spec = hints.Spec("gelu_3", "gelu_3", "hint", auto=False)
    s, t = np.ones((4, SEQ, 720), np.float32), np.ones((4, SEQ, 1024), np.float32)
    (hint,) = hints.build([spec], student, ["gelu_3"], [s], ["gelu_3"], [t], [t], [])
    assert (hint.axis, hint.student_channels, hint.teacher_channels) == (2, 720, 1024)
    objective = Objective([OutputKind("y", "ignored")], temperature=1.0, alpha=0.0, labelled=False,
                          hints=[Hint("a", "b", 720, 1024, 1.0, axis=2, student_index=1, teacher_index=1)],
                          hint_weight=1.0)
    assert objective.project(0, torch.zeros(4, SEQ, 720)).shape == (4, SEQ, 1024)
    with pytest.raises(BadInput, match=r"differ in more than the feature axis \(2, hidden\)"):
        hints.build([spec], student, ["gelu_3"], [s[:, :8]], ["gelu_3"], [t], [t], [])


def test_layers_are_found_and_matched_uniformly(gpt2):
    model, _ = gpt2
    found = layers.find(model, "student")
    assert len(found.attention) == 4 and len(found.hidden) == 5
    assert layers.uniform(3, 5, skip_first=True) == [(0, 0), (1, 2), (2, 4)]
    assert layers.uniform(2, 4, skip_first=False) == [(0, 1), (1, 3)]
    assert layers.uniform(4, 4, skip_first=False) == [(k, k) for k in range(4)]


def test_feature_tensors_too_large_for_memory_are_refused_before_the_teacher_runs():
    maps = [np.zeros((2, 4, 128, 128), np.float32)]  # 256 KiB per example
    hints.check_memory(["softmax"], maps, 2, 1000)
    with pytest.raises(BadInput, match=r"the largest softmax\) for 100000 examples need 24\.4 GiB"):
        hints.check_memory(["softmax"], maps, 2, 100_000)
