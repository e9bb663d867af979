"""Runs a pipeline: load → steps → measure against the input → gates → write (design §4, §7)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx_ir as ir

from mcomp import bench, data, evaluate, graph, heads, report, session, shapes, sources
from mcomp import model as model_io
from mcomp.errors import BadInput, ConfigError, GateFailed
from mcomp.external_data import release_pages
from mcomp.pass_base import Context, PassResult
from mcomp.pipeline_spec import Pipeline, builtin
from mcomp.step_cache import StepCache


@dataclass
class RunRequest:
    """What the command line adds to (or overrides in) a pipeline."""

    model: str | None = None
    output: str | None = None
    load: model_io.LoadOptions = field(default_factory=model_io.LoadOptions)
    command: str = ""
    progress: Callable[[str, int, int], None] = lambda description, done, total: None
    cache: StepCache | None = None  # stored prefixes of steps (a search's trials share them)
    on_epoch: Callable[[dict], None] | None = None  # given to training passes (Context.on_epoch)
    before_step: Callable[[str], None] | None = None  # told each step's name before it runs; may raise to stop
    during_step: Callable[[str], None] | None = None  # told each progress report of a pass; may raise to stop it
    step_time: Callable[[str], float | None] | None = None  # seconds a step with a time_budget may take (a search)
    # (label, model path) timed in the latency measurement beside the result, in the same interleaved run
    # (a search's finalists): the report's latency entry gives each its own entry under ``side_by_side``
    side_by_side: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    report: dict
    model: ir.Model
    output: str | None  # where the model was written (None when a gate failed)
    replaced: bool = False  # a file was already there (a rebuild overwrites, like a compiler's -o, and says so)


def execute(pipeline: Pipeline, request: RunRequest) -> Outcome:
    started = time.perf_counter()
    model_spec = builtin(request.model) if request.model else pipeline.resolve(pipeline.model)
    if not model_spec:
        raise ConfigError("no model: give MODEL on the command line or 'model:' in the pipeline file")
    named = request.model or pipeline.model or ""
    beside = named.split(":", 1)[1] if named.startswith("builtin:") else model_spec  # a packaged model: here
    output = request.output or pipeline.resolve(pipeline.output) or str(
        model_io.default_output(beside, pipeline.steps[-1].name))
    protect = inputs_of(pipeline, model_spec)
    if output == "-" and sys.stdout.isatty():
        raise BadInput("-o -: stdout is a terminal, not a file; redirect it (> model.onnx) or give -o PATH")
    if output != "-":
        if not request.output and pipeline.output:  # a pipeline file's output folder is made when missing
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        model_io.check_writable(Path(output), protect=protect)
    input_shapes = {k: tuple(v) for k, v in (pipeline.input_shape or {}).items()} or request.load.input_shapes
    if input_shapes is None:
        roles = (pipeline.data.calibration, pipeline.data.evaluation, pipeline.data.training)
        input_shapes = data.checkpoint_shapes([model_spec], [pipeline.resolve(r) for r in roles if isinstance(r, str)])
    load_options = model_io.LoadOptions(request.load.arch, request.load.trust_checkpoint, input_shapes)
    providers = session.resolve_providers(pipeline.provider)
    passes = [_pass_class(step.name)(step.config) for step in pipeline.steps]
    check_needs(pipeline, passes)
    metric = _metric(pipeline)  # a bad --metric fails before the work

    request.progress("loading model", 0, 1)
    loaded = model_io.load(model_spec, load_options)
    given = data.bind_input_shapes(input_shapes, loaded.model)
    datasets = _load_data(pipeline, loaded.model, given)
    resolved = resolve_shapes(loaded.model, given, datasets)
    input_shapes = shapes.concrete(resolved)  # what every pass, MAC count and synthetic feed uses
    ctx = Context(reference=loaded.model, data=datasets, provider=pipeline.provider,
                  providers=providers, threads=pipeline.threads, seed=pipeline.seed, input_shapes=input_shapes,
                  fidelity=pipeline.measure.fidelity, progress=_pass_progress(request), on_epoch=request.on_epoch,
                  metric=metric)
    try:
        return _run(pipeline, request, passes, loaded, ctx, resolved, given, output, protect, started, metric)
    except BadInput as exc:  # a model failing at a shape mcomp assumed: say so, and how to set one
        if isinstance(exc, ConfigError):  # an option's own mistake: no shape is to blame
            raise
        zeros = data.zeroed_inputs(session.input_specs(loaded.model))
        hint = shapes.assumed_note(resolved, zeros) if _synthetic(datasets) else ""
        if not hint or hint in str(exc):
            raise
        told = type(exc)(f"{exc}{hint}")
        told.__dict__.update(exc.__dict__)  # NotApplicable's pass_name
        raise told from None


def resolve_shapes(model: ir.Model, given, datasets: dict[str, data.Dataset]) -> dict[str, shapes.InputShape]:
    """The shapes of the report's figures: one example of the measurement data (evaluation, else
    calibration), else --input-shape, else the model's own, else assumed."""
    source = next((datasets[r] for r in ("evaluation", "calibration") if r in datasets), None)
    if source is not None and source.synthetic and source.shapes:
        return source.shapes
    feed = source.feeds[0] if source is not None and source.feeds and not source.synthetic else None
    return shapes.resolve(model, given=given, feed=feed)


