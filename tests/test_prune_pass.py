"""The Prune pass's structured methods on the embedded digits CNN, end to end through the pass."""

import numpy as np
import pytest

from helpers import run
from mcomp import data, model as model_io
from mcomp.embedded import builtin_path
from mcomp.pass_base import Context
from mcomp.passes.prune import Prune
from mcomp.summary import macs, tensor_counts


@pytest.fixture(scope="module")
def digits():
    loaded = model_io.load(builtin_path("digits"))
    return loaded.model, data.load(builtin_path("digits-eval"), loaded.model)


@pytest.mark.parametrize("method, importance", [("structured", "l1"), ("structured", "l2"), ("structured", "bn"),
                                                ("structured", "taylor"), ("structured", "random"), ("merge", "l1")])
def test_structured_methods_shrink_tensors_and_keep_the_interface(digits, method, importance):
    model, ds = digits
    result = Prune(method=method, importance=importance, rate=0.5)(model_io.copy(model), Context(data={"training": ds}))
    before, after = tensor_counts(model)[0].parameters, tensor_counts(result.model)[0].parameters
    assert after < 0.5 * before
    out = run(result.model, ds.feeds[0])[0]
    assert out.shape == run(model, ds.feeds[0])[0].shape
    assert result.metrics["requested"]["method"] == method
    assert any(g["channels_after"] < g["channels_before"] for g in result.metrics["groups"])
    assert "=>" in result.metrics["groups"][0]["chain"]


def test_macs_target_is_reached(digits):
    model, ds = digits
    result = Prune(method="structured", target="macs", rate=0.5)(model_io.copy(model), Context())
    removed = 1 - macs(result.model)[0] / macs(model)[0]
    assert 0.45 <= removed <= 0.6


def test_merge_changes_outputs_less_than_l1(digits):
    model, ds = digits
    reference = np.concatenate([run(model, f)[0] for f in ds.feeds])

    def error(method):
        pruned = Prune(method=method, rate=0.3)(model_io.copy(model), Context()).model
        out = np.concatenate([run(pruned, f)[0] for f in ds.feeds])
        return np.linalg.norm(out - reference) / np.linalg.norm(reference)

    assert error("merge") < error("structured")
