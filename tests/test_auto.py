"""``mcomp auto``: the space file, the noise-aware front, and the command end to end on the digits
CNN with a small, fast space (structured prune rates + optimize): outputs, resume, a budget no
trial meets, and bad input answered with one line and nothing written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import auto_workers
import pytest
from clirun import mcomp_argv, run_mcomp, snapshot

from mcomp.auto import front as fronts
from mcomp.auto import hooks
from mcomp.auto import space as spaces
from mcomp.errors import BadInput, ConfigError

FAST_SPACE = """\
steps:
  prune:
    method: structured
    rate: [0.25, 0.5, 0.75]
  optimize: {level: basic}
"""
METRIC = """\
import numpy as np

def top1(outputs, labels):
    return float(np.mean(outputs["logits"].argmax(-1) == labels))
"""
DIGITS_ARGS = ("builtin:digits", "--data", "builtin:digits-train", "--eval", "builtin:digits-eval", "--runs", "5")


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# -- the space file ----------------------------------------------------------------------------------

def test_default_space_loads_and_samples_pipelines():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spaces.default_space()
    assert [name for name, _ in space.steps] == ["prune", "distill", "quantize", "optimize"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        steps = space.sample(study.ask())
        assert steps[-1][0] == "optimize"
        for name, options in steps:
            if name == "prune" and options["method"] == "merge":  # conditional options are not sampled for merge
                assert "allocation" not in options and "importance" not in options
            if name == "quantize" and options["mode"] == "dynamic":
                assert "calibration" not in options


@pytest.mark.parametrize("text, message", [
    ("steps:\n  prnue: {rate: 0.5}\n", r"space.yaml:2: unknown pass 'prnue' \(valid: .*prune"),
    ("steps:\n  prune:\n    rat: [0.1, 0.2]\n", r"space.yaml:3: steps.prune: unknown option 'rat' \(valid: enabled, method"),
    ("steps:\n  prune:\n    rate: {low: 0.1, high: 1.5}\n", r"space.yaml:3: steps.prune.rate: 1.5: Input should be less than 1"),
    ("steps:\n  quantize:\n    mode: [static, int3]\n", r"space.yaml:3: steps.quantize.mode: 'int3'"),
    ("steps:\n  prune:\n    rate: {low: 0.1}\n", r"space.yaml:3: steps.prune.rate: a range is \{low: X, high: Y\}"),
    ("steps:\n  prune:\n    importance: {choices: [l1], when: {method: structured}}\n",
     r"when: 'method' is not an option listed before it"),
    ("stepz: {}\n", r"space.yaml:1: a space file is a mapping with 'steps'"),
])
def test_space_file_errors_name_the_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        spaces.load_space(_space(tmp_path, text))


# -- the front -------------------------------------------------------------------------------------

def test_latency_inside_the_noise_band_is_a_tie_won_on_quality():
    fast_worse = fronts.Point(1, loss=0.008, objective=0.60, feasible=True)
    slower_better = fronts.Point(2, loss=0.002, objective=0.63, feasible=True)
    clearly_slower = fronts.Point(3, loss=0.001, objective=0.90, feasible=True)
    over = fronts.Point(4, loss=0.05, objective=0.30, feasible=False)
    points = [fast_worse, slower_better, clearly_slower, over]
    # with a 10 % band, 0.60 and 0.63 are the same speed: the better quality wins and dominates
    assert fronts.choose(points, band=0.10) == slower_better
    assert fast_worse not in fronts.front(points, band=0.10)
    # with no band (sizes, MACs) the lower objective wins
    assert fronts.choose(points, band=0.0) == fast_worse
    assert {p.number for p in fronts.front(points, band=0.0)} == {1, 2, 3, 4}
    assert fronts.choose([over], band=0.0) is None
    assert fronts.closest([over, clearly_slower], n=1) == [clearly_slower]


def test_latency_ties_go_to_quality_then_fewer_macs_then_fewer_steps_and_a_busy_machine_does_not_tie_everything():
    unchanged = fronts.Point(1, loss=0.0, objective=0.97, feasible=True, macs=1.0)
    pruned = fronts.Point(2, loss=0.003, objective=0.40, feasible=True, macs=0.26)
    lighter = fronts.Point(3, loss=0.004, objective=0.42, feasible=True, macs=0.12)
    # a busy machine measured ±90 %: capped, so the unchanged model does not win a "tie" on quality
    band = fronts.band_of([0.9, 0.91, 0.88], "latency")
    assert band == fronts.MAX_BAND
    assert fronts.choose([unchanged, pruned, lighter], band) == pruned  # tied on latency: the better quality
    as_good = fronts.Point(4, loss=0.003, objective=0.43, feasible=True, macs=0.12)
    assert fronts.choose([unchanged, pruned, lighter, as_good], band) == as_good  # and quality: fewer MACs
    # the same model by a longer pipeline (a prune that cut nothing, then optimize): the shorter one
    longer = fronts.Point(5, loss=0.0, objective=0.97, feasible=True, size=1.0, steps=3)
    shorter = fronts.Point(6, loss=0.0, objective=0.98, feasible=True, size=1.0, steps=1)
    assert fronts.choose([longer, shorter], band) == shorter
    assert fronts.band_of([0.9], "size") == 0.0
    # two trials, each ±2 % against the input in its own run, differ by up to √2 of that
    assert fronts.band_of([0.02, 0.02, 0.03], "latency") == pytest.approx(0.02 * 2 ** 0.5)


def test_tie_band_is_the_uncertainty_of_a_median_ratio():
    from mcomp.auto.trial import tie_band

    floor = {"median": 1.01, "p10": 0.8, "p90": 1.4}
    assert tie_band(floor, runs=36) == pytest.approx(max(0.01, 0.3 / 6))
    assert tie_band({"median": 1.2, "p10": 1.0, "p90": 1.3}, runs=100) == pytest.approx(0.2)
    assert tie_band(None, runs=30) is None


def test_a_distillation_clearly_worse_than_every_trial_within_budget_is_stopped():
    import optuna

    from mcomp.auto import study as studies
    from mcomp.auto.trial import Settings, Stopped

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for curve in ([0.80, 0.90, 0.95, 0.97], [0.70, 0.88, 0.94, 0.96], [0.75, 0.85, 0.93, 0.95]):
        t = study.ask()
        t.set_user_attr("feasible", True)
        t.set_user_attr("curve", curve)
        study.tell(t, 0.5)
    settings = Settings(model="m", train="t", evaluation=None, folder="f", max_drop=0.01)
    keeps_up = hooks.stopper(studies.finished(study), study.ask(), settings)
    for value in (0.72, 0.86, 0.93, 0.95):  # within a point of the slowest in-budget curve: runs on
        keeps_up({"epoch": 1, "val_accuracy": value})
    lags = hooks.stopper(studies.finished(study), study.ask(), settings)
    lags({"val_accuracy": 0.5})
    lags({"val_accuracy": 0.6})  # epochs 1-2 are never judged (warm-up)
    with pytest.raises(Stopped, match="epoch 3: validation accuracy 70.00% is below every trial within budget"):
        lags({"val_accuracy": 0.7})
    # without an accuracy budget (fidelity), or without labels, nothing is judged
    by_fidelity = Settings(model="m", train="t", evaluation=None, folder="f", min_fidelity=0.99)
    assert hooks.stopper(studies.finished(study), study.ask(), by_fidelity) is None
    lags_no_labels = hooks.stopper(studies.finished(study), study.ask(), settings)
    lags_no_labels({"val_loss": 9.0})
    lags_no_labels({"val_loss": 9.0})
    lags_no_labels({"val_loss": 9.0})


def test_a_failed_trial_is_told_to_the_sampler_as_infeasible(monkeypatch, tmp_path):
    """TPE leaves FAIL trials out of its model; a failing region would be drawn again and again."""
    import optuna
    from optuna.samplers._tpe.sampler import _split_trials

    from mcomp.auto import search as searches
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")

    class OneStep:
        def sample(self, trial):
            trial.suggest_float("rate", 0.1, 0.9)
            return [("prune", {"rate": 0.5})]

    def broken(*args, **kwargs):
        raise ValueError("a pass error")

    monkeypatch.setattr(trials, "run", broken)
    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    event = studies._one(study, study.ask(), settings, OneStep())
    assert event["state"] == "failed" and "a pass error" in event["reason"]
    (t,) = study.get_trials(deepcopy=False)
    assert t.state == optuna.trial.TrialState.PRUNED and t.constraints == {"budget": studies.FAILED_VIOLATION}
    assert searches._row(t)["state"] == "failed" and studies._counted(study) == 1
    below, above = _split_trials(study, study.get_trials(deepcopy=False), n_below=1)
    assert [x.number for x in below + above] == [0]  # in the sampler's model (a FAIL trial is in neither)


def test_a_trial_past_the_deadline_stops_before_its_next_step(tmp_path):
    """Not only distillation's epochs: a trial whose prune ends after the deadline does not go on to
    its next pass."""
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="builtin:digits", train="builtin:digits-train",
                               evaluation="builtin:digits-eval", folder=str(tmp_path), max_drop=0.01, runs=5)
    seen = []

    def before(step: str) -> None:
        seen.append(step)
        hooks.step_hook(time.time() + (-1 if step == "optimize" else 60))(step)  # the deadline passes mid-trial

    steps = [("prune", {"method": "structured", "rate": 0.5}), ("optimize", {"level": "basic"})]
    with pytest.raises(trials.Stopped, match="stopped before optimize: the search's time budget ran out"):
        trials.run(settings, steps, str(tmp_path / "trial.onnx"), cache=False, before_step=before)
    assert seen == ["prune", "optimize"] and not (tmp_path / "trial.onnx").exists()
    assert hooks.step_hook(None) is None


def test_a_pass_past_the_deadline_stops_where_it_is_even_inside_onnxruntimes_quantizer(tmp_path):
    """A pass that runs minutes is stopped at its next progress report once the budget is spent, not
    after it: here in the middle of static calibration, which onnxruntime's quantizer drives, and
    whose failures the quantize pass catches (any ``Exception``) to retry nodes in float. The clock
    is not taken for such a failure: the trial stops, nothing is written."""
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="builtin:digits", train="builtin:digits-train",
                               evaluation="builtin:digits-eval", folder=str(tmp_path), max_drop=0.01, runs=5)
    seen = []

    def during(description: str) -> None:
        seen.append(description)
        late = description.startswith("quantize: calibration") and len(seen) > 1
        hooks.pass_hook(time.time() + (-1 if late else 60))(description)

    steps = [("quantize", {"mode": "static", "latency_guard": False}), ("optimize", {"level": "basic"})]
    with pytest.raises(trials.OutOfTime, match="stopped in quantize: the search's time budget ran out"):
        trials.run(settings, steps, str(tmp_path / "trial.onnx"), cache=False, during_step=during)
    assert any(d.startswith("quantize: calibration") for d in seen) and not any("optimize" in d for d in seen)
    assert not (tmp_path / "trial.onnx").exists()
    assert hooks.pass_hook(None) is None


def test_a_distillation_takes_a_share_of_the_time_left_and_its_trial_ends_with_a_model(tmp_path):
    """Given the search's clock, a trial's distillation trains what fits in half the time left, not all
    its epochs: the trial is measured instead of stopped at the deadline. The budget is then part of
    the trial's steps (what --save-pipeline writes) and of the step cache's key: the chosen trial's
    re-measurement finds every step there, and a trial without that budget does not take its result."""
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="builtin:digits", train="builtin:digits-train",
                               evaluation="builtin:digits-eval", folder=str(tmp_path), max_drop=0.01, runs=3)
    steps = [("prune", {"method": "structured", "rate": 0.5}), ("distill", {"epochs": 400, "lr": 0.01}),
             ("optimize", {"level": "basic"})]
    measured, doc = trials.run(settings, steps, str(tmp_path / "a.onnx"), step_time=hooks.step_time(time.time() + 8))
    distill = doc["steps"][1]
    assert distill["time_bound"] and distill["options"]["time_budget"] <= 4, distill["options"]
    assert distill["changes"]["time"]["epochs_run"] < 400 and measured.loss is not None
    ran = trials.as_run(steps, doc)
    assert ran[1] == ("distill", {"epochs": 400, "lr": 0.01, "time_budget": distill["options"]["time_budget"]})
    assert ran[0] == steps[0] and ran[2] == steps[2]
    again, _ = trials.run(settings, ran, str(tmp_path / "b.onnx"), cache=True)
    assert again.cached_steps == 3

    def stop(step: str) -> None:
        raise trials.Stopped(step)

    with pytest.raises(trials.Stopped, match="^distill$"):  # the prune is cached; the budgeted result is not its own
        trials.run(settings, steps[:2], str(tmp_path / "c.onnx"), before_step=stop)
    assert hooks.step_time(None) is None


def test_a_saved_pipeline_replays_the_allocation_it_measured_instead_of_measuring_again():
    from mcomp.auto.search import _replayable
    from mcomp.passes.prune import Prune

    steps = [("prune", {"method": "structured", "rate": 0.5, "allocation": "sensitivity", "allocation_cost": "latency"}),
             ("optimize", {"level": "basic"})]
    run_doc = {"steps": [{"pass": "prune", "changes": {"group_rates": {"conv1.weight": 0.25, "conv2.weight": 0.0}}},
                         {"pass": "optimize", "changes": {}}]}
    replay = _replayable(steps, run_doc)
    assert replay == [("prune", {"method": "structured", "rate": 0.5,
                                 "group_rates": {"conv1.weight": 0.25, "conv2.weight": 0.0}}),
                      ("optimize", {"level": "basic"})]
    Prune.Config(**replay[0][1])  # a valid prune step
    assert _replayable([("prune", {"method": "structured", "rate": 0.5})], run_doc)[0][1] == {
        "method": "structured", "rate": 0.5}  # a uniform cut is replayed as it is
    declined = {"steps": [{"pass": "quantize", "modified": False}, {"pass": "optimize", "modified": True}]}
    assert _replayable([("quantize", {"mode": "dynamic"}), ("optimize", {"level": "basic"})], declined) == [
        ("optimize", {"level": "basic"})]  # a step that left the model unchanged here is not replayed


def test_a_size_search_quantizes_to_int8_without_the_latency_guard():
    """Asked for the smallest model, int8 is not declined for running no faster; a guard the space
    sets is kept, and weight-only keeps its slowdown bound; other objectives keep the guard."""
    from mcomp.auto.trial import for_objective

    p, o = ("prune", {"rate": 0.5}), ("optimize", {"level": "basic"})
    static, default_mode = ("quantize", {"mode": "static"}), ("quantize", {})
    assert for_objective([p, static, o], "size") == [p, ("quantize", {"mode": "static", "latency_guard": False}), o]
    assert for_objective([default_mode], "size") == [("quantize", {"latency_guard": False})]  # static by default
    assert for_objective([("quantize", {"mode": "dynamic", "latency_guard": True})], "size") == [
        ("quantize", {"mode": "dynamic", "latency_guard": True})]
    assert for_objective([("quantize", {"mode": "weight-only"})], "size") == [("quantize", {"mode": "weight-only"})]
    for objective in ("latency", "macs"):
        assert for_objective([p, static, o], objective) == [p, static, o]


def test_a_pass_that_cannot_run_on_the_model_is_left_out_of_the_trials_after(tmp_path):
    """A sequence model whose state output is the whole sequence's cannot be distilled example by
    example, whatever distill's options: the first trial fails with that reason, and the trials
    after it run without distill instead of failing the same way (silero-vad's sequence model: 4
    failed trials of 28)."""
    import numpy as np
    import onnx
    from onnx import helper as oh, numpy_helper as nh

    f = onnx.TensorProto.FLOAT
    w = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"]),
                           oh.make_node("ReduceMean", ["y"], ["m"], keepdims=1),
                           oh.make_node("Mul", ["h", "m"], ["hn"])], "seq",
                          [oh.make_tensor_value_info("x", f, ["T", 4]), oh.make_tensor_value_info("h", f, [1, 1, 4])],
                          [oh.make_tensor_value_info("y", f, ["T", 4]), oh.make_tensor_value_info("hn", f, [1, 1, 4])],
                          [nh.from_array(w, "w")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(4, 32, 4)).astype(np.float32),
             h=rng.normal(size=(4, 1, 1, 4)).astype(np.float32))
    space = _space(tmp_path, "steps:\n  prune: {method: magnitude, rate: [0.2, 0.4, 0.6]}\n"
                             "  distill: {epochs: 1, lr: [0.01, 0.02]}\n  optimize: {level: basic}\n")
    res = run_mcomp("auto", "m.onnx", "--data", "d.npz", "--min-fidelity", "0.1", "--trials", "4", "--space", space,
                    "--runs", "5", "-o", "best.onnx", "--report", "auto.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads((tmp_path / "auto.json").read_text())
    failed = [t for t in doc["trials"] if t["state"] == "failed"]
    assert len(failed) == 1 and "output 'hn' does not follow the examples" in failed[0]["error"], doc["trials"]
    later = [t for t in doc["trials"] if t["number"] > failed[0]["number"] and t["repeat_of"] is None]
    assert len(later) == 3 and all([s[0] for s in t["steps"]] == ["prune", "optimize"] for t in later), later
    assert "does not follow the examples" in doc["study"]["left_out"]["distill"]
    assert "distill left out of the trials after it failed for a reason no option changes" in res.stderr


def test_a_distillation_with_nothing_to_win_back_is_left_out_of_a_trial():
    from mcomp.auto import search as searches
    from mcomp.auto.trial import without_idle_distill

    d, p, q, o = ("distill", {"epochs": 10}), ("prune", {"rate": 0.5}), ("quantize", {"mode": "static"}), ("optimize", {})
    assert without_idle_distill([d, q, o]) == [q, o]  # the student would be the input itself
    assert without_idle_distill([p, d, q, o]) == [p, d, q, o]
    assert without_idle_distill([q, d, o]) == [q, d, o]  # a quantized student has rounding to win back
    anchors = searches._anchors(spaces.default_space())
    assert not any(a.get("distill.enabled") and not a.get("prune.enabled") and not a.get("quantize.enabled")
                   for a in anchors)


def test_the_anchors_start_with_what_can_hold_the_budget():
    """A heavy model's search gets a few trials: quantize alone (which bounds its own loss) runs
    before prune alone (half the channels, nothing to win them back), then the recipes."""
    from mcomp.auto import search as searches

    anchors = searches._anchors(spaces.default_space())
    enabled = [tuple(name for name in ("prune", "distill", "quantize") if a.get(f"{name}.enabled")) for a in anchors]
    # optimize is always on in the default space: it runs alone first (it loses nothing)
    assert enabled[:4] == [(), ("quantize",), ("prune",), ("prune", "distill", "quantize")], enabled
    assert all(a[f"{name}.enabled"] is False for name in ("prune", "distill", "quantize") for a in anchors[:1])


# -- the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search of three trials, then the same command again with --trials 4 (resumes): the space holds
    three pipelines, so the second run draws only repeats and stops after ``REPEATS_TO_STOP`` of them."""
    folder = tmp_path_factory.mktemp("auto")
    (folder / "space.yaml").write_text(FAST_SPACE)
    (folder / "metric.py").write_text(METRIC)
    args = (*DIGITS_ARGS, "--max-drop", "1", "--space", "space.yaml", "-o", "best.onnx", "--metric", "metric.py:top1",
            "--save-pipeline", "best.yaml", "--report-html", "best.html")
    first = run_mcomp("auto", *args, "--trials", "3", cwd=folder)
    first_report = json.loads((folder / "best.report.json").read_text()) if first.returncode == 0 else None
    again = run_mcomp("auto", *args, "--trials", "4", cwd=folder)
    return folder, first, first_report, again