def _pass_progress(request: RunRequest) -> Callable[[str, int, int], None]:
    """The progress the passes report to: the request's, after ``during_step`` (a search's clock)."""
    if request.during_step is None:
        return request.progress

    def report(description: str, done: int, total: int) -> None:
        request.during_step(description)
        request.progress(description, done, total)

    return report


def _synthetic(datasets: dict[str, data.Dataset]) -> bool:
    return not any(r in datasets and not datasets[r].synthetic for r in ("evaluation", "calibration"))


def _run(pipeline: Pipeline, request: RunRequest, passes, loaded, ctx: Context, resolved, given,
         output: str, protect: tuple[str, ...], started: float, metric=None) -> Outcome:
    """The steps, the measurement against the input, the gates and the write."""
    input_shapes, datasets, providers = ctx.input_shapes, ctx.data, ctx.providers

    current = loaded.model  # shared with the reference until an in-place pass needs its own copy
    cache, base, start, steps = request.cache, "", 0, []
    keyed = list(pipeline.steps)  # the cache's keys: a step the request's clock cut short is keyed with its budget
    if cache is not None:
        base = cache.base(loaded.source.sha256, pipeline, input_shapes)
        start, cached, steps = cache.longest(base, pipeline.steps)
        # a stored prefix that changed nothing is the input as it came, not a copy of it: the steps
        # after it are judged on the input (magika: a prune that found no channel group, read from the
        # cache, was followed by 5 minutes of distilling the input against itself)
        if cached is not None and any(s.get("modified", True) for s in steps):
            current = cached
    for i, (step, pass_) in enumerate(zip(pipeline.steps, passes)):
        if i < start:
            continue
        request.progress(f"step {i + 1}/{len(pipeline.steps)}: {step.name}", i, len(pipeline.steps))
        if request.before_step is not None:
            request.before_step(step.name)
        unchanged_input = current is loaded.model
        idle = _idle(pass_, loaded.source) if unchanged_input else None
        limited = None
        if idle:
            result = PassResult(current, False, f"skipped: {idle}", seconds=0.0)
        else:
            if pass_.in_place and unchanged_input:
                current = graph.copy(loaded.model)
            limited = _within_time(pass_, request, step.name)
            result = (limited or pass_)(current, ctx)
        # A step that changed nothing leaves the input as it came: a structured prune that found no
        # channel group had still prepared its copy (silero-vad v6: its If branches folded, 689 → 360
        # nodes, zstd ×1.003), and wrote that as the result of a step that says it did nothing.
        current = loaded.model if unchanged_input and not result.modified else result.model
        record = step_record(step, result)
        if limited is not None and (result.details.get("time") or {}).get("time_bound"):
            keyed[i] = step.model_copy(update={"config": limited.config})
            record.update(options=limited.options(), time_bound=True)  # what ran: the budget shaped the result
        steps.append(record)
        if cache is not None:
            cache.store(base, keyed, i + 1, current, steps)

    request.progress("measuring against the input", 0, 1)
    release_pages(loaded.model)  # the passes' reads of mapped weights: not held on top of the sessions
    evaluation = evaluate.measurement_data(datasets, loaded.model, input_shapes, pipeline.seed)
    # a file with external data is run from itself (mapped); every session of a model shares one source
    reference = Path(loaded.source.path) if loaded.source.external_data else loaded.model
    with contextlib.ExitStack() as stack:
        reference_source = stack.enter_context(sources.runnable(reference))
        candidate_source, staged = _candidate(current, output, protect, loaded.source, stack)
        quality = evaluate.compare(reference_source, candidate_source, evaluation, providers, pipeline.threads,
                                   output_names=[s.name for s in session.output_specs(loaded.model)], metric=metric,
                                   heads=heads.linear_heads(loaded.model))
        latency = None
        if pipeline.measure.latency:
            latency = measure_latency(reference_source, candidate_source, evaluation, providers, pipeline,
                                      specs=session.input_specs(loaded.model), given=given,
                                      side_by_side=request.side_by_side)

        doc = report.build(
            command=request.command, source=loaded.source, reference=loaded.model, candidate=current,
            steps=steps, datasets=datasets, evaluation=evaluation, quality=quality, latency=latency,
            providers=providers, threads=pipeline.threads, input_shapes=resolved,
            seconds=time.perf_counter() - started)
        doc["warnings"] = report.warnings(doc, output)  # a result much worse than its input, with what to do next
        failures = check_gates(pipeline, doc)
        doc["gates"] = failures["table"]
        if failures["failed"]:
            raise GateFailed("gate failed: " + "; ".join(failures["failed"]), report=doc)
        replaced = output != "-" and Path(output).exists()
        written = staged.commit() if staged is not None else model_io.save(
            current, output, protect=protect, external_data=loaded.source.external_data,
            same_as=loaded.source if current is loaded.model else None)
    doc["output"].update({"path": written.path, "sha256": written.sha256, "bytes": written.bytes})
    doc["size_ratio"] = round(written.bytes / loaded.source.bytes, 4) if loaded.source.bytes else None
    return Outcome(doc, current, output, replaced)


