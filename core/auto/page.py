"""The report of ``mcomp auto`` as one self-contained HTML page: the Pareto chart (quality against
the objective, size as marker size, the budget line, the chosen point and the input marked), the
front, the chosen pipeline, and every trial with its state and reason. Same rules as the run
report's page (``report_html``): inline CSS and SVG, no script, everything escaped.
"""

from __future__ import annotations

from html import escape

from mcomp import report_plots
from mcomp.report import measured_at
from mcomp.report_html import STYLE, html_table, warnings_html


@report_plots.drawn
def pareto_figure(doc: dict):
    """Quality (accuracy, or fidelity) against the objective ratio for every completed trial."""
    trials = [t for t in doc["trials"] if t["state"] == "complete" and t["measured"]]
    if not trials:
        return None
    fig, (ax,) = report_plots.new_figure(7.5, 4.6)
    accuracy = doc["budget"]["kind"] == "max_drop"
    base = doc["input"].get("accuracy")

    def quality(m):
        if accuracy:
            return (m.get("accuracy") or 0) * 100
        return m.get("fidelity") if m.get("fidelity") is not None else 0

    front = set(doc["front"])
    chosen = (doc.get("chosen") or {}).get("number")
    for group, colour, label in ((False, report_plots.BEFORE, "over budget"), (True, report_plots.AFTER, "within budget")):
        pts = [t for t in trials if t["feasible"] == group]
        if pts:
            ax.scatter([t["measured"]["objective"] for t in pts], [quality(t["measured"]) for t in pts],
                       s=[20 + 180 * (t["measured"].get("size_ratio") or 1) for t in pts], c=colour, alpha=0.6,
                       edgecolors="none", label=label)
    line = sorted((t for t in trials if t["number"] in front), key=lambda t: t["measured"]["objective"])
    if line:
        ax.plot([t["measured"]["objective"] for t in line], [quality(t["measured"]) for t in line], "-",
                color=report_plots.AFTER, linewidth=1, label="Pareto front")
    for t in trials:
        if t["number"] == chosen:
            ax.scatter([t["measured"]["objective"]], [quality(t["measured"])], s=260, facecolors="none",
                       edgecolors=report_plots.FLOAT, linewidths=2, label=f"chosen (trial {chosen})")
    value = doc["budget"]["value"]
    if accuracy and base is not None:
        ax.scatter([1.0], [base * 100], marker="*", s=200, c="black", label="input")
        ax.axhline((base - value) * 100, color=report_plots.FLOAT, linestyle="--", linewidth=1,
                   label=f"budget: −{value * 100:g} pts")
        ax.set_ylabel("accuracy (%)")
    else:
        ax.scatter([1.0], [1.0], marker="*", s=200, c="black", label="input")
        ax.axhline(value, color=report_plots.FLOAT, linestyle="--", linewidth=1, label=f"budget: fidelity ≥ {value}")
        ax.set_ylabel("fidelity (worst-slice cosine)")
    ax.set_xlabel(f"{doc['objective']} (ratio to the input; lower is better)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{len(trials)} completed trials; marker size: model size")
    return "pareto", report_plots.to_svg(fig, "pareto")


def measured_on(doc: dict) -> str:
    """The shapes every trial's figures were measured at, and what one timed run fed: a latency ratio
    at batch 1 and one at a compute-bound batch are different answers."""
    feeds = doc.get("latency_feed_shapes") or {}
    timed = "; ".join(f"{name} {'×'.join(map(str, shape)) or 'scalar'}" for name, shape in feeds.items())
    return measured_at(doc.get("shapes") or {}) + (f"; latency timed per run of {timed}" if timed else "")


def _steps(steps) -> str:
    return " → ".join(f"{name} {_options(options)}" for name, options in steps)


def _options(options: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in options.items())


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ratio(value) -> str:
    return f"×{value:.3f}" if isinstance(value, (int, float)) else "–"


