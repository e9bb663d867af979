"""The accuracy budget's fit: how many layer groups go back to float, and how many candidates it scores
to find out (each a quantizer build plus a scoring run: 9 s a trial on PP-OCRv4 rec).

The candidates here are a model of the scores, not models: group k's damage adds to the loss of the
whole output and, more steeply, of its worst slice, as on PP-OCRv4 rec (whole 0.973, worst slice 0.852
with every group quantized).
"""

import pytest

from mcomp.passes.quantize import budget as bud

DAMAGES = [0.16, 0.14, 0.13, 0.10, 0.098, 0.093, 0.09, 0.089, 0.077, 0.043, 0.043, 2e-4, 1e-4, 1e-4]


class Scores:
    """A candidate's score from the groups left quantized: whole-output loss = 0.026 × their damage share,
    worst-slice loss = 0.15 × it; ``scored`` lists the float-group counts in the order they were scored."""

    def __init__(self):
        self.scored: list[int] = []
        self.reference_accuracy = None

    def score(self, k: int) -> bud.Score:
        self.scored.append(k)
        share = sum(DAMAGES[k:]) / sum(DAMAGES)
        whole, worst = 1 - 0.026 * share, 1 - 0.15 * share
        return bud.Score(whole, None, None, cosine=whole, slice=worst)


def fit(budget: bud.Budget, damages=DAMAGES) -> tuple[bud.Fit, list[int]]:
    scores = Scores()
    groups = [[f"g{i}"] for i in range(len(DAMAGES))]
    found = bud.fit(lambda excluded: len(excluded), scores, budget, groups, set(), damages=damages)
    return found, scores.scored


def fewest_holding(budget: bud.Budget) -> int:
    scores = Scores()
    return next(k for k in range(len(DAMAGES) + 1) if budget.holds(scores.score(k), None))


def test_the_default_budget_starts_from_the_count_the_damages_predict():
    """Both floors of the default budget (whole ≥ 0.98, worst slice ≥ 0.95) are predicted; the slice floor
    needs more groups here, and the fit lands on the fewest that hold in a few trials, not the 1, 2, 4 …
    and bisection an accuracy budget takes."""
    budget = bud.Budget.default("slice")
    found, scored = fit(budget)
    assert found.holds and len(found.exclude) == fewest_holding(budget) == 6
    assert scored[0] == 0 and len(scored) <= 4
    _, blind = fit(budget, damages=None)  # without damages: the doubling and the bisection
    assert len(blind) > len(scored)
    # with labels the default also bounds the accuracy drop; the floors are predicted all the same
    labelled, scored_labelled = fit(bud.Budget.default("slice", examples=512))
    assert labelled.exclude == found.exclude and scored_labelled == scored


@pytest.mark.parametrize("budget", [bud.Budget(min_fidelity=0.99, mode="whole"),
                                    bud.Budget(min_fidelity=0.99, mode="whole", min_slice=0.9)])
def test_every_cosine_floor_is_met_by_the_count_predicted(budget):
    found, scored = fit(budget)
    assert found.holds and budget.holds(Scores().score(len(found.exclude)), None)
    assert len(scored) <= 4


def test_a_floor_already_held_asks_for_no_more_groups_than_the_other():
    budget = bud.Budget(min_fidelity=0.99, mode="whole", min_slice=0.5)  # the slice floor holds at once
    measured = Scores().score(0)
    assert bud.predict(measured, budget, DAMAGES) == bud.predict(measured, bud.Budget(min_fidelity=0.99,
                                                                                       mode="whole"), DAMAGES)


@pytest.mark.parametrize("budget", [bud.Budget(max_drop=0.01), bud.Budget(min_fidelity=0.99, metric="top1")])
def test_budgets_damages_cannot_predict_are_not_predicted(budget):
    assert bud.predict(Scores().score(0), budget, DAMAGES) is None


def test_the_budget_bounds_the_centered_cosine_where_it_is_lower_than_the_worst_slice():
    """The report's figure (and the gates and mcomp auto reading it) is the centered cosine where lower: a
    budget held on the worst slice alone returned models that figure then read below the floor."""
    flat = bud.Score(0.99, None, None, cosine=0.996, slice=0.99, centered=0.3)
    assert flat.strict == 0.3 and not bud.Budget(min_fidelity=0.95).holds(flat, None)
    assert bud.Budget(min_fidelity=0.95, mode="whole").holds(flat, None)  # the plain cosine, as asked
    assert not bud.Budget.default("slice").holds(flat, None)  # the default's worst-slice floor reads it too
    assert bud.Budget(min_fidelity=0.95).holds(bud.Score(0.99, None, None, cosine=0.996, slice=0.99), None)
    assert "worst-slice (and centered, residual) cosine ≥ 0.95" in bud.Budget.default("slice").describe()


def test_the_lowest_centered_cosine_skips_outputs_that_barely_vary():
    import numpy as np

    from mcomp import evaluate

    rng = np.random.default_rng(0)
    varying = rng.standard_normal((8, 3)).astype(np.float32)
    still = np.full((8, 2), 5.0, np.float32)
    ref = [[varying], [still]]
    means = evaluate.centers(ref)
    assert means[0] is not None and means[1] is None
    broken = [[np.full_like(varying, float(varying.mean()))], [still + 1.0]]
    assert abs(evaluate.lowest_centered(ref, broken, means)) < 1e-6
    assert evaluate.lowest_centered(ref, ref, means) == pytest.approx(1.0)
    assert evaluate.lowest_centered(ref, broken, [None, None]) is None


def test_the_summary_gives_the_centered_and_residual_cosines_the_budget_bounds():
    from mcomp.passes.quantize.record import fidelity_text

    assert fidelity_text({"cosine": 0.999997, "residual_cosine": 0.996581}) == "cosine 0.999997, residual 0.996581"
    assert fidelity_text({"cosine": 0.99, "centered_cosine": 0.95}).endswith(", centered 0.95")
    assert fidelity_text({"cosine": 0.99}) == "cosine 0.99"