def test_auto_writes_the_chosen_model_its_pipeline_and_reports(searched):
    folder, first, doc, again = searched
    assert first.returncode == 0, first.explain()
    assert doc["study"]["trials"] == 3 and doc["study"]["resumed"] == 0
    assert {t["state"] for t in doc["trials"]} == {"complete"}
    chosen = doc["chosen"]
    assert chosen["number"] in doc["front"] and chosen["feasible"]
    assert chosen["remeasured"]["macs_ratio"] == pytest.approx(chosen["measured"]["macs_ratio"])  # deterministic
    final = doc.get("finalists")  # trials within 25 % of the fastest were timed again beside it, if any
    if final:
        assert final["chosen"] == chosen["number"] and {t["number"] for t in final["trials"]} >= {chosen["number"]}
        assert "finalists timed side by side with the input in one run" in first.stderr
    for t in doc["trials"]:  # every trial: its pipeline, its figures
        assert t["steps"][0][0] == "prune" and t["steps"][-1][0] == "optimize"
        assert 0 < t["measured"]["macs_ratio"] < 1 and t["measured"]["latency_ratio"] > 0
    page = (folder / "best.html").read_text()
    assert 'data-plot="pareto"' in page and "<svg" in page and "http" not in page.split("<svg", 1)[0]
    assert "trial" in first.stderr and "wrote best.onnx" in first.stderr
    # a chosen model no faster than the input beyond its noise is said to be, wherever the result is shown;
    # the files on disk are the second (resumed) run's, whose chosen model may differ: compared with its own
    assert again.returncode == 0, again.explain()
    last = json.loads((folder / "best.report.json").read_text())
    said = bool(last["warnings"])
    assert said == ("not better than the input" in again.stderr) == ("not better than the input" in page)
    # every figure names the shapes it was measured at, and what one timed run fed
    assert "measured at image 1×1×8×8 (from data); latency timed per run of image 1×1×8×8" in first.stderr
    assert "Measured at image 1×1×8×8" in page
    accuracy = chosen["run_report"]["accuracy"]  # the user's metric scored the outputs
    assert accuracy["metric"].endswith("metric.py:top1") and 0.3 < accuracy["reference"] <= 1


