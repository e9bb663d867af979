"""``mcomp auto`` workers sharing one study: two worker processes on the default SQLite storage, the
same on a real PostgreSQL server (``--storage postgresql://…``, the way workers on several machines
join one study), and two separate ``mcomp auto`` processes started at once on one PostgreSQL study.
Read back from the storage itself: no trial is run twice or lost, every trial finished, and the
counts in the reports add up. An unreachable server is one line, exit 2, and nothing written.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
from clirun import HANG_TIMEOUT, mcomp_argv, run_mcomp, snapshot
from postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

# a range: every trial a pipeline of its own (repeats of a small space are not counted against --trials)
FAST_SPACE = "steps: {prune: {method: structured, rate: {low: 0.25, high: 0.5}}, optimize: {level: basic}}\n"
ARGS = ("builtin:digits", "--data", "builtin:digits-train", "--eval", "builtin:digits-eval", "--runs", "5",
        "--max-drop", "1", "--space", "space.yaml", "-o", "best.onnx")


def _optuna_url(url: str) -> str:
    """The URL as mcomp opens it (psycopg 3), for reading the study back here."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _load(name: str, storage: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def _two_workers(folder, storage_args: tuple = ()) -> tuple[dict, list]:
    (folder / "space.yaml").write_text(FAST_SPACE)
    res = run_mcomp("auto", *ARGS, "--trials", "4", "--workers", "2", *storage_args, cwd=folder)
    assert res.returncode == 0, res.explain()
    return json.loads((folder / "best.report.json").read_text()), res


def _finished(trial) -> bool:
    """Run to the end: complete, or a repeat of a pipeline already run (told to the sampler as pruned)."""
    import optuna

    return trial.state == optuna.trial.TrialState.COMPLETE or (
        trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs.get("repeat_of") is not None)


def _assert_shared_fairly(doc: dict, study) -> None:
    """Four trials, each run once, to the end, two by each worker (each worker's share is fixed)."""
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(_finished(t) for t in trials), [t.state for t in trials]
    assert Counter(t.user_attrs.get("worker") for t in trials) == {0: 2, 1: 2}
    assert doc["study"]["trials"] == 4 and doc["study"]["ran_now"] == 4 and doc["study"]["complete"] == 4
    assert sorted(t["worker"] for t in doc["trials"]) == [0, 0, 1, 1]


@pytest.mark.slow  # ~17 s: worker processes, each importing torch
def test_two_workers_on_sqlite_share_the_study(tmp_path):
    doc, _ = _two_workers(tmp_path)
    db = (tmp_path / "best.study.db").resolve()
    assert doc["study"]["storage"] == f"sqlite:///{db}"
    _assert_shared_fairly(doc, _load(doc["study"]["name"], f"sqlite:///{db}"))


@pytest.mark.slow  # ~17 s: worker processes, each importing torch
@pytest.mark.postgres
def test_two_workers_on_postgresql_share_the_study(tmp_path, postgres_url):  # noqa: F811
    doc, _ = _two_workers(tmp_path, ("--storage", postgres_url, "--study", "two-workers"))
    assert doc["study"]["name"] == "two-workers" and doc["study"]["storage"].startswith("postgresql://")
    assert not (tmp_path / "best.study.db").exists()
    _assert_shared_fairly(doc, _load("two-workers", _optuna_url(postgres_url)))


@pytest.mark.slow  # ~17 s: worker processes, each importing torch
@pytest.mark.postgres
def test_two_processes_on_one_postgresql_study_add_up(tmp_path, postgres_url):  # noqa: F811
    """``--trials`` is the study's total: each process counts the study's trials (finished and running, by
    any process) before starting one, so two processes started together run 3 trials between them (4 if
    both asked at the same instant); each trial is run once and finished, and what the two ran adds up
    to what the study holds."""
    # Both start on a new database: their first connections race to create Optuna's tables (the loser retries).
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = []
    for folder in folders:
        folder.mkdir()
        (folder / "space.yaml").write_text(FAST_SPACE)
        procs.append(subprocess.Popen(mcomp_argv("auto", *ARGS, "--trials", "3", "--storage", postgres_url,
                                                 "--study", "shared"),
                                      cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=HANG_TIMEOUT)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    docs = [json.loads((f / "best.report.json").read_text())["study"] for f in folders]
    trials = _load("shared", _optuna_url(postgres_url)).trials
    total = len(trials)
    assert sorted(t.number for t in trials) == list(range(total))
    assert all(_finished(t) for t in trials), [t.state for t in trials]
    for doc in docs:
        assert doc["name"] == "shared" and doc["ran_now"] <= max(0, 3 - doc["resumed"]), doc
    # each counts the study (finished and running, by both) before a trial: 3, or one more when both
    # asked for a trial at the same instant
    assert sum(doc["ran_now"] for doc in docs) == total and 3 <= total <= 4
    # the process whose trials ended last saw the other's finished: its report counts them all
    assert max(doc["trials"] for doc in docs) == total
    assert Counter(t.user_attrs.get("search_pid") for t in trials) == Counter(
        {pid: doc["ran_now"] for pid, doc in zip((p.pid for p in procs), docs) if doc["ran_now"]})


def test_an_unreachable_storage_is_one_line_exit_2_and_nothing_written(tmp_path):
    (tmp_path / "space.yaml").write_text(FAST_SPACE)
    before = snapshot(tmp_path)
    res = run_mcomp("auto", *ARGS, "--trials", "1", "--storage", "postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path)
    assert res.returncode == 2, res.explain()
    assert len(res.err_lines) == 1 and "cannot open the study storage" in res.err_lines[0], res.explain()
    assert "127.0.0.1:1/x" in res.err_lines[0]
    assert snapshot(tmp_path) == before  # no model, no report, no study file, no scratch folder