def _candidate(current: ir.Model, output: str, protect: tuple[str, ...], source: model_io.ModelSource,
               stack: contextlib.ExitStack) -> tuple[bytes | str, model_io.Staged | None]:
    """What the result is measured from, and its staged output where that is it: a result that must be
    run from a file and leaves with external data is written once, as its output under a temp name, and
    measured from there (``model_io.staged``); one that is not (small, in its input's folder, or inline)
    is measured as ``sources.runnable`` gives it and written after."""
    ready = sources.unwritten(current, spill=True)
    if ready is not None:
        return ready, None
    if output == "-" or not (source.external_data or model_io.needs_external_data(current)):
        return stack.enter_context(sources.runnable(current, spill=True)), None
    staged = stack.enter_context(model_io.staged(current, output, protect=protect, external_data=True))
    sources.spill_to(current, staged.path)
    return str(staged.path), staged


def _metric(pipeline: Pipeline):
    spec = pipeline.measure.metric
    if not spec:
        return None
    from mcomp.metric import Metric

    where, sep, function = spec.rpartition(":")
    if sep and (where.endswith(".py") or "/" in where):  # a file: relative to the pipeline file
        spec = f"{pipeline.resolve(where)}:{function}"
    return Metric(spec)


def check_needs(pipeline: Pipeline, passes: list) -> None:
    """Every step's data needs, before anything runs: a static quantize at step 3 must not fail
    after two steps of work (exit 2, naming the step and the data it wants)."""
    present = [role for role in ("calibration", "evaluation", "training") if getattr(pipeline.data, role) is not None]
    for i, pass_ in enumerate(passes, 1):
        for need in pass_.missing(present):
            where = " or ".join(f"data.{role}" for role in need.roles)
            raise BadInput(f"step {i} ({pass_.name}) needs data: {need.why}; give --data PATH "
                           f"(or {where} in a pipeline file)")


def _idle(pass_, source) -> str | None:
    """``pass_.idle_on_input``, given the input's source where it takes it (a plugin written before it
    took one is called as it was)."""
    import inspect

    takes_source = bool(inspect.signature(pass_.idle_on_input).parameters)
    return pass_.idle_on_input(source) if takes_source else pass_.idle_on_input()


def _within_time(pass_, request: RunRequest, name: str):
    """``pass_`` with its ``time_budget`` lowered to the whole seconds ``request.step_time`` gives it (a search's
    time left), or None where it has no such option, or its own is shorter. A distillation then trains the
    epochs that fit and the trial ends with a model; cut by the search's deadline instead, it gave nothing
    (magika, a 6-minute search: the recipe's distillation ran 5 of them and was stopped)."""
    if request.step_time is None or "time_budget" not in type(pass_.config).model_fields:
        return None
    seconds = request.step_time(name)
    own = pass_.config.time_budget
    if seconds is None or (own is not None and own <= seconds):
        return None
    return type(pass_)(pass_.config.model_copy(update={"time_budget": float(max(1, round(seconds)))}))


def step_record(step, result) -> dict:
    """A step of the report: the typed fields of its PassResult; ``changes`` is the pass's own details."""
    return {"pass": step.name, "options": step.config.model_dump(mode="json"), "seconds": result.seconds,
            "modified": result.modified, "summary": result.summary, "notes": list(result.notes),
            "changes": result.details}