def test_a_metric_that_fails_is_one_line(tmp_path):
    from mcomp.metric import Metric

    (tmp_path / "m.py").write_text("def text(outputs, labels):\n    return 'high'\n"
                                   "def boom(outputs, labels):\n    raise KeyError('softmax')\n")
    import numpy as np

    from mcomp.data import Dataset

    data = Dataset([{"x": np.zeros((2, 3))}], [np.array([1, 0])])
    outputs = [[np.zeros((2, 4))]]
    with pytest.raises(BadInput, match=r"--metric .*m.py:text: returned str, expected a number"):
        Metric(f"{tmp_path}/m.py:text")(outputs, ["y"], data)
    with pytest.raises(BadInput, match=r"raised KeyError: 'softmax'"):
        Metric(f"{tmp_path}/m.py:boom")(outputs, ["y"], data)
    with pytest.raises(BadInput, match=r"has no attribute 'nope'"):
        Metric(f"{tmp_path}/m.py:nope")


def test_saved_pipeline_reproduces_the_chosen_model(searched):
    folder, first, _, resumed = searched
    assert first.returncode == 0 and resumed.returncode == 0, (first.explain(), resumed.explain())
    again = run_mcomp("run", "best.yaml", "-o", "again.onnx", "--json", cwd=folder)
    assert again.returncode == 0, again.explain()
    rerun = json.loads(again.out)
    # the report written with best.yaml (the resumed run's): among trials tied within the latency noise,
    # the first run and the resumed one may choose differently (prune 0.5 vs 0.25 under a loaded CI)
    chosen = json.loads((folder / "best.report.json").read_text())["chosen"]["run_report"]
    assert rerun["output"]["macs"] == chosen["output"]["macs"]
    assert rerun["output"]["parameters"] == chosen["output"]["parameters"]
    assert rerun["accuracy"]["candidate"] == pytest.approx(chosen["accuracy"]["candidate"])


