"""Help that speaks to users: options in panels, values and arguments in words, shell completion,
and ``mcomp passes -q`` for scripts.

Help is parsed as a user sees it (a fresh interpreter, stdout a pipe); completion is asked the way
the installed shell script asks it (``_MCOMP_COMPLETE`` and the shell's words in the environment).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from clirun import run_mcomp

PANELS = ["Arguments", "Quantize options", "Calibration (static)", "Accuracy and speed guards", "Data and measurement",
          "Output and reports", "Checkpoints", "General"]
COMMANDS = ("inspect", "prune", "distill", "quantize", "optimize", "run", "bench", "compare", "export", "passes")
HEAVY = ("onnx", "onnx_ir", "onnxruntime", "torch", "numpy")

# Runs the console script's entry point as `mcomp` (so the completion variable is _MCOMP_COMPLETE)
# and says on stderr which heavy modules were imported by the time it exited.
ENTRY = f"""
import sys
sys.argv[0] = "mcomp"
try:
    from mcomp.cli.main import run
    run()
finally:
    print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


def _mcomp(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("_MCOMP")} | (env or {})
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, env=environment,
                          timeout=300)


def _sections(text: str) -> dict[str, list[str]]:
    """Help text → {section title: its lines}; a title is an unindented line ending in ':'."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif current is not None and line.strip():
            current.append(line)
    return sections


def _rows(lines: list[str]) -> dict[str, str]:
    """An options section → {the row's first flag: its help}; help that starts on the next line counts."""
    rows: dict[str, str] = {}
    flag = None
    for line in lines:
        match = re.match(r"^  (-\S+?)(?:,? .*?)?(?: {2,}(\S.*))?$", line)
        if match and not line.startswith("   "):
            flag = match.group(1).rstrip(",")
            assert flag not in rows, f"{flag} listed twice"
            rows[flag] = match.group(2) or ""
        elif flag is not None and not rows[flag]:
            rows[flag] = line.strip()
    return rows


@pytest.fixture(scope="module")
def quantize_help() -> str:
    proc = _mcomp(["quantize", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr  # grouping imports nothing a model needs
    return proc.stdout


def test_quantize_help_is_in_panels_in_order(quantize_help):
    titles = list(_sections(quantize_help))
    assert titles == PANELS, titles


def test_every_quantize_option_appears_once_with_a_help_line(quantize_help):
    from mcomp.cli.main import pass_click_command

    sections = _sections(quantize_help)
    listed: dict[str, str] = {}
    for title in PANELS[1:]:
        rows = _rows(sections[title])
        assert not set(rows) & set(listed), f"{set(rows) & set(listed)} in two panels"
        listed |= rows
    command = pass_click_command("quantize")
    context = command.context_class(command, info_name="quantize", help_option_names=["-h", "--help"])
    options = [p for p in command.get_params(context) if p.param_type_name == "option"]
    assert len(listed) == len(options)
    assert all(len(set(p.opts) & set(listed)) == 1 for p in options), [p.opts for p in options]
    assert all(text for text in listed.values()), [flag for flag, text in listed.items() if not text]
    assert len(options) > 30


def test_options_land_in_their_panels(quantize_help):
    sections = {title: _rows(lines) for title, lines in _sections(quantize_help).items() if title in PANELS[1:]}
    assert {"--mode", "--bits"} <= set(sections["Quantize options"])
    assert {"--calibration", "--percentile"} <= set(sections["Calibration (static)"])  # the CommandSpec's panels
    assert {"--max-drop", "--latency-guard", "--explain", "--min-speedup"} <= set(sections["Accuracy and speed guards"])
    assert set(sections["Data and measurement"]) == {"--data", "--input-shape", "--runs", "--fidelity", "--metric",
                                                     "--provider", "--threads"}
    assert set(sections["Output and reports"]) == {"-o", "--report", "--report-md", "--report-html", "--json"}
    assert set(sections["Checkpoints"]) == {"--arch", "--trust-checkpoint"}
    assert set(sections["General"]) == {"-q", "--debug", "-h"}


def test_help_text_prints_as_written(quantize_help):
    """No markup is read: bounds and defaults in square brackets print whole, and a pipe gets no colour."""
    assert "[90 < x ≤ 100]" in quantize_help and "[default: <stem>.<pass>.onnx beside the input]" in " ".join(
        quantize_help.split())
    assert "\x1b[" not in quantize_help
    assert [line for line in quantize_help.splitlines() if line != line.rstrip()] == []


def test_mode_help_has_a_paragraph_per_mode(quantize_help):
    from mcomp.passes.quantize import schemes

    lines = [line.strip() for line in quantize_help.splitlines()]
    for mode, (_, text) in schemes.DECLARED.items():
        assert any(line.startswith(f"{mode}: {text.split()[0]}") if text else line == mode for line in lines), mode


def test_usage_lines_name_arguments_in_words_and_values_are_not_python_types():
    probe = ("import contextlib, io, json\nfrom mcomp.cli.main import app\ntexts = {}\n"
             f"for name in {COMMANDS!r}:\n"
             "    buffer = io.StringIO()\n"
             "    with contextlib.redirect_stdout(buffer):\n"
             "        app([name, '--help'], prog_name='mcomp', standalone_mode=False)\n"
             "    texts[name] = buffer.getvalue()\n"
             "print(json.dumps(texts))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = json.loads(proc.stdout)
    usage = {name: text.splitlines()[0] for name, text in texts.items()}
    assert usage["quantize"] == "Usage: mcomp quantize [OPTIONS] MODEL"
    assert usage["distill"] == "Usage: mcomp distill [OPTIONS] STUDENT"
    assert usage["run"] == "Usage: mcomp run [OPTIONS] PIPELINE.yaml [MODEL]"
    assert usage["compare"] == "Usage: mcomp compare [OPTIONS] REFERENCE CANDIDATE"
    assert usage["bench"] == "Usage: mcomp bench [OPTIONS] MODELS..."
    for name, text in texts.items():
        assert not re.search(r"[{}]", usage[name]), usage[name]
        arguments = _sections(text).get("Arguments", [])
        assert all(re.match(r"^  [A-Z][A-Z_.a-z]*(\.\.\.)? ", line) for line in arguments if line[2] != " "), arguments
        assert not re.search(r"<(str|int|float|path|list)\b|int range|float range|list\[", text), (name, text)
        assert "General" in _sections(text), name


def test_missing_argument_is_named_as_in_usage(tmp_path):
    res = run_mcomp("quantize", cwd=tmp_path)
    assert res.returncode == 2 and "Missing argument 'MODEL'" in res.stderr, res.explain()


def test_pass_panel_title_follows_the_pass_or_its_spec():
    from mcomp import registry
    from mcomp.cli.generate import CommandSpec, pass_command

    assert pass_command(registry.get("prune")).panel == "Prune options"
    assert pass_command(registry.get("prune"), CommandSpec(panel="Pruning")).panel == "Pruning"


def test_a_config_may_split_its_options_into_panels():
    """A field with json_schema_extra={"panel": ...} shows in that panel; the others in the pass's own."""
    from typing import ClassVar, Literal

    import typer.main
    from pydantic import Field
    from typer.models import CommandInfo

    from mcomp.cli.generate import pass_command
    from mcomp.cli.helpformat import HelpCommand
    from mcomp.pass_base import Pass, PassConfig

    class Squeeze(Pass):
        """Squeeze a model (a pass for this test)."""

        name: ClassVar[str] = "squeeze-it"

        class Config(PassConfig):
            level: int = Field(1, ge=0, description="how hard [0 ≤ x]")
            method: Literal["a", "b"] = Field("a", description="a: the first; b: the second",
                                              json_schema_extra={"panel": "Method"})

        def call(self, model, ctx):
            raise NotImplementedError("help only")

    function = pass_command(Squeeze)
    command = typer.main.get_command_from_info(CommandInfo(name="squeeze-it", callback=function, cls=HelpCommand),
                                               pretty_exceptions_short=False, rich_markup_mode=None)
    command.default_panel = function.panel
    context = command.context_class(command, info_name="squeeze-it", help_option_names=["-h", "--help"])
    sections = _sections(command.get_help(context))
    assert list(sections)[:3] == ["Arguments", "Squeeze it options", "Method"], list(sections)
    assert set(_rows(sections["Squeeze it options"])) == {"--level"}
    assert set(_rows(sections["Method"])) == {"--method"}
    assert "[0 ≤ x]" in " ".join(sections["Squeeze it options"])


def test_choice_paragraphs_only_when_every_choice_is_described():
    from mcomp.cli.generate import _choice_paragraphs

    assert _choice_paragraphs("a: one; b: two", ("a", "b")) == "a: one\n\nb: two"
    assert _choice_paragraphs("a: one; b", ("a", "b")) == "a: one\n\nb"
    assert _choice_paragraphs("x; y", ("a", "b")) == "x; y"  # not a per-choice description
    assert _choice_paragraphs("a: one; b: two", ("a", "b", "c")) == "a: one; b: two"


# --------------------------------------------------------------------------- completion


@pytest.mark.parametrize("words, cword, expected", [
    ("mcomp qu", 1, "quantize"),              # a lazily built pass command
    ("mcomp quantize --mo", 2, "--mode"),     # its options, built from the Config
    ("mcomp pa", 1, "passes"),
    ("mcomp bench --war", 2, "--warmup"),
])
def test_bash_completion(words, cword, expected):
    proc = _mcomp([], {"_MCOMP_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [expected], proc.stdout
    assert "HEAVY []" in proc.stderr, proc.stderr  # completing a command does not load a model library


def test_zsh_completion_offers_choices():
    proc = _mcomp([], {"_MCOMP_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "mcomp quantize m.onnx --mode w"})
    assert proc.returncode == 0 and "weight-only" in proc.stdout, proc.stdout + proc.stderr


def test_show_completion_prints_the_script():
    # typer guesses the shell from the parent processes (under make: sh, which it does not support);
    # with detection off, --show-completion takes the shell as its value, as a user names it
    proc = _mcomp(["--show-completion", "bash"], env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert proc.returncode == 0 and "_MCOMP_COMPLETE=complete_bash" in proc.stdout, proc.stdout + proc.stderr
    help_text = _mcomp(["--help"]).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text


# --------------------------------------------------------------------------- passes -q


def test_passes_quiet_prints_the_names_one_per_line(tmp_path):
    from mcomp import registry

    res = run_mcomp("passes", "-q", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.explain()
    assert res.out.splitlines() == list(registry.names())
    full = run_mcomp("passes", "-q", "--json", cwd=tmp_path)  # --json is the whole document, -q or not
    assert [d["name"] for d in json.loads(full.out)] == list(registry.names())


def test_held_out_data_is_eval_and_eval_data_on_both_commands_that_take_it(tmp_path):
    """``mcomp auto`` took ``--eval`` and ``mcomp distill`` ``--eval-data`` for the same thing: a user of one
    got "No such option" on the other. Each now takes both spellings."""
    for command in ("auto", "distill"):
        shown = run_mcomp(command, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "--eval" in shown.out and "--eval-data" in shown.out, shown.out
