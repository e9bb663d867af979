"""Interruption and concurrency (issue 12): kill -9 in the middle of a write, two runs on one ``-o``,
``make -j8`` over real models.

A write is stopped exactly between its temp file and its rename with the test hook
``MCOMP_TEST_PAUSE_BEFORE_RENAME`` (mcomp.atomic.pause_before_rename): the run writes ``<pid> <dest>``
to the flag file and waits while it exists. Waiting for a flag is bounded by HANG_TIMEOUT, a hang
guard only: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import realmodels
from clirun import DIGITS, DIGITS_EVAL, HANG_TIMEOUT, mcomp_argv, run_mcomp, run_shell, sha256, snapshot

PAUSE = "MCOMP_TEST_PAUSE_BEFORE_RENAME"


@pytest.fixture
def start():
    """Starts runs in the background; any still running at the end (a failed test) is killed."""
    procs: list[subprocess.Popen] = []

    def launch(args, cwd: Path, flag: Path | None = None, argv=None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != PAUSE} | ({PAUSE: str(flag)} if flag else {})
        procs.append(subprocess.Popen(argv or mcomp_argv(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def paused_at(flag: Path, *procs: subprocess.Popen) -> str:
    """The destination the run waits to rename into place (it wrote the flag), once it is there."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while not flag.exists():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"run ended (exit {proc.returncode}) before the pause: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "hang: the run never reached the pause"
        time.sleep(0.05)
    return Path(flag.read_text().split(" ", 1)[1]).name


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: a zombie would still count as a running owner of its temp files


def ours(folder: Path, name: str) -> list[str]:
    """mcomp's temp files and folders and lock files for output ``name``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_kill_before_the_model_rename_leaves_no_output_and_the_next_run_cleans_up(tmp_path, start):
    flag = tmp_path / "flag"
    proc = start(["optimize", "builtin:digits", "-o", "out.onnx", "-q"], tmp_path, flag)
    assert paused_at(flag, proc) == "out.onnx"
    left = ours(tmp_path, "out.onnx")
    assert any(n.endswith(".tmp") for n in left), left  # the whole model, written, not yet in place
    kill(proc)
    flag.unlink()
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.report.json").exists()

    again = run_mcomp("optimize", "builtin:digits", "-o", "out.onnx", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.explain()
    assert sorted(snapshot(tmp_path)) == ["out.onnx", "out.report.json"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))


def test_kill_before_the_report_rename_leaves_no_stale_report_and_the_next_run_cleans_up(tmp_path, start):
    old = run_mcomp("quantize", "builtin:digits", "--mode", "dynamic", "-o", "out.onnx", "-q", cwd=tmp_path)
    assert old.returncode == 0, old.explain()
    model, report = tmp_path / "out.onnx", tmp_path / "out.report.json"
    old_pair = snapshot(tmp_path)
    flag = tmp_path / "flag"
    proc = start(["optimize", "builtin:digits", "-o", "out.onnx", "-q"], tmp_path, flag)
    assert paused_at(flag, proc) == "out.onnx"
    assert all(sha256(tmp_path / name) == digest for name, digest in old_pair.items())  # untouched so far
    flag.unlink()  # let the model go into place
    assert paused_at(flag, proc) == "out.report.json"
    assert any(n.endswith(".tmp") for n in ours(tmp_path, "out.report.json"))
    kill(proc)
    onnx.checker.check_model(onnx.load(str(model)))  # the new model: in place and whole
    assert sha256(model) != old_pair["out.onnx"]
    assert not report.exists()  # the old model's report went with it, rather than describe the new one

    flag.unlink()
    again = run_mcomp("optimize", "builtin:digits", "-o", "out.onnx", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.explain()
    assert sorted(snapshot(tmp_path)) == ["out.onnx", "out.report.json"]
    assert json.loads(report.read_text())["output"]["sha256"] == sha256(model)


SAVE_WITH_EXTERNAL_DATA = """
import sys
from mcomp import model as m
m.EXTERNAL_DATA_THRESHOLD = 0  # the path of models over 2 GB, on a small one
m.save(m.load(sys.argv[1]).model, sys.argv[2])
"""


def test_kill_during_an_external_data_write_leaves_a_folder_the_next_write_removes(tmp_path, start):
    flag = tmp_path / "flag"
    argv = [sys.executable, "-c", SAVE_WITH_EXTERNAL_DATA, str(DIGITS), "big.onnx"]
    proc = start(None, tmp_path, flag, argv=argv)
    assert paused_at(flag, proc) == "big.onnx"
    folders = [tmp_path / n for n in ours(tmp_path, "big.onnx") if (tmp_path / n).is_dir()]
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["big.onnx", "big.onnx.data"]
    kill(proc)
    assert not (tmp_path / "big.onnx").exists() and not (tmp_path / "big.onnx.data").exists()

    flag.unlink()
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=HANG_TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(snapshot(tmp_path)) == ["big.onnx", "big.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "big.onnx"))


def _locks(pid: int, waiting: bool) -> bool:
    """Whether Linux's /proc/locks lists ``pid`` holding a file lock, or (``->``) waiting for one."""
    return any(str(pid) in line.split() and (line.split()[1] == "->") == waiting
               for line in Path("/proc/locks").read_text().splitlines())


def _blocked_on_a_lock(pid: int, holder: int) -> bool:
    if not _locks(holder, waiting=False):  # a sandbox whose /proc/locks shows nothing
        pytest.skip("/proc/locks does not list the locks held here")
    return _locks(pid, waiting=True)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see a waiting lock")