def test_a_second_run_resumes_the_study_and_reuses_cached_steps(searched):
    folder, first, _, again = searched
    assert again.returncode == 0, again.explain()
    doc = json.loads((folder / "best.report.json").read_text())
    assert doc["study"]["resumed"] == 3 and doc["study"]["trials"] == 3 and doc["study"]["ran_now"] == 0
    # three rates, all run: a pipeline drawn again is answered from the first run of it and not counted,
    # ten in a row end the search, and the re-measure of the chosen one takes its steps from the step cache
    repeats = [t for t in doc["trials"] if t["repeat_of"] is not None]
    assert len(repeats) == doc["study"]["repeats"] >= 10
    assert all(t["measured"] == doc["trials"][t["repeat_of"]]["measured"] for t in repeats)
    assert doc["study"]["exhausted"].startswith("the sampler drew 10 pipelines in a row that had run already")
    assert "repeats of a pipeline already run, not counted" in again.stderr and "looks exhausted" in again.stderr
    assert doc["chosen"]["remeasured"]["cached_steps"] == 2


def test_no_trial_within_budget_exits_3_and_writes_no_model(tmp_path):
    _space(tmp_path, "steps:\n  prune: {method: structured, rate: 0.75}\n")
    res = run_mcomp("auto", *DIGITS_ARGS, "--max-drop", "0.001", "--space", "space.yaml", "--trials", "1",
                    "-o", "best.onnx", "--json", cwd=tmp_path)
    assert res.returncode == 3, res.explain()
    assert not (tmp_path / "best.onnx").exists() and not (tmp_path / "best.report.json").exists()
    assert "no trial met the budget" in res.err_lines[-1] and "closest: trial 0" in res.err_lines[-1]
    drop = json.loads(res.out)["closest"][0]["measured"]["loss"] * 100
    # in the budget's units, as the progress lines give it: points dropped, not a bare fraction
    assert f"(prune) drop {drop:.2f} pts, latency ×" in res.err_lines[-1], res.explain()
    assert any(line.startswith(f"  closest: trial 0: drop {drop:.2f} pts, latency ×") for line in res.err_lines)
    doc = json.loads(res.out)  # --json: the study's report on stdout, as a failed gate's is
    assert doc["chosen"] is None and doc["closest"][0]["number"] == 0


