"""``mcomp auto``'s final choice, made again from the finalists timed side by side (``auto.finalists``).

Each trial's latency comes from its own run against the input, minutes apart; the search's fastest
figure is partly luck. The finalists are built again and timed in one interleaved run; these tests
replace the runs (``trials.run``) with fixed figures, so the decision is checked on any machine.
"""

from pathlib import Path

import pytest

from mcomp.auto import finalists
from mcomp.auto import trial as trials

SETTINGS = trials.Settings(model="m.onnx", train="t.npz", evaluation=None, folder="", max_drop=0.01)


def _row(number, objective, *, feasible=True, loss=0.002, state="complete", repeat_of=None):
    return {"number": number, "state": state, "feasible": feasible, "repeat_of": repeat_of,
            "steps": [["prune", {"rate": number / 100}], ["optimize", {"level": "basic"}]],
            "measured": {"objective": objective, "loss": loss}}


def _report(ratio: float | None, side_by_side: dict | None = None, drop: float = 0.002, spread: float = 0.01) -> dict:
    """A run report as ``trials.measure`` reads it (and ``final_choice`` the side-by-side entries); ``spread``:
    the A/A rounds' p10–p90 half-width."""
    floor = {"median": 1.0, "p10": 1 - spread, "p90": 1 + spread}
    latency = None if ratio is None else {"ratio": ratio, "noise_floor": floor, "candidate": {"p50_ms": ratio}}
    if side_by_side:
        latency["side_by_side"] = {label: {"ratio": r, "noise_floor": floor, "candidate": {"p50_ms": r}}
                                   for label, r in side_by_side.items()}
    return {"accuracy": {"known": True, "drop": drop, "candidate": 0.98, "reference": 0.982},
            "fidelity": {"summary": {"cosine": 0.99, "slice_cosine": 0.99}}, "latency": latency,
            "input": {"macs": 100, "parameters": 10}, "output": {"macs": 30, "parameters": 3}, "size_ratio": 0.3}


@pytest.fixture
def doc():
    rows = [_row(3, 0.40), _row(5, 0.44), _row(7, 0.45), _row(8, 0.46), _row(9, 0.60),
            _row(10, 0.30, feasible=False, loss=0.05), _row(11, 0.35, repeat_of=3), _row(12, 0.2, state="failed")]
    return {"objective": "latency", "trials": rows, "chosen": rows[0], "front": [3, 10]}


def test_the_rivals_are_the_next_fastest_within_budget_and_the_margin(doc):
    assert [t["number"] for t in finalists.rivals(doc)] == [5, 7]  # not 8 (three finalists), 9 (×1.5), 10, 11, 12
    assert finalists.rivals(dict(doc, objective="macs")) == []  # exact objectives are not timed again


def test_the_choice_is_made_again_on_the_side_by_side_ratios(doc, tmp_path, monkeypatch):
    """The search's fastest (trial 3, ×0.40 in its own run) reads ×0.52 beside the others; trial 5 reads ×0.45
    there, beyond the band: it is chosen, its model is the one returned, the others' files are removed."""
    calls = []

    def run(settings, steps, output, latency=True, side_by_side=()):
        calls.append((steps[0][1]["rate"], latency, [label for label, _ in side_by_side]))
        Path(output).write_bytes(b"model")
        if latency:
            doc_ = _report(0.52, {"trial 5": 0.45, "trial 7": 0.53})
        else:
            doc_ = _report(None)
        measured = trials.measure(settings, doc_, 1.0)
        measured.cached_steps = 2  # built from the step cache
        return measured, doc_

    monkeypatch.setattr(trials, "run", run)
    row, again, report, path = finalists.final_choice(SETTINGS, doc, tmp_path / "chosen.onnx", lambda *a: None)
    assert calls == [(0.05, False, []), (0.07, False, []), (0.03, True, ["trial 5", "trial 7"])]
    assert row["number"] == 5 and again.objective == pytest.approx(0.45) and report["latency"]["ratio"] == 0.45
    assert again.cached_steps == 2  # what building it again took from the cache, as the report says
    assert path == tmp_path / "finalist-5.onnx" and path.exists()
    assert not (tmp_path / "chosen.onnx").exists() and not (tmp_path / "finalist-7.onnx").exists()
    final = doc["finalists"]
    assert final["chosen"] == 5 and final["chosen_in_search"] == 3 and 5 in doc["front"]
    assert {t["number"]: t["side_by_side"] for t in final["trials"]} == {3: 0.52, 5: 0.45, 7: 0.53}
    assert "trial 5 ×0.450 (search ×0.440)" in finalists.described(final)
    assert "the search had chosen trial 3" in finalists.described(final)


def test_within_the_band_the_more_accurate_finalist_stays(doc, tmp_path, monkeypatch):
    """Side by side, trial 5 is 1 % faster than trial 3: inside the band, a tie, and trial 3 lost less."""
    def run(settings, steps, output, latency=True, side_by_side=()):
        Path(output).write_bytes(b"model")
        rate = steps[0][1]["rate"]
        if latency:
            doc_ = _report(0.50, {"trial 5": 0.495, "trial 7": 0.60}, drop=0.001, spread=0.1)
        else:
            doc_ = _report(None, drop=rate / 10)
        return trials.measure(settings, doc_, 1.0), doc_

    monkeypatch.setattr(trials, "run", run)
    row, *_ = finalists.final_choice(SETTINGS, doc, tmp_path / "chosen.onnx", lambda *a: None)
    assert row["number"] == 3 and doc["finalists"]["band"] > 0.01


def test_a_trial_is_scored_on_the_centered_cosine_where_it_is_lower():
    """A structured cut of PLCMOS read cosine 0.996 while answering every clip alike (centered 0.002): under
    --min-fidelity the search read it as within 0.99, as good as its input."""
    settings = trials.Settings(model="m.onnx", train="t.npz", evaluation=None, folder="", min_fidelity=0.99)
    doc_ = _report(0.5)
    doc_["fidelity"]["summary"] = {"cosine": 0.996, "slice_cosine": 0.996, "centered_cosine": 0.002}
    assert trials.measure(settings, doc_, 1.0).loss == pytest.approx(0.998)
    doc_["fidelity"]["summary"]["centered_cosine"] = 0.999
    assert trials.measure(settings, doc_, 1.0).loss == pytest.approx(0.004)