def test_a_second_run_on_the_same_output_waits_until_the_first_has_written_its_report(tmp_path, start):
    first_flag, second_flag = tmp_path / "first", tmp_path / "second"
    first = start(["optimize", "builtin:digits", "-o", "same.onnx", "-q"], tmp_path, first_flag)
    assert paused_at(first_flag, first) == "same.onnx"
    first_flag.unlink()
    assert paused_at(first_flag, first) == "same.report.json"  # the first run's model is in place
    second = start(["quantize", "builtin:digits", "--mode", "dynamic", "-o", "same.onnx", "-q"], tmp_path,
                   second_flag)
    deadline = time.monotonic() + HANG_TIMEOUT
    while not _blocked_on_a_lock(second.pid, holder=first.pid):  # it waits: no model under the first's report
        assert not second_flag.exists(), "the second run wrote its model between the first's model and report"
        assert second.poll() is None, second.stderr.read()
        assert time.monotonic() < deadline, "hang"
        time.sleep(0.05)
    first_flag.unlink()
    assert first.wait(timeout=HANG_TIMEOUT) == 0, first.stderr.read()
    for name in ("same.onnx", "same.report.json"):
        assert paused_at(second_flag, second) == name
        second_flag.unlink()
    assert second.wait(timeout=HANG_TIMEOUT) == 0, second.stderr.read()
    report = json.loads((tmp_path / "same.report.json").read_text())
    assert report["output"]["sha256"] == sha256(tmp_path / "same.onnx")
    assert report["steps"][0]["pass"] == "quantize"
    assert sorted(snapshot(tmp_path)) == ["same.onnx", "same.report.json"]  # no lock file left


AUTO_WRITE = """
from pathlib import Path
from mcomp.cli.auto_output import write_outputs
write_outputs({"chosen": 1}, b"model bytes", output=Path("best.onnx"), pipeline_path=Path("best.yaml"),
              pipeline_yaml="steps: []\\n", report_path=Path("best.report.json"))
"""


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see a waiting lock")
def test_auto_writes_its_model_pipeline_and_report_under_the_output_lock(tmp_path, start):
    from mcomp import atomic

    with atomic.locked(tmp_path / "best.onnx"):  # another writer of best.onnx, between its model and report
        proc = start(None, tmp_path, argv=[sys.executable, "-c", AUTO_WRITE])
        deadline = time.monotonic() + HANG_TIMEOUT
        while not _blocked_on_a_lock(proc.pid, holder=os.getpid()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "hang"
            time.sleep(0.05)
        assert not (tmp_path / "best.onnx").exists()
    assert proc.wait(timeout=HANG_TIMEOUT) == 0, proc.stderr.read()
    assert sorted(snapshot(tmp_path)) == ["best.onnx", "best.report.json", "best.yaml"]
    assert json.loads((tmp_path / "best.report.json").read_text())["output"] == "best.onnx"


@pytest.mark.slow
def test_concurrent_runs_on_the_same_output_leave_a_matching_model_and_report(tmp_path, start):
    commands = (["optimize", "builtin:digits"], ["quantize", "builtin:digits", "--mode", "dynamic"])
    for round_ in range(6):
        procs = [start([*c, "-o", "same.onnx", "-q"], tmp_path) for c in commands]
        for proc in procs:
            assert proc.wait(timeout=HANG_TIMEOUT) == 0, proc.stderr.read()
        report = json.loads((tmp_path / "same.report.json").read_text())
        assert report["output"]["sha256"] == sha256(tmp_path / "same.onnx"), f"round {round_}"
        assert sorted(snapshot(tmp_path)) == ["same.onnx", "same.report.json"]


MAKEFILE = """\
MODELS := $(filter-out %.optimize.onnx,$(wildcard *.onnx))
all: $(MODELS:.onnx=.optimize.onnx)
%.optimize.onnx: %.onnx %.npz
\t$(MCOMP) optimize $< --data $*.npz -q
"""


def _models_folder(folder: Path) -> list[str]:
    """Eight models, each with realistic data: the six fetched ones and the digits CNN twice."""
    folder.mkdir()
    for name in realmodels.all_models():
        rm = realmodels.fetch(name)
        shutil.copy(rm.path, folder / f"{name}.onnx")
        realmodels.write_npz(rm, folder / f"{name}.npz")
    for stem in ("digits", "digits-copy"):
        shutil.copy(DIGITS, folder / f"{stem}.onnx")
        shutil.copy(DIGITS_EVAL, folder / f"{stem}.npz")
    (folder / "Makefile").write_text(MAKEFILE)
    return sorted(p.stem for p in folder.glob("*.onnx"))


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_j8_over_real_models_writes_the_bytes_of_a_serial_run(tmp_path):
    stems = _models_folder(tmp_path / "serial")
    assert len(stems) == 8
    shutil.copytree(tmp_path / "serial", tmp_path / "parallel")
    mcomp = f"MCOMP='{sys.executable} -m mcomp'"
    serial = run_shell(f"make {mcomp}", cwd=tmp_path / "serial")
    assert serial.returncode == 0, serial.explain()
    parallel = run_shell(f"make -j8 {mcomp}", cwd=tmp_path / "parallel")
    assert parallel.returncode == 0, parallel.explain()
    differ = [s for s in stems if sha256(tmp_path / "serial" / f"{s}.optimize.onnx")
              != sha256(tmp_path / "parallel" / f"{s}.optimize.onnx")]
    assert differ == []
    assert not [p for p in (tmp_path / "parallel").iterdir() if p.name.startswith(".")]