@pytest.mark.parametrize("extra, message", [
    (("--space", "bad.yaml"), "bad.yaml:2: unknown pass 'prnue'"),
    (("--max-drop", "0.01", "--eval", "unlabelled.npz"), "--max-drop needs labelled evaluation data"),
    (("--max-drop", "0.01", "--metric", "zero.py:zero"), "--max-drop: the input scores 0 on the evaluation data"),
    (("--storage", "sqlite:////nonexistent-dir/x/y.db"), "--storage sqlite:////nonexistent-dir/x/y.db: cannot open"),
    (("--storage", "sqlite:///:memory:"), "an in-memory SQLite study is empty again in every connection"),
    (("--time-budget", "0.01s"), "is shorter than one trial"),
    ((), "give one budget"),
    (("--max-drop", "0.01", "--min-fidelity", "0.9"), "give one budget"),
    (("--time-budget", "soon"), "--time-budget 'soon'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, extra, message):
    import numpy as np

    (tmp_path / "bad.yaml").write_text("steps:\n  prnue: {rate: 0.5}\n")
    (tmp_path / "zero.py").write_text("def zero(outputs, labels):\n    return 0.0\n")  # reads nothing
    _space(tmp_path, FAST_SPACE)
    with np.load(os.path.join(os.path.dirname(__import__("mcomp").__file__), "assets", "digits_eval.npz")) as z:
        np.savez(tmp_path / "unlabelled.npz", image=z["image"][:32])
    budget = () if any(a in extra for a in ("--max-drop", "--min-fidelity")) or not extra else ("--max-drop", "0.5")
    if "--space" not in extra:
        extra = (*extra, "--space", "space.yaml")
    args = ["builtin:digits", "--data", "builtin:digits-train", *extra, *budget, "--trials", "1", "-o", "best.onnx"]
    if "--eval" not in extra:
        args += ["--eval", "builtin:digits-eval"]
    before = snapshot(tmp_path)
    res = run_mcomp("auto", *args, cwd=tmp_path)
    assert res.returncode == 2, res.explain()
    assert len(res.err_lines) == 1 and message in res.err_lines[0], res.explain()
    created = set(snapshot(tmp_path)) - set(before)
    assert not {p for p in created if not p.startswith("best.auto")}, created  # the study's scratch folder at most


def _running(db) -> bool:
    """Whether the study in ``db`` has a trial running now that has its process id (read with sqlite,
    as another process would). Killed between a trial's ``ask`` and its pid (milliseconds apart), the
    trial is another process's until ``ORPHANED_AFTER``, and the resume counted 0 interrupted (1 CI run)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            return conn.execute("SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                                "WHERE t.state = 'RUNNING' AND a.key = 'pid'").fetchone()[0] > 0
    except sqlite3.Error:  # locked or not made yet: ask again
        return False


@pytest.mark.slow
def test_kill_9_mid_trial_then_resume_counts_the_finished_trials(tmp_path):
    """kill -9 while a trial runs: no model, no report; the next run resumes the finished trials and
    marks the one that was cut as interrupted."""
    import optuna

    # a range, not two choices: a repeated pipeline is answered at once, and six trials of two choices
    # could all finish in the two seconds before the kill
    _space(tmp_path, "steps:\n  prune: {method: structured, rate: {low: 0.25, high: 0.5}}\n"
                     "  distill: {epochs: 5, lr: 0.01}\n")
    args = (*DIGITS_ARGS, "--max-drop", "1", "--space", "space.yaml", "-o", "best.onnx")
    proc = subprocess.Popen(mcomp_argv("auto", *args, "--trials", "6"), cwd=tmp_path, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    db = tmp_path / "best.study.db"
    finished = 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:  # wait for one finished trial
        line = proc.stderr.readline()
        finished += line.startswith("trial ")
        if finished >= 1 and db.exists():
            break
    while proc.poll() is None and time.monotonic() < deadline and not _running(db):  # and one running: a fixed
        time.sleep(0.05)  # wait of 2 s sometimes killed between trials (1 failure in 4 CI runs, interrupted 0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished >= 1
    assert not (tmp_path / "best.onnx").exists() and not (tmp_path / "best.report.json").exists()
    res = run_mcomp("auto", *args, "--trials", "3", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads((tmp_path / "best.report.json").read_text())
    assert doc["study"]["interrupted"] == 1 and doc["study"]["resumed"] >= 1
    states = [t.state for t in optuna.load_study(study_name=doc["study"]["name"], storage=f"sqlite:///{db}").trials]
    assert optuna.trial.TrialState.RUNNING not in states


@pytest.mark.browser
def test_chromium_draws_the_pareto_chart(searched, tmp_path):
    """The search's page in a real browser: the chart is drawn (many more inked pixels than the
    same page without it), with no console errors."""
    import re

    from test_report_html import _chromium, _inked, _render

    folder, first, _, _ = searched
    assert first.returncode == 0, first.explain()
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH; run .ci/browser to install one")
    page = (folder / "best.html").read_text()
    bare = re.sub(r'<figure class="plot".*?</figure>', "", page, flags=re.S)
    shots = {}
    for name, html in (("full", page), ("bare", bare)):
        (tmp_path / f"{name}.html").write_text(html, encoding="utf-8")
        done = _render(browser, tmp_path / f"{name}.html", tmp_path / f"{name}.png")
        assert done.returncode == 0, done.stderr[-2000:]
        assert not [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        shots[name] = _inked(tmp_path / f"{name}.png")
    # the chart (axes, labels, legend, a few markers) inks ~10,000 pixels at this size; blank draws none
    assert shots["full"] > shots["bare"] + 4_000, shots


def test_the_chosen_point_is_on_the_front_though_a_tie_is_not_transitive():
    """The fastest (×0.50) ties with a more accurate ×0.55, which is chosen; ×0.58 is not tied with
    the fastest but is with the chosen one, and more accurate still: it dominates the chosen point,
    which the front keeps all the same."""
    fastest = fronts.Point(0, loss=0.005, objective=0.50, feasible=True)
    chosen = fronts.Point(1, loss=0.001, objective=0.55, feasible=True)
    slower = fronts.Point(2, loss=0.0005, objective=0.58, feasible=True)
    points, band = [fastest, chosen, slower], 0.15
    assert fronts.choose(points, band) is chosen
    assert fronts.dominates(slower, chosen, band) and chosen not in fronts.front(points, band)
    assert {p.number for p in fronts.front(points, band, keep=chosen)} == {1, 2}


def test_the_sampler_ranks_trials_within_budget_by_the_objective_and_learns_nothing_from_repeats(monkeypatch, tmp_path):
    """The question is the fastest model within budget: a faster trial that loses more, still within
    budget, is in TPE's good set ahead of a lossless slow one; one over budget is not; a repeat is
    told as pruned (it brings nothing new), and still reported as the complete trial it repeats."""
    import optuna
    from optuna.samplers._tpe.sampler import _split_trials

    from mcomp.auto import search as searches
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    plan = studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 4, None)
    study, _ = studies.load_or_create(plan, settings)
    outcomes = {0.3: (0.0, 0.97), 0.5: (0.008, 0.6), 0.7: (0.03, 0.4)}  # rate -> (loss, latency ratio)

    class OneStep:
        def sample(self, trial):
            return [("prune", {"rate": trial.suggest_categorical("rate", [0.3, 0.5, 0.7])})]

    def run(settings, steps, output, **kwargs):
        loss, ratio = outcomes[steps[0][1]["rate"]]
        return trials.Measured(loss=loss, objective=ratio, accuracy=None, accuracy_input=None, fidelity=None,
                               latency_ratio=ratio, latency_band=None, latency_ms=None, size_ratio=None,
                               macs_ratio=None, parameters_ratio=None, seconds=0.1), {}

    monkeypatch.setattr(trials, "run", run)
    for rate in (0.3, 0.5, 0.7, 0.5):
        study.enqueue_trial({"rate": rate})
        studies._one(study, study.ask(), settings, OneStep())
    rows = [searches._row(t) for t in study.get_trials(deepcopy=False)]
    assert [r["state"] for r in rows] == ["complete"] * 4 and rows[3]["repeat_of"] == 1
    assert study.trials[3].state == optuna.trial.TrialState.PRUNED
    below, _ = _split_trials(study, study.get_trials(deepcopy=False), n_below=1)
    assert [t.number for t in below] == [1]  # within budget and fastest; the lossless trial 0 is not preferred


def test_repeats_do_not_count_against_trials_and_ten_in_a_row_end_a_worker(monkeypatch, tmp_path):
    """A space of two pipelines and --trials 5: the two are run, each draw after them is answered from
    them, uncounted, and after ``REPEATS_TO_STOP`` in a row the worker stops, saying so."""
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    plan = studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 5, None, total=5)
    studies.load_or_create(plan, settings)
    ran = []

    class TwoRates:
        def sample(self, trial):
            return [("prune", {"rate": trial.suggest_categorical("rate", [0.3, 0.5])})]

    def run(settings, steps, output, **kwargs):
        ran.append(steps[0][1]["rate"])
        return trials.Measured(loss=0.0, objective=0.5, accuracy=None, accuracy_input=None, fidelity=None,
                               latency_ratio=0.5, latency_band=None, latency_ms=None, size_ratio=None,
                               macs_ratio=None, parameters_ratio=None, seconds=0.1), {}

    monkeypatch.setattr(trials, "run", run)
    events = []
    assert studies.work(plan, settings, TwoRates(), report=events.append) == (2, True)
    assert sorted(ran) == [0.3, 0.5]
    assert [e["ran"] for e in events if e.get("repeat_of") is not None][-studies.REPEATS_TO_STOP:] == [2] * 10
    study = studies.load(plan, settings)
    assert studies._counted(study) == 2 and sum(not studies.is_repeat(t) for t in study.trials) == 2
    assert all(studies.is_repeat(t) for t in study.trials[-studies.REPEATS_TO_STOP:])


def test_a_trial_whose_leading_steps_changed_nothing_is_the_trial_without_them(monkeypatch, tmp_path):
    """A prune that found nothing to cut on the input finds nothing again: a later trial drawing it, then
    a distillation (skipped for it), then an earlier trial's quantization, is answered from that trial."""
    from mcomp.auto import search as searches
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    plan = studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 4, None)
    study, _ = studies.load_or_create(plan, settings)
    prune, distill = ("prune", {"rate": 0.5}), ("distill", {"epochs": 10})
    quantize, optimize = ("quantize", {"mode": "static"}), ("optimize", {"level": "basic"})
    ran = []

    def run(settings, steps, output, **kwargs):
        ran.append([name for name, _ in steps])
        records = [{"modified": name != "prune"} for name, _ in steps]  # the prune cuts nothing
        return trials.Measured(loss=0.0, objective=0.7, accuracy=None, accuracy_input=None, fidelity=None,
                               latency_ratio=0.7, latency_band=None, latency_ms=None, size_ratio=None,
                               macs_ratio=None, parameters_ratio=None, seconds=0.1), {"steps": records}

    class Drawn:
        def __init__(self, steps):
            self.steps = steps

        def sample(self, trial):
            return self.steps

    monkeypatch.setattr(trials, "run", run)
    for steps in ([quantize, optimize], [prune, optimize], [prune, distill, quantize, optimize],
                  [prune, quantize, distill, optimize]):
        studies._one(study, study.ask(), settings, Drawn(steps))
    rows = [searches._row(t) for t in study.get_trials(deepcopy=False)]
    assert ran == [["quantize", "optimize"], ["prune", "optimize"], ["prune", "quantize", "distill", "optimize"]]
    assert [r.get("repeat_of") for r in rows] == [None, None, 0, None]


def test_a_repeated_trial_is_not_a_second_point_of_the_front():
    from mcomp.auto import trial as trials
    from mcomp.cli.auto_output import Printer

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=".", max_drop=0.01)
    printer = Printer(settings, 3, None, enabled=False)
    measured = {"loss": 0.001, "objective": 0.7, "accuracy": 0.98}
    first = {"number": 0, "state": "complete", "feasible": True, "measured": measured, "seconds": 1.0}
    printer.trial(first)
    repeat = dict(first, number=1, repeat_of=0)
    printer.trial(repeat)
    assert printer._line(repeat).endswith("front 1 · 1 s"), printer._line(repeat)