def inputs_of(pipeline: Pipeline, model_spec: str | None) -> tuple[str, ...]:
    """Every file the run reads (model, data), none of which an output may overwrite."""
    paths = [model_spec] if model_spec else []
    for role in ("calibration", "evaluation", "training"):
        spec = getattr(pipeline.data, role)
        if isinstance(spec, str) and spec != "random":
            paths.append(pipeline.resolve(spec))
        elif spec is not None and not isinstance(spec, str):
            paths.append(str(spec.images))
    return tuple(p for p in paths if p and p != "-")


def _pass_class(name: str):
    from mcomp import registry

    return registry.get(name)


def _load_data(pipeline: Pipeline, model: ir.Model, input_shapes) -> dict[str, data.Dataset]:
    out, loaded = {}, {}
    for role in ("calibration", "evaluation", "training"):
        spec = getattr(pipeline.data, role)
        if spec is None:
            continue
        if isinstance(spec, str):
            spec = pipeline.resolve(spec)
        elif not Path(spec.images).is_absolute():
            spec = spec.model_copy(update={"images": pipeline.base_dir / spec.images})
        key = spec if isinstance(spec, str) else spec.model_dump_json()
        if key not in loaded:  # one file serving several roles is read once
            loaded[key] = data.load(spec, model, input_shapes=input_shapes, seed=pipeline.seed)
        out[role] = loaded[key]
    return out


def measure_latency(reference: bytes | str, candidate: bytes | str, dataset: data.Dataset, providers: list[str],
                    pipeline: Pipeline, *, specs=None, given=None, side_by_side=()) -> dict:
    """Candidate vs reference, interleaved (in sequential blocks when the two models are too big to
    hold at once), on feeds the user would run: one example of the data (its batch dims cut to 1, or
    to the batch of --input-shape, joined from several feeds where one holds fewer), not a calibration
    file's batch of 16 timed as one run. The entry
    says the feed shapes timed and the method, which the measurement reports. ``side_by_side``: (label,
    path) of other models timed in the same rounds, each given an entry of its own (``side_by_side``)."""
    feeds = bench.example_feeds(dataset.feeds, specs, given) if specs else dataset.feeds[:4]
    result = bench.interleaved([("reference", reference), ("candidate", candidate), *side_by_side], feeds,
                               providers=providers, threads=pipeline.threads, warmup=pipeline.measure.warmup,
                               runs=pipeline.measure.runs, provider_label=session.provider_name(providers),
                               budget_s=bench.MEASURE_BUDGET_S)
    ref, *timed = result.models

    def entry(model) -> dict:
        return {"ratio": model.ratio, "speedup": (1 / model.ratio) if model.ratio else None,
                "reference": ref.to_dict(), "candidate": model.to_dict(),
                "noise_floor": result.noise_floor.to_dict() if result.noise_floor else None,
                "method": result.method,
                "feed_shapes": {name: list(array.shape) for name, array in feeds[0].items()} if feeds else {}}

    latency = entry(timed[0])
    if side_by_side:
        latency["side_by_side"] = {model.label: entry(model) for model in timed[1:]}
    return latency


def check_gates(pipeline: Pipeline, doc: dict) -> dict:
    gate = pipeline.gate
    table, failed = {}, []
    accuracy = doc["accuracy"]
    if gate.max_accuracy_drop is not None:
        if not accuracy.get("known"):
            failed.append(f"max_accuracy_drop needs labelled evaluation data ({accuracy.get('reason')})")
            table["max_accuracy_drop"] = {"limit": gate.max_accuracy_drop, "value": None, "passed": False}
        else:
            ok = accuracy["drop"] <= gate.max_accuracy_drop + 1e-12
            table["max_accuracy_drop"] = {"limit": gate.max_accuracy_drop, "value": accuracy["drop"], "passed": ok}
            if not ok:
                failed.append(f"accuracy drop {accuracy['drop']:.4f} exceeds max_accuracy_drop {gate.max_accuracy_drop}")
    if gate.min_fidelity is not None:
        mode = pipeline.measure.fidelity
        cos, what = evaluate.figure_named(doc["fidelity"]["summary"], mode)
        ok = cos is not None and cos >= gate.min_fidelity
        table["min_fidelity"] = {"limit": gate.min_fidelity, "value": cos, "passed": ok, "fidelity": mode}
        if not ok:
            failed.append(f"fidelity ({what}) {cos} is below min_fidelity {gate.min_fidelity}")
    if gate.min_speedup is not None:
        speedup = (doc.get("latency") or {}).get("speedup")
        ok = speedup is not None and speedup >= gate.min_speedup
        table["min_speedup"] = {"limit": gate.min_speedup, "value": speedup, "passed": ok}
        if not ok:
            failed.append(f"speed-up {speedup if speedup is None else round(speedup, 3)} is below min_speedup {gate.min_speedup}")
    return {"table": table, "failed": failed}