def to_html(doc: dict) -> str:
    figure = pareto_figure(doc)
    study, chosen = doc["study"], doc.get("chosen")
    kind, value = doc["budget"]["kind"], doc["budget"]["value"]
    budget = f"accuracy drop ≤ {value * 100:g} points" if kind == "max_drop" else f"fidelity ≥ {value}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mcomp auto: {escape(str(doc['input'].get('path')))}</title><style>{STYLE}</style></head><body>",
        "<h1>mcomp auto</h1>", f"<p><code>{escape(doc['command'])}</code></p>",
        f"<p>Input <code>{escape(str(doc['input'].get('path')))}</code>; objective {escape(doc['objective'])}; "
        f"budget {escape(budget)}. Study <code>{escape(study['name'])}</code> in <code>{escape(study['storage'])}</code>: "
        f"{study['trials']} trials ({study['resumed']} resumed, {study['complete']} complete, {study['stopped']} "
        f"stopped early, {study['failed']} failed{repeats_said(study)}). Latency ratios closer than "
        f"×{study['latency_tie_band']:.3f} (√2 × the trials' median A/A half-width: two ratios, each timed in "
        "its own run) count as ties.</p>",
    ]
    if study.get("exhausted"):
        parts.append(f"<p>{escape(study['exhausted'])}.</p>")
    parts.append(f"<p>Measured at {escape(measured_on(doc))}.</p>")
    if figure:
        parts.append(f'<figure class="plot" data-plot="pareto">{figure[1]}</figure>')
    from mcomp.auto.trial import loss_units

    units = loss_units((doc.get("budget") or {}).get("kind"))
    loss_title, loss = units.title, units.cell
    beside = "latency" if doc["objective"] == "size" else "size"  # the objective's column is not repeated
    if chosen:
        again = chosen.get("remeasured") or chosen["measured"]
        parts += ["<h2>Chosen</h2>", f"<p>Trial {chosen['number']}: <code>{escape(_steps(chosen['steps']))}</code></p>",
                  html_table(("", "search", "re-measured"), [
                      (f"{loss_title} (what the budget bounds)", loss(chosen["measured"]["loss"]), loss(again["loss"])),
                      (f"{doc['objective']} ratio", _ratio(chosen["measured"]["objective"]), _ratio(again["objective"])),
                      ("size ratio", _ratio(chosen["measured"].get("size_ratio")), _ratio(again.get("size_ratio"))),
                      ("MACs ratio", _ratio(chosen["measured"].get("macs_ratio")), _ratio(again.get("macs_ratio")))],
                      numeric=(1, 2))]
        if doc.get("finalists"):
            from mcomp.auto.finalists import described

            parts.append(f"<p>{escape(described(doc['finalists']))}.</p>")
        parts.append(warnings_html(doc))
    else:
        parts += ["<h2>No trial met the budget</h2>", "<p>Closest trials:</p>",
                  html_table(("trial", "steps", loss_title, doc["objective"]),
                         [(t["number"], _steps(t["steps"]), loss(t["measured"].get("loss")),
                           _ratio(t["measured"].get("objective"))) for t in doc.get("closest", [])])]
    rows = []
    for t in doc["trials"]:
        m = t["measured"]
        rows.append((t["number"], t["state"] + (" *" if t["feasible"] else ""), _steps(t["steps"]),
                     loss(m.get("loss")) if m else "", _ratio(m.get("objective")) if m else "",
                     _ratio(m.get(f"{beside}_ratio")) if m else "", t.get("error") or ""))
    parts += ["<h2>Trials</h2>", "<p class=\"muted\">* within budget</p>",
              html_table(("trial", "state", "pipeline", loss_title, doc["objective"], beside, "reason"), rows,
                         numeric=(3, 4, 5)),
              "</body></html>", ""]
    return "\n".join(p for p in parts if p)


def repeats_said(study: dict) -> str:
    """The repeats, listed and not counted (``study.is_repeat``), where there were any."""
    return f"; {study['repeats']} repeats of a pipeline already run, not counted" if study.get("repeats") else ""