def test_of_two_processes_opening_a_new_study_exactly_one_created_it(tmp_path):
    """Only the creator queues the first trials: two processes that both found the study empty
    queued them twice, and the second copy was left waiting once the study's total was reached."""
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    plan = studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 4, None)
    first, created_first = studies.load_or_create(plan, settings)
    second, created_second = studies.load_or_create(plan, settings)
    assert (created_first, created_second) == (True, False)
    assert first._study_id == second._study_id


def test_a_running_trial_is_reaped_only_once_its_process_is_known_dead(tmp_path):
    """A trial between another process's ``ask`` and its pid attribute is not failed under it (it was,
    and that process's ``tell`` then raised); one whose process has ended is marked interrupted."""
    import subprocess
    import sys

    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), max_drop=0.01)
    study, _ = studies.load_or_create(studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 4, None), settings)
    being_started = study.ask()
    being_started.set_user_attr("host", studies.HOST)
    ended = study.ask()
    ended.set_user_attr("host", studies.HOST)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ended.set_user_attr("pid", int(done.stdout))
    assert studies.reap_interrupted(study) == 1
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {being_started.number: "RUNNING", ended.number: "FAIL"}
    # killed between its ask and its pid: no process will tell it, and it counted against --trials for good
    orphan = study.ask()
    started = next(t.datetime_start for t in study.get_trials(deepcopy=False) if t.number == orphan.number)
    assert studies.reap_interrupted(study, now=started + studies.ORPHANED_AFTER / 2) == 0
    assert studies.reap_interrupted(study, now=started + 2 * studies.ORPHANED_AFTER) == 2  # being_started too
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {being_started.number: "FAIL", ended.number: "FAIL", orphan.number: "FAIL"}


