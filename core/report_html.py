"""The report as one self-contained HTML page (design §7): ``mcomp … --report-html PATH``.

One file that opens from a CI artifact or a mail attachment with no network: the CSS is inline,
the figures are inline SVG (``report_plots``), there is no script and no font or image to fetch.
Every string that comes from a model, a path, a pass or a data set goes through ``html.escape``;
the SVG text is escaped by matplotlib's writer.
"""

from __future__ import annotations

from html import escape

from mcomp import report

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;margin:0 auto;
max-width:1100px;padding:1.5em}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #e2e8f0}
h3{font-size:1.05em;margin-bottom:.3em}
code{background:#f1f5f9;padding:0 .25em;border-radius:3px;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;border-bottom:1px solid #e2e8f0;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f7fafc}.pass{color:#276749}.fail{color:#c53030;font-weight:600}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}.muted{color:#718096}
ul.notes li{margin:.2em 0}
.warn{border-left:5px solid #d69e2e;background:#fffaf0;padding:.4em 1em;margin:.8em 0;border-radius:3px}
.warn.severe{border-left-color:#c53030;background:#fff5f5}.warn p{margin:.3em 0}
.warn .label{font-weight:700;color:#b7791f}.warn.severe .label{color:#c53030}.warn .next{font-weight:600}
"""


def html_table(header: tuple[str, ...], rows, numeric: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{escape(str(c))}</td>' if i in numeric
                                    else f"<td>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _notes(notes) -> str:
    return '<ul class="notes">' + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>" if notes else ""


def figure_html(fig) -> str:
    if fig is None:
        return ""
    name, svg = fig
    return f'<figure class="plot" data-plot="{escape(name)}">{svg}</figure>'


def figures(doc: dict) -> tuple[str, dict[int, str]]:
    """The page's figures: those of the whole run, and each step's own, keyed by step number."""
    from mcomp import report_plots as plots

    whole = [plots.latency_figure(doc.get("latency")), plots.size_figure(doc["input"], doc["output"]),
             plots.ops_figure(doc["input"].get("ops"), doc["output"].get("ops"))]
    per_step = {}
    for n, step in enumerate(doc["steps"], 1):
        changes = step.get("changes") or {}
        salt = f"step{n}"
        drawn = [plots.prune_figure(changes, salt + "prune") if step["pass"] == "prune" else None,
                 plots.explain_figure(changes.get("explain"), salt + "explain"),
                 plots.history_figure(changes.get("history"), salt + "history")]
        per_step[n] = "".join(figure_html(f) for f in drawn)
    return "".join(figure_html(f) for f in whole), per_step


def _step(n: int, step: dict, figs: str) -> str:
    parts = [f"<h3>{n}. {escape(step['pass'])} <span class=\"muted\">{escape(report.human(step['seconds']))} s, "
             f"{'changed the model' if step['modified'] else 'left the model unchanged'}</span></h3>"]
    if step.get("summary"):
        parts.append(f"<p>{escape(step['summary'])}</p>")
    parts.append(_notes(step.get("notes")))
    if step.get("options"):
        parts.append(f"<p class=\"muted\">options: {escape(report.human(step['options']))}</p>")
    return "<section class=\"step\">" + "".join(parts) + figs + "</section>"


def _gates(doc: dict) -> str:
    rows = report.gate_rows(doc)
    if not rows:
        return ""
    body = "".join(f"<tr><td>{escape(g)}</td><td class=\"n\">{escape(lim)}</td><td class=\"n\">{escape(val)}</td>"
                   f"<td class=\"{'pass' if ok == 'yes' else 'fail'}\">{escape(ok)}</td></tr>" for g, lim, val, ok in rows)
    return ("<h2>Gates</h2><table><thead><tr><th>gate</th><th>limit</th><th>value</th><th>passed</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _code_spans(text: str) -> str:
    """Escaped ``text`` with its `backticked` commands (advice to copy) set as <code>."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: no pairs to trust
        return escape(text)
    return "".join(f"<code>{escape(p)}</code>" if i % 2 else escape(p) for i, p in enumerate(parts))


def warnings_html(doc: dict) -> str:
    """The warnings with their next step, boxed in amber (red when severe), above the figures: a result
    much worse than its input must not hide in one table cell (design §7)."""
    boxes = []
    for found, advice in report.warning_groups(doc):
        severe = any(w["severity"] == "severe" for w in found)
        lines = "".join(f'<p><span class="label">{"severe" if w["severity"] == "severe" else "warning"}:</span> '
                        f"{escape(w['message'])}</p>" for w in found)
        boxes.append(f'<div class="warn{" severe" if severe else ""}" role="alert">{lines}'
                     f'<p class="next">next: {_code_spans(advice)}</p></div>')
    return '<section class="warnings">' + "".join(boxes) + "</section>" if boxes else ""


def _environment(env: dict) -> str:
    return "<h2>Environment</h2>" + html_table(("", ""), [(k.replace("_", " "), report.human(v)) for k, v in env.items()])


def to_html(doc: dict) -> str:
    """The report ``doc`` (``report.build``) as one HTML page."""
    whole, per_step = figures(doc)
    inp, out = doc["input"], doc["output"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mcomp report: {escape(str(inp.get('path')))}</title><style>{STYLE}</style></head><body>",
        "<h1>mcomp report</h1>",
        f"<p><code>{escape(doc['command'])}</code> <span class=\"muted\">{escape(doc['created'])}, "
        f"{escape(report.human(doc.get('seconds')))} s</span></p>",
        f"<p>Input <code>{escape(str(inp.get('path')))}</code> → output <code>{escape(str(out.get('path')))}</code></p>",
        warnings_html(doc),
        html_table(("metric", "input", "output", "change"), report.headline(doc), numeric=(1, 2, 3)),
    ]
    # the input shapes every figure was measured at are rows of the headline table ("measured at")
    parts += ["<h2>Figures</h2>", whole, "<h2>Steps</h2>"]
    parts += [_step(n, step, per_step.get(n, "")) for n, step in enumerate(doc["steps"], 1)]
    data = report.data_rows(doc)
    if data:
        parts += ["<h2>Data</h2>", html_table(("role", "source", "samples", "labels", "synthetic"), data, numeric=(2,)),
                  _notes(report.data_notes(doc))]
    parts.append(_gates(doc))
    if report.report_notes(doc):
        parts += ["<h2>Notes</h2>", _notes(report.report_notes(doc))]
    parts += [_environment(doc.get("environment") or {}), "</body></html>", ""]
    return "\n".join(p for p in parts if p)
