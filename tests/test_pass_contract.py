"""The pass contract (design §3): needs follow from the config and are checked before any step
runs; results have typed fields; ``modified`` is true only when the model changed; the pipeline
copies the shared input only for a pass that works in place."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

import helpers
from mcomp import pipeline as pipeline_io
from mcomp.errors import BadInput
from mcomp.pass_base import Context, Pass, PassConfig, PassResult
from mcomp.passes.distill import Distill
from mcomp.passes.optimize import Optimize
from mcomp.passes.prune import Prune
from mcomp.passes.quantize import Quantize
from mcomp.pipeline_spec import load_text


def _pipeline(steps: str, data: str = ""):
    return load_text(f"model: does-not-exist.onnx\n{data}steps:\n{steps}", "pipe.yaml")


@pytest.mark.parametrize("steps, step, wanted", [
    ("  - optimize: {}\n  - quantize: {mode: static}\n", "step 2 (quantize)", "calibrat"),
    ("  - distill: {epochs: 1}\n", "step 1 (distill)", "trains"),
    ("  - prune: {method: taylor}\n", "step 1 (prune)", "gradients"),
    ("  - prune: {method: structured, importance: taylor}\n", "step 1 (prune)", "gradients"),
])
def test_missing_data_is_refused_before_anything_runs(steps, step, wanted):
    """The model path does not exist: the needs check must come first, or the error would be about the file."""
    with pytest.raises(BadInput) as raised:
        pipeline_io.execute(_pipeline(steps), pipeline_io.RunRequest())
    assert step in str(raised.value) and wanted in str(raised.value) and "--data" in str(raised.value)


def test_needs_follow_from_the_config():
    assert Quantize(mode="static").requires() and not Quantize(mode="dynamic").requires()
    assert not Quantize(mode="weight-only").requires() and not Quantize(mode="fp16").requires()
    assert Prune(method="taylor").requires() and not Prune(method="magnitude").requires()
    assert not Prune(method="structured", importance="l2").requires()
    assert Distill().requires()[0].roles == ("training",)
    assert not Optimize().requires()


def test_a_pass_called_directly_checks_its_needs_too():
    with pytest.raises(BadInput, match="needs data"):
        Quantize(mode="static")(helpers.conv_bn_relu(), Context())


def test_data_given_for_another_role_satisfies_a_need_listing_it():
    present = ["calibration"]
    assert not Prune(method="taylor").missing(present)
    assert Distill().missing(present)


def test_optimize_with_nothing_to_do_says_unmodified_and_returns_its_input():
    model = helpers.conv_bn_relu()
    first = Optimize(level="none")(model, Context())
    assert first.modified and first.model is not model and first.summary.startswith("nodes")
    again = Optimize(level="none")(first.model, Context())
    assert not again.modified and again.model is first.model
    assert isinstance(again.notes, list) and "stages" in again.details and again.seconds is not None


def test_prune_says_modified_only_when_weights_changed():
    model = helpers.conv_bn_relu()
    result = Prune(method="magnitude", rate=0.5, protect_ends=False)(model, Context())
    assert result.modified and "sparsity" in result.summary


class _Marks(Pass):
    """Test pass: adds one to every float initializer, in place."""

    name: ClassVar[str] = "marks"
    Config: ClassVar[type[PassConfig]] = PassConfig

    def call(self, model, ctx):
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype == np.float32:
                import onnx_ir as ir

                value.const_value = ir.tensor(array + 1, name=value.name)
        return PassResult(model, True, "marked")


def test_an_in_place_pass_gets_a_copy_and_the_reference_stays_as_loaded(monkeypatch, tmp_path):
    import onnx_ir as ir

    from mcomp import model as model_io

    path = tmp_path / "m.onnx"
    ir.save(helpers.conv_bn_relu(), path)
    from mcomp import registry

    monkeypatch.setattr(registry, "names", lambda: ["marks"])
    monkeypatch.setattr(registry, "get", lambda name: _Marks)
    pipe = load_text(f"model: {path}\nmeasure: {{latency: false}}\nsteps:\n  - marks: {{}}\n", "pipe.yaml")
    outcome = pipeline_io.execute(pipe, pipeline_io.RunRequest(output=str(tmp_path / "out.onnx")))
    before = model_io.load(str(path)).model
    ref = {k: v.const_value.numpy() for k, v in before.graph.initializers.items()}
    out = {k: v.const_value.numpy() for k, v in outcome.model.graph.initializers.items()}
    changed = [k for k in ref if ref[k].dtype == np.float32]
    assert changed and all(np.allclose(out[k], ref[k] + 1) for k in changed)
    assert outcome.report["fidelity"]["summary"]["cosine"] < 0.9999  # measured against the unmarked input
    assert outcome.report["steps"][0]["summary"] == "marked" and outcome.report["steps"][0]["modified"]
