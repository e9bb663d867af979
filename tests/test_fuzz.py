"""The loaders under fuzzing (issue 12): only mcomp's own errors may come out of ``model.load`` and
``data.load``, whatever the bytes, and what ``data.load`` accepts must be fit to run (targets.py).
Two parts:

- a replay of the seeds and of every input the fuzzer found escaping (tests/fuzz/crashes/<target>/),
  in this process, so a fixed bug stays fixed without atheris;
- a short coverage-guided run per target, bounded by a count of inputs, not by time.

Long runs: tests/fuzz/run.py (its docstring says how).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import seeds  # noqa: E402
import targets  # noqa: E402
from mcomp import model  # noqa: E402

# Findings not fixed yet: crash file -> (exception, escape point without its line). strict: once
# fixed, the replay passes and fails as XPASS, until its entry here is removed. A protobuf string
# field that is not UTF-8 comes back from python-protobuf as bytes, which onnx's helpers do not
# expect: most model escapes are that. The data ones fail the target's own check: float64 values
# beyond float32's range are cast to inf, and accepted.
OVERFLOW = "AssertionError (accepted non-finite data) at tests/fuzz/targets.py in data_target"
OPEN: dict[str, tuple[type[BaseException], str]] = {}  # escapes found and not yet fixed: case → (type, where)


def _replays():
    for target, make in seeds.SEEDS.items():
        for name, blob in make().items():
            yield pytest.param(target, blob, id=f"{target}/seed-{name}")
    for path in sorted((FUZZ / "crashes").glob("*/*")):
        case = f"{path.parent.name}/{path.name}"
        marks = ()
        if case in OPEN:
            exc, where = OPEN[case]
            marks = pytest.mark.xfail(raises=exc, strict=True, reason=where)
        yield pytest.param(path.parent.name, path.read_bytes(), id=case, marks=marks)


@pytest.mark.parametrize("target, blob", list(_replays()))
def test_only_mcomp_errors_come_out(target, blob):
    targets.TARGETS[target](blob)


def test_model_seeds_load():
    """A seed the loader refuses starts the fuzzer at the first check: coverage would quietly shrink."""
    for name, blob in seeds.model_seeds().items():
        path = targets._workdir() / "model.onnx"
        path.write_bytes(blob)
        assert model.load(path).model.graph, name


def _open_escape(key: str) -> bool:
    """A fuzzed escape that OPEN already lists (matched without line numbers, which edits move)."""
    return re.sub(r":\d+ in ", " in ", key) in {where for _, where in OPEN.values()}


# The three runs: 61 s in all on 2 cores at load 5, 3 minutes at load 17 (start-up, instrumenting,
# is most of it): hence slow. -timeout (per input) only catches hangs.
RUNS = {"model": 5000, "data": 2000, "arrays": 1000}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(RUNS))
def test_short_fuzz_run_finds_nothing_new(target, tmp_path):
    if importlib.util.find_spec("atheris") is None and not os.environ.get("CI"):  # CI must have it
        pytest.skip("atheris is not installed: pip install -c constraints.txt -e '.[fuzz]'")
    runs = RUNS[target]
    findings = tmp_path / "findings"
    argv = [sys.executable, str(FUZZ / "run.py"), target, "--corpus", str(tmp_path / "corpus"),
            "--findings", str(findings), f"-runs={runs}", "-seed=1", "-timeout=120", "-rss_limit_mb=2048"]
    env = {**os.environ, "MCOMP_FUZZ_WORKDIR": str(tmp_path)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and f"Done {runs} runs" in proc.stderr, proc.stderr[-3000:]
    escapes = json.loads((findings / "summary.json").read_text())["escapes"]
    new = {key: found for key, found in escapes.items() if not _open_escape(key)}
    assert not new, f"new escapes (inputs in {findings}; minimize with run.py --minimize, add to crashes/): {new}"
