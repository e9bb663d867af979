"""An output that passes its input on: RivaGAN's watermark encoder (``realmodels`` "rivagan-encoder").

The encoder returns its frame plus a watermark of about 1.6 % of the frame's RMS. Every figure made on
the output reads mostly the frame passed on: pruned by 80 % of its weights, its output kept cosine
0.9997 (centered 0.9997) while the watermark it added read 0.61. The report gives the cosine of what the
two models add to the frame (``residual``), the default fidelity figure takes it, and a warning names it.
"""

import json

import numpy as np
import pytest

import realmodels
from clirun import gated, run_mcomp
from mcomp import evaluate, residuals
from mcomp.kernels import fidelity as fk


@pytest.fixture(scope="module")
def rivagan(tmp_path_factory):
    return realmodels.with_data("rivagan-encoder", tmp_path_factory.mktemp("rivagan"), "frames.npz")


def test_a_prune_that_changes_the_watermark_is_seen_though_the_frame_holds_the_cosine(rivagan):
    path, folder = rivagan
    done = run_mcomp("prune", path, "--rate", "0.8", "--data", "frames.npz", "-o", "cut.onnx", "--report", "cut.json",
                     cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "cut.json").read_text())
    out = doc["fidelity"]["outputs"]["output"]
    assert out["cosine"] > 0.99 and out["residual"]["input"] == "frame", out
    assert out["residual"]["passes_through"] > 0.99 and out["residual"]["cosine"] < 0.9, out
    assert doc["fidelity"]["summary"]["residual_cosine"] == out["residual"]["cosine"]
    assert any("passes input frame on" in w["message"] for w in doc["warnings"]), doc["warnings"]
    assert "residual" in done.stderr


def test_a_fidelity_gate_fails_the_cut_on_its_residual_cosine(rivagan):
    """A gate (and ``mcomp auto --min-fidelity``, which reads the same figure) at 0.95 passed this cut on its
    cosine, 0.9997; ``measure.fidelity: whole`` keeps the plain cosine."""
    path, folder = rivagan
    done = gated(path, folder, "frames.npz", "prune: {rate: 0.8}", 0.95)
    assert done["slice"].returncode == 3 and "fidelity (residual cosine) 0." in done["slice"].stderr, done["slice"]
    assert done["whole"].returncode == 0, done["whole"]
    assert not (folder / "gated-slice.onnx").exists() and (folder / "gated-whole.onnx").exists()


def test_an_exact_rewrite_keeps_what_the_model_adds(rivagan):
    path, folder = rivagan
    done = run_mcomp("optimize", path, "--data", "frames.npz", "-o", "opt.onnx", "--report", "opt.json", cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "opt.json").read_text())
    assert doc["fidelity"]["outputs"]["output"]["residual"]["cosine"] > 0.999
    assert not any("passes input" in w["message"] for w in doc["warnings"])


def test_an_input_is_passed_through_only_where_the_output_is_mostly_it():
    rng = np.random.default_rng(0)
    frame = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    mark = 0.02 * rng.standard_normal(frame.shape).astype(np.float32)
    assert residuals.passed_through(frame + mark, {"frame": frame, "other": -frame})[0] == "frame"
    assert residuals.passed_through(rng.standard_normal(frame.shape).astype(np.float32), {"frame": frame}) is None
    assert residuals.passed_through(frame[:, :1], {"frame": frame}) is None  # another shape
    assert fk.residual_cosine(frame + mark, frame + mark, frame) == pytest.approx(1.0)
    assert fk.residual_cosine(frame + mark, frame - mark, frame) == pytest.approx(-1.0)
    assert fk.cosine(frame + mark, frame - mark) > 0.99  # the output's cosine sees none of it
    assert fk.residual_cosine(frame, frame, frame) == 1.0  # nothing added by either
    summary = {"cosine": 0.9997, "slice_cosine": 0.9997, "centered_cosine": 0.9996, "residual_cosine": 0.61}
    assert evaluate.figure_named(summary) == (0.61, "residual cosine")
    assert evaluate.figure_named(summary, "whole") == (0.9997, "cosine")


def test_quantize_budget_bounds_what_the_model_adds(rivagan):
    """Quantize's budget (``Score.strict``) reads the residual cosine as the report does: a budget held on the
    output's cosine alone could return a model its own report's figure read below the floor."""
    import onnx

    from mcomp.data import Dataset
    from mcomp.passes.quantize import budget as bud

    path, folder = rivagan
    assert run_mcomp("prune", path, "--rate", "0.8", "--data", "frames.npz", "-o", "budget-cut.onnx",
                     "--threads", "1", cwd=folder).returncode == 0
    frames = np.load(folder / "frames.npz")
    feeds = [{"frame": frames["frame"][i], "data": frames["data"][i]} for i in range(len(frames["frame"]))]
    evaluator = bud.Evaluator(path.read_bytes(), Dataset(feeds), ["CPUExecutionProvider"], 1)
    score = evaluator.score(onnx.load(folder / "budget-cut.onnx"))
    assert score.slice > 0.99 and score.residual < 0.9 and score.strict == score.residual, score
    assert not bud.Budget.default("slice").holds(score, None)
    assert bud.Budget.default("whole").holds(score, None)


def test_distillation_reports_what_the_student_adds_against_the_teacher(rivagan):
    """A cut encoder distilled against the input read "cosine to the teacher 0.9999 → 0.9999" whatever its
    training did to the watermark: the residual cosine to the teacher is in the summary and the details."""
    path, folder = rivagan
    assert run_mcomp("prune", path, "--method", "structured", "--rate", "0.5", "--data", "frames.npz",
                     "-o", "cut5.onnx", cwd=folder).returncode == 0
    done = run_mcomp("distill", "cut5.onnx", "--teacher", path, "--data", "frames.npz", "--epochs", "2",
                     "-o", "student.onnx", "--report", "student.json", cwd=folder)
    assert done.returncode == 0, done
    doc = json.loads((folder / "student.json").read_text())
    figures = doc["steps"][0]["changes"]["fidelity"]
    assert figures["before"]["residual_cosine"] < 0.95 and figures["after"]["residual_cosine"] is not None, figures
    assert f"residual {figures['before']['residual_cosine']:.4f} → " in doc["steps"][0]["summary"]
    # its loss weighs what it adds: by the output's own std, 1e-4 of a feature hint's (0.72 → 0.80 in 15 epochs
    # on 64 frames; 0.72 → 0.86 so)
    assert doc["steps"][0]["changes"]["loss"]["outputs"]["output"].endswith("of what it adds to input frame")


def test_a_pass_through_output_is_standardized_by_what_it_adds():
    from mcomp.passes.distill.objective import OutputKind, output_scales

    rng = np.random.default_rng(0)
    frame = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    mark = 0.01 * rng.standard_normal(frame.shape).astype(np.float32)
    kind = [OutputKind("output", "regression")]
    plain, added = output_scales(kind, [frame + mark]), output_scales(kind, [frame + mark], {"frame": frame})
    assert plain[0].added_to is None and float(plain[0].std.max()) > 0.5
    assert added[0].added_to == "frame" and float(added[0].std.max()) == pytest.approx(0.01, rel=0.2)
    assert output_scales(kind, [frame + mark], {"frame": frame[:, :1]})[0].added_to is None  # another shape