def test_the_time_budget_counts_from_the_start_and_keeps_back_the_final_measurement(monkeypatch, tmp_path):
    """``--time-budget`` is the command's wall time: the input's measurement is in it, and the finalists'
    re-measurement (about twice as long) is kept back; a budget without room for one trial between
    them is refused before any trial runs."""
    import time

    from mcomp.auto import search as searches
    from mcomp.auto import trial as trials
    from mcomp.errors import BadInput

    measure_seconds = 10.0
    baseline = trials.Measured(loss=0.0, objective=1.0, accuracy=None, accuracy_input=None, fidelity=1.0,
                               latency_ratio=1.0, latency_band=None, latency_ms=None, size_ratio=1.0,
                               macs_ratio=1.0, parameters_ratio=1.0, seconds=measure_seconds)
    monkeypatch.setattr(searches, "_measure_input", lambda settings: (baseline, {"input": {"sha256": "0"}}))
    seen = {}

    class Stop(Exception):
        pass

    def workers(plan, settings, space, remaining, deadline, workers, on_trial):
        seen["deadline"] = deadline
        raise Stop

    monkeypatch.setattr(searches, "_run_workers", workers)
    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), min_fidelity=0.9)
    request = searches.Request(settings, tmp_path / "best.onnx", time_budget=100.0)
    before = time.time()
    with pytest.raises(Stop):
        searches.search(request)
    after = time.time()
    # not 100 s after the input's measurement: 100 s after the call, less the finalists' measurement
    kept = searches.FINAL_SHARE * measure_seconds
    assert before + 100 - kept <= seen["deadline"] <= after + 100 - kept
    with pytest.raises(BadInput, match="shorter than one trial"):
        searches.search(searches.Request(settings, tmp_path / "best.onnx", time_budget=35.0))


