"""A regression whose cosine hides that the model broke: Microsoft's PLCMOS (``realmodels`` "plcmos").

PLCMOS scores speech from 1 to 5, one rank-0 number per clip. Structured pruning at any rate cut it
to a model that reads about the same score for every clip, where the input's scores vary clip by clip:
cosine 0.996 over the clips, because every score is near the same value. Centered on the input model's
mean over the examples, the cosine is about 0: the report says so and warns.
"""

import json

import numpy as np
import pytest

import realmodels
from clirun import gated, run_mcomp
from mcomp import evaluate
from mcomp.kernels import fidelity as fk


@pytest.fixture(scope="module")
def plcmos(tmp_path_factory):
    return realmodels.with_data("plcmos", tmp_path_factory.mktemp("plcmos"), "speech.npz")


def test_a_cut_that_flattens_the_scores_is_warned_of_though_its_cosine_holds(plcmos):
    path, folder = plcmos
    done = run_mcomp("prune", path, "--method", "structured", "--rate", "0.5", "--data", "speech.npz",
                     "-o", "cut.onnx", "--report", "cut.json", cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "cut.json").read_text())
    out = doc["fidelity"]["outputs"]["plcmos"]
    assert out["cosine"] > 0.99 and out["centered_cosine"] < 0.5, out
    assert doc["fidelity"]["summary"]["centered_cosine"] == out["centered_cosine"]
    assert any("centered" in w["message"] and "plcmos" in w["message"] for w in doc["warnings"]), doc["warnings"]
    assert "centered" in done.stderr


def test_an_exact_rewrite_keeps_the_centered_cosine_and_gives_no_such_warning(plcmos):
    path, folder = plcmos
    done = run_mcomp("optimize", path, "--data", "speech.npz", "-o", "opt.onnx", "--report", "opt.json", cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "opt.json").read_text())
    assert doc["fidelity"]["outputs"]["plcmos"]["centered_cosine"] > 0.999
    assert not any("centered" in w["message"] for w in doc["warnings"])


def test_the_centered_cosine_sees_an_offset_and_a_scale_the_cosine_does_not(monkeypatch):
    rng = np.random.default_rng(0)
    ref = (4.0 + 0.1 * rng.standard_normal((16, 3))).astype(np.float32)
    flat = np.full_like(ref, 3.2)  # the same score for every example
    shifted = ref + 0.3  # follows every example, off by a constant
    assert fk.cosine(ref, flat) > 0.99 and abs(fk.centered_cosine(ref, flat)) < 1e-6
    assert fk.cosine(ref, shifted) > 0.999 and fk.centered_cosine(ref, shifted) < 0.5
    assert fk.centered_cosine(ref, ref) == pytest.approx(1.0)
    assert fk.centered_cosine(ref, ref + 1e-3 * rng.standard_normal(ref.shape)) > 0.99
    assert fk.centered_cosine(ref[:1], ref[:1]) is None and fk.centered_cosine(ref, ref[:, :2]) is None
    noisy = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)
    whole = fk.centered_cosine(ref, noisy)
    monkeypatch.setattr(fk, "CHUNK", 2)  # one example (3 elements) at a time
    assert fk.centered_cosine(ref, noisy) == pytest.approx(whole, rel=1e-12)


def test_a_fidelity_gate_fails_the_cut_on_its_centered_cosine(plcmos):
    """A gate (and ``mcomp auto --min-fidelity``, which reads the same figure) at 0.95 passed this cut on
    its cosine, 0.996; ``measure.fidelity: whole`` keeps the plain cosine."""
    path, folder = plcmos
    done = gated(path, folder, "speech.npz", "prune: {method: structured, rate: 0.3}", 0.95)
    assert done["slice"].returncode == 3 and "fidelity (centered cosine) 0.0" in done["slice"].stderr, done["slice"]
    assert done["whole"].returncode == 0, done["whole"]
    assert not (folder / "gated-slice.onnx").exists() and (folder / "gated-whole.onnx").exists()


def test_the_default_figure_is_the_centered_cosine_where_it_is_lower():
    summary = {"cosine": 0.996, "slice_cosine": 0.99, "centered_cosine": 0.002}
    assert evaluate.figure_named(summary) == (0.002, "centered cosine")
    assert evaluate.figure_named(summary, "whole") == (0.996, "cosine")
    assert evaluate.figure_named({**summary, "centered_cosine": 0.999}) == (0.99, "worst-slice cosine")
    assert evaluate.figure_named({**summary, "centered_cosine": None}) == (0.99, "worst-slice cosine")
