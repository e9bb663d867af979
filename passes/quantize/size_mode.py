"""Weight-only quantization as a size mode: which (block size, accuracy level) setting is kept.

Users choose int4 for size and memory, so the setting is the smallest model within the fidelity
budget, then the fastest: blocks are tried largest first (a block of 128 stores a quarter of the
scales of a block of 32), each with its accuracy levels, most accurate first (when that one fails
the budget the block's others are not scored), and the first block with a level whose candidate
holds the budget is kept. Its levels that hold are then timed together against the input
by the flow's bound on the slowdown (``guard.bound``), which keeps the fastest. When no setting
holds, the most accurate candidate of the smallest block goes on to the flow's budget fit, which
sends the most sensitive layers back to float; where that model is beyond --max-slowdown, the fit is
made again at the most accurate setting within it, every setting timed whole (``flow._setting_for_fit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Choice:
    setting: tuple[int, int]  # (block size, accuracy level) now set on the scheme
    score: object  # budget.Score of that setting's candidate
    holding: dict[tuple[int, int], object] = field(default_factory=dict)  # settings of the block that hold → Score
    trials: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        block, level = self.setting
        return {"block_size": block, "accuracy_level": level, "held": bool(self.holding),
                "candidates": self.trials}


def label(setting: tuple[int, int]) -> str:
    return f"block {setting[0]}, accuracy level {setting[1]}"


def settle(scheme, build, evaluator, budget, excluded: set[str], progress=None) -> Choice:
    """Scores the scheme's settings (``scheme.settings()``, smallest model first) until a block holds
    ``budget``; leaves ``scheme.setting`` at the choice. ``build(excluded)`` builds at the scheme's setting."""
    from mcomp.passes.quantize.schemes.weight_only import inline_bytes

    report = progress or (lambda description, done, total: None)
    settings = scheme.settings()
    blocks = list(dict.fromkeys(b for b, _ in settings))
    trials, scored = [], {}
    for block in blocks:
        holding = {}
        for setting in (s for s in settings if s[0] == block):
            report("quantize: block size and accuracy level", len(trials), len(settings))
            scheme.setting = setting
            proto = build(excluded)
            score = scored[setting] = evaluator.score(proto)
            holds = budget.holds(score, evaluator.reference_accuracy)
            trials.append({"block_size": setting[0], "accuracy_level": setting[1], "model_bytes": inline_bytes(proto),
                           "fidelity": _r(score.fidelity), "cosine": _r(score.cosine), "holds": holds})
            if not holds and not holding:  # the block's most accurate level failed: its others would too
                break
            if holds:
                holding[setting] = score
        if holding:
            kept = list(holding)[-1]  # untimed: the last listed, the fast path (the flow's timing may change it)
            scheme.setting = kept
            return Choice(kept, holding[kept], holding, trials)
    last = [s for s in settings if s[0] == blocks[-1]]
    last = [s for s in last if s in scored]
    best = max(last, key=lambda s: scored[s].fidelity if scored[s].fidelity is not None else -2.0)
    scheme.setting = best
    return Choice(best, scored[best], {}, trials)


def _r(x):
    return None if x is None else round(float(x), 6)