def test_workers_on_a_sqlite_study_ask_for_trials_one_at_a_time(tmp_path):
    """SQLite ignores SELECT … FOR UPDATE, so two workers could claim the same queued trial; while one
    counts the study and asks, another process cannot take the lock on the study's file."""
    import subprocess
    import sys

    from mcomp.auto import study as studies

    db = tmp_path / "study.db"
    db.write_bytes(b"")
    probe = ("import fcntl, sys\nwith open(sys.argv[1], 'rb') as fh:\n    try:\n"
             "        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
             "        sys.exit(3)\n")
    with studies._one_asker(f"sqlite:///{db}"):
        assert subprocess.run([sys.executable, "-c", probe, str(db)]).returncode == 3  # held: the other waits
    assert subprocess.run([sys.executable, "-c", probe, str(db)]).returncode == 0  # released
    with studies._one_asker("postgresql+psycopg://u@h/db"):  # a server locks the row itself: no file
        pass


def test_a_chosen_model_no_better_than_the_input_is_said_to_be():
    """The input is a point of the search too: a chosen model re-measured inside the input's A/A band
    (PP-OCR rec, 10 minutes: ×0.985) is warned about, in the terminal, the JSON and the HTML page;
    one faster beyond the band is not. Size and MACs are exact: anything under ×1 is a gain."""
    from mcomp.auto import search as searches
    from mcomp.auto import trial as trials

    def measured(objective, band):
        return trials.Measured(loss=0.0, objective=objective, accuracy=None, accuracy_input=None, fidelity=1.0,
                               latency_ratio=objective, latency_band=band, latency_ms=1.0, size_ratio=1.0,
                               macs_ratio=1.0, parameters_ratio=1.0, seconds=1.0)

    tie = searches.no_gain("latency", measured(0.985, 0.04))
    assert len(tie) == 1 and "×0.985" in tie[0]["message"] and "±0.040" in tie[0]["message"]
    assert searches.no_gain("latency", measured(0.90, 0.04)) == []
    assert searches.no_gain("size", measured(0.999, 0.04)) == []
    assert "on size" in searches.no_gain("size", measured(1.0, None))[0]["message"]


def _killed_search(tmp_path, target, total: int):
    from mcomp.auto import search as searches
    from mcomp.auto import study as studies
    from mcomp.auto import trial as trials

    settings = trials.Settings(model="m", train="t", evaluation=None, folder=str(tmp_path), min_fidelity=0.9)
    plan = studies.Plan("s", f"sqlite:///{tmp_path / 'study.db'}", 0, None, total=total)
    studies.load_or_create(plan, settings)
    seen: list[dict] = []
    ran = lambda: searches._run_workers(plan, settings, auto_workers.OneStep(), total, None, 1,  # noqa: E731
                                        seen.append, target=target)
    return ran, seen, lambda: [searches._row(t) for t in studies.load(plan, settings).get_trials(deepcopy=False)]


def test_a_trial_killed_with_its_process_is_failed_and_the_search_goes_on(tmp_path):
    """A distilling trial past the machine's memory (SLANet at batch 64) was killed by the kernel, and
    the whole search with it. Trials run in a worker process: the killed trial is recorded as failed,
    with the signal, told to the sampler as a failure is, and a new worker runs the rest."""
    import optuna

    run, seen, rows = _killed_search(tmp_path, auto_workers.killed, total=3)
    assert run() == (3, None, False)
    states = [r["state"] for r in rows()]
    assert states == ["failed", "complete", "complete"]
    reason = "its worker process was killed by signal 9 (SIGKILL: the kernel's out-of-memory killer, most likely)"
    assert rows()[0]["error"].startswith(reason)
    assert [e["state"] for e in seen] == ["failed", "complete", "complete"] and seen[0]["reason"].startswith(reason)
    failed = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials[0]
    assert failed.state == optuna.trial.TrialState.PRUNED
    assert [v for k, v in failed.system_attrs.items() if "constraint" in k] == [1e6]


@pytest.mark.slow  # ~5 s: four worker processes
def test_a_search_whose_workers_are_killed_again_and_again_ends_with_the_trials_it_has(tmp_path, monkeypatch):
    from mcomp.auto import search as searches

    monkeypatch.setattr(searches, "MAX_RESTARTS", 1)
    run, _, rows = _killed_search(tmp_path, auto_workers.killed_always, total=5)
    ran, cut_short, _ = run()
    assert ran == 2 and cut_short.startswith("the search was cut short: worker processes ended 2 times without "
                                             "finishing a trial (the last killed by signal 9")
    assert [r["state"] for r in rows()] == ["failed", "failed"]


def test_a_long_trial_says_what_it_is_doing_at_most_every_interval(monkeypatch):

    clock = [100.0]
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: clock[0])
    sent: list[dict] = []
    progress = hooks.activity(7, sent.append, started=100.0)
    for t, description in [(5, "step 1/2: prune"), (29, "prune: importance"), (31, "step 2/2: distill"),
                           (40, "distill: epoch 1/20"), (62, "distill: epoch 2/20"),
                           (95, "quantize: per-layer sensitivity")]:
        clock[0] = 100.0 + t
        progress(description, 6 if "sensitivity" in description else 1, 22 if "sensitivity" in description else 20)
    assert [(e["number"], e["activity"], e["seconds"]) for e in sent] == [
        (7, "step 2/2: distill", 31.0), (7, "distill: epoch 2/20", 62.0), (7, "quantize: per-layer sensitivity 6/22", 95.0)]
