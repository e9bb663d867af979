"""What ``mcomp auto`` shows and writes: a line per trial (a live status on a terminal), the front
and the chosen model at the end, then the model, the pipeline, the JSON and HTML reports, each
written atomically."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.table import Table

from mcomp.auto import front as fronts
from mcomp.cli import console
from mcomp.cli.render import print_warnings

# Each objective's column title and its field in a trial's measurements.
RATIOS = {"latency": ("latency", "latency_ratio"), "size": ("size", "size_ratio"), "macs": ("MACs", "macs_ratio")}


class Printer:
    """Progress of the search on stderr: trial k of N (or time left), the best so far, the front size."""

    def __init__(self, settings, trials: int | None, seconds: float | None, enabled: bool) -> None:
        self.settings, self.total, self.seconds = settings, trials, seconds
        self.started = time.monotonic()
        self.best: float | None = None
        self.seen = 0
        self.feasible = []  # points of the trials within budget, for the front size
        self.progress = console.Progress(enabled=enabled)
        self.enabled = enabled and not console.quiet()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def trial(self, event: dict) -> None:
        if "activity" in event:
            return self.activity(event)
        self.seen += event.get("repeat_of") is None  # a repeat is not counted against --trials
        if event["state"] == "complete" and event.get("feasible"):
            m = event["measured"]
            if event.get("repeat_of") is None:  # a repeat is its earlier trial's point, counted once in the front
                self.feasible.append(fronts.Point(event["number"], m["loss"], m["objective"], True))
            self.best = m["objective"] if self.best is None else min(self.best, m["objective"])
        line = self._line(event)
        if not console.err.is_terminal:  # a log gets one plain line per trial
            if self.enabled:
                print(line, file=sys.stderr, flush=True)
        else:
            self.progress(line, self.seen, self.total or 0)

    def activity(self, event: dict) -> None:
        """What a long trial is doing (``hooks.ACTIVITY_EVERY``): a plain line in a log, the live status
        on a terminal."""
        line = f"trial {event['number']} ({event['seconds'] / 60:.1f} min): {event['activity']}"
        if not console.err.is_terminal:
            if self.enabled:
                print(line, file=sys.stderr, flush=True)
        else:
            self.progress(line, self.seen, self.total or 0)

    def _line(self, event: dict) -> str:
        of = f"/{self.total}" if self.total else ""
        left = ""
        if self.seconds:
            left = f" · {max(0.0, self.seconds - (time.monotonic() - self.started)) / 60:.1f} min left"
        head = f"trial {event['number']} ({self.seen}{of}{left})" if event.get("repeat_of") is None else (
            f"trial {event['number']} (not counted{left})")
        if event["state"] != "complete":
            return f"{head}: {event['state']}: {event.get('reason', '')}"
        m = event["measured"]
        quality = (f"accuracy {m['accuracy']:.2%} ({-m['loss'] * 100:+.2f} pts)" if self.settings.max_drop is not None
                   and m.get("accuracy") is not None else f"fidelity {m.get('fidelity')}")
        verdict = "within budget" if event.get("feasible") else "over budget"
        best = f"best ×{self.best:.3f}" if self.best is not None else "none within budget yet"
        if event.get("repeat_of") is not None:
            head += f" = trial {event['repeat_of']} (the same pipeline; not run again)"
        return (f"{head}: {quality} · {self.settings.objective} ×{m['objective']:.3f} · {verdict} · {best} · "
                f"front {len(fronts.front(self.feasible, 0.0))} · {event['seconds']:.0f} s")

    def summary(self, doc: dict, output: Path, report: Path, pipeline: Path | None) -> None:
        if console.quiet():
            return
        from mcomp.auto.page import measured_on, repeats_said

        study, chosen = doc["study"], doc["chosen"]
        console.err.print(f"study {study['name']} ({study['storage']}): {study['trials']} trials "
                          f"({study['resumed']} resumed, {study['complete']} complete, {study['stopped']} stopped, "
                          f"{study['failed']} failed{repeats_said(study)})")
        if study.get("exhausted"):
            console.err.print(study["exhausted"])
        for name, why in (study.get("left_out") or {}).items():
            console.err.print(f"{name} left out of the trials after it failed for a reason no option changes: {why}")
        console.err.print(f"measured at {measured_on(doc)}")
        table = Table(title="Pareto front (within budget marked *)", title_justify="left")
        others = [o for o in RATIOS if o != doc["objective"]]  # alongside the objective, not repeating it
        units = _loss_units(doc)
        for col in ("trial", "steps", units.title, doc["objective"], *(RATIOS[o][0] for o in others)):
            table.add_column(col, justify="left" if col in ("trial", "steps") else "right")
        by_number = {t["number"]: t for t in doc["trials"]}
        for number in doc["front"]:
            t = by_number[number]
            m = t["measured"]
            mark = "*" if t["feasible"] else ""
            table.add_row(f"{number}{mark}", " → ".join(s[0] for s in t["steps"]), units.cell(m["loss"]),
                          f"×{m['objective']:.3f}", *(_ratio(m.get(RATIOS[o][1])) for o in others))
        console.err.print(table)
        again = chosen.get("remeasured") or chosen["measured"]
        console.err.print(f"chosen: trial {chosen['number']} ({' → '.join(s[0] for s in chosen['steps'])}); "
                          f"re-measured: {units.phrase(again['loss'])}, {doc['objective']} ×{again['objective']:.3f}, "
                          + ", ".join(f"{RATIOS[o][0]} {_ratio(again.get(RATIOS[o][1]))}" for o in others))
        if doc.get("finalists"):
            from mcomp.auto.finalists import described

            console.err.print(described(doc["finalists"]))
        wrote = [str(output), str(report)] + ([str(pipeline)] if pipeline else [])
        console.say("wrote " + ", ".join(wrote))
        print_warnings(doc)


    def closest(self, doc: dict) -> None:
        """When nothing met the budget: the trials nearest to it, each with its pipeline."""
        if console.quiet():
            return
        for t in doc.get("closest", []):
            m = t["measured"]
            steps = " → ".join(f"{name} {options}" for name, options in t["steps"])
            console.err.print(f"  closest: trial {t['number']}: {_loss_units(doc).phrase(m['loss'])}, {doc['objective']} "
                              f"×{m['objective']:.3f}: {steps}")


def _loss_units(doc: dict):
    from mcomp.auto.trial import loss_units

    return loss_units((doc.get("budget") or {}).get("kind"))


def _ratio(value) -> str:
    return f"×{value:.3f}" if isinstance(value, (int, float)) else "-"


def write_outputs(doc: dict, model_bytes: bytes | None, *, output: Path | None = None, pipeline_path: Path | None = None,
                  pipeline_yaml: str | None = None, report_path: Path | None = None, html_path: Path | None = None,
                  json_out: bool = False) -> None:
    """Model first (when there is one), then the pipeline and the reports; each atomically, all
    under the model's output lock, so two searches writing the same ``-o`` leave one's set."""
    from mcomp import atomic
    from mcomp import model as model_io
    from mcomp import report as report_io

    with atomic.locked(output if model_bytes is not None else None):
        if model_bytes is not None and output is not None:
            if str(output) == "-":
                sys.stdout.buffer.write(model_bytes)
            else:
                model_io.write_bytes_atomic(Path(output), model_bytes)
                doc["output"] = str(output)
        if pipeline_path is not None and pipeline_yaml is not None:
            model_io.write_bytes_atomic(Path(pipeline_path), pipeline_yaml.encode())
        if report_path is not None:
            model_io.write_bytes_atomic(Path(report_path), report_io.to_json(doc).encode())
        if html_path is not None:
            from mcomp.auto.page import to_html

            model_io.write_bytes_atomic(Path(html_path), to_html(doc).encode())
    if json_out:
        sys.stdout.write(report_io.to_json(doc))
