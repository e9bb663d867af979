"""A command line that starts at once, and output where people and scripts look (design §5).

- ``mcomp --help`` and every command's ``--help`` (and ``mcomp passes``) import none of onnx,
  onnx_ir, onnxruntime, torch: checked on ``sys.modules`` in a fresh interpreter, never on a clock.
- The commands whose result is information print it on stdout (``mcomp inspect m.onnx | grep MACs``),
  at full width when stdout is a pipe, and names holding ``[...]`` show whole (no rich markup).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table

from clirun import DIGITS, Batch, Result, run_mcomp, uses, selected_keys

HEAVY = ("onnx", "onnx_ir", "onnxruntime", "torch")

# Runs in a fresh interpreter: builds the app, renders the help of the app and of every command it
# lists (the pass commands are built from their Config here), and `mcomp passes`; then reports which
# of the heavy modules got imported. stdout is one JSON document.
HELP_PROBE = r"""
import contextlib, io, json, sys
from mcomp.cli.main import app
import typer.main

group = typer.main.get_command(app)
ctx = group.context_class(group, info_name="mcomp")
commands = group.list_commands(ctx)
texts = {}
for argv in [["--help"]] + [[name, "--help"] for name in commands] + [["passes"]]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            app(argv, prog_name="mcomp", standalone_mode=False)
        except SystemExit:
            pass
    texts[" ".join(argv)] = buffer.getvalue()
print(json.dumps({"commands": commands, "texts": texts, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""
MODEL = "net[fp32].onnx"  # a name rich would read as markup


def _prepare(key: str, folder: Path):
    shutil.copy(DIGITS, folder / MODEL)
    argv = {"inspect": ["inspect", MODEL],
            "inspect-json": ["inspect", MODEL, "--json"],
            "bench": ["bench", MODEL, "--runs", "3", "--warmup", "1", "--no-aa"],
            "passes": ["passes"]}[key]

    def go() -> Result:
        return run_mcomp(*argv, cwd=folder)
    return go


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    batch = Batch(lambda key: _prepare(key, tmp_path_factory.mktemp(key)), selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


def _ok(res: Result) -> Result:
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.explain()
    return res


# --------------------------------------------------------------------------- start-up


def test_help_imports_no_graph_or_runtime_library():
    probe = f"HEAVY = {HEAVY!r}\n" + HELP_PROBE
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert {"prune", "quantize", "distill", "optimize", "inspect", "bench", "passes"} <= set(found["commands"])
    for argv, text in found["texts"].items():
        assert text.strip(), f"mcomp {argv} printed nothing"
    for name in found["commands"]:
        assert found["texts"][f"{name} --help"].startswith("Usage: mcomp " + name), found["texts"][f"{name} --help"]
    assert "static: QDQ int8" in found["texts"]["quantize --help"]  # the modes' help, read without onnxruntime
    assert found["heavy"] == [], f"--help imported {found['heavy']}"


def test_a_pipeline_file_typo_is_answered_without_the_graph_libraries(tmp_path):
    """A YAML typo is answered before anything heavy is imported (it took ~1.7 s of onnx_ir on a quiet
    machine, 11 s on a loaded one, to say that a pass name is misspelled)."""
    (tmp_path / "bad.yaml").write_text("model: x.onnx\nsteps:\n  - prnue: {}\n")
    probe = (f"HEAVY = {HEAVY!r}\n" "import json, sys\nfrom mcomp.cli.main import app\n"
             "try:\n    app(['run', 'bad.yaml'], prog_name='mcomp')\nexcept SystemExit as e:\n    code = e.code\n"
             "print(json.dumps({'code': code, 'heavy': sorted(m for m in HEAVY if m in sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["code"] == 2 and "unknown pass 'prnue'" in proc.stderr, proc.stderr[-2000:]
    assert found["heavy"] == [], f"reading a pipeline file imported {found['heavy']}"


def test_declared_quantize_modes_are_the_registered_schemes():
    """The modes and their help are declared apart from the scheme classes (so help needs no onnxruntime):
    each declared mode's module registers that very mode, and nothing else registers."""
    from mcomp.passes.quantize import schemes

    assert {mode: schemes.get(mode).name for mode in schemes.MODES} == {m: m for m in schemes.MODES}
    assert sorted(schemes.REGISTRY) == sorted(schemes.MODES)  # in import order, which other tests change
    for mode, (module, _) in schemes.DECLARED.items():
        cls = schemes.get(mode)
        assert cls.__module__ == f"{schemes.__name__}.{module}"
        assert not hasattr(cls, "help")  # DECLARED is the one place a mode's help is written


# --------------------------------------------------------------------------- stdout, width, markup


@uses("inspect")
def test_inspect_prints_on_stdout_whole_and_unmarked(runs):
    res = _ok(runs["inspect"])
    lines = res.out.splitlines()
    assert lines[0].strip() == MODEL, res.explain()
    assert any("MACs" in line for line in lines), res.explain()  # `mcomp inspect m.onnx | grep MACs`
    assert any("image: float32 [batch, 1, 8, 8]" in line for line in lines), res.explain()
    assert "MACs" not in res.stderr


@uses("inspect-json")
def test_inspect_json_is_alone_on_stdout(runs):
    res = _ok(runs["inspect-json"])
    assert json.loads(res.out)["path"].endswith(MODEL)
    assert "MACs" not in res.stderr  # --json: no table anywhere


@uses("bench")
def test_bench_table_on_stdout(runs):
    res = _ok(runs["bench"])
    assert "p50 ms" in res.out and MODEL in res.out, res.explain()
    assert "p50 ms" not in res.stderr


@uses("passes")
def test_passes_table_on_stdout_at_full_width(runs):
    from mcomp.passes.quantize import Quantize

    res = _ok(runs["passes"])
    description = Quantize.Config.model_fields["max_range_ratio"].description
    assert len(description) > 80
    assert any(description in line for line in res.out.splitlines()), res.explain()  # one line, not cut at 80
    assert "[default: the pipeline's input model]" in res.out  # distill's teacher: brackets kept


def test_piped_console_renders_full_width_text_as_is():
    from mcomp.cli.console import Stream

    buffer = io.StringIO()
    stream = Stream(file=buffer, markup=False, highlight=False)
    table = Table(title="net[fp32].onnx")
    table.add_column("what")
    table.add_row("x" * 300 + " [bold]literal[/]")
    stream.print(table)
    text = buffer.getvalue()
    assert "net[fp32].onnx" in text and "x" * 300 + " [bold]literal[/]" in text
    assert "\x1b[" not in text  # no colour codes for a file
