"""Issue 12, "More than one line, or a hang": every answer is one line on stderr with its exit code,
whatever the input (a 10 MB YAML, a YAML error with a newline, a bad option value), whenever Ctrl-C
comes (imports, parsing, the command's body), and a pickle that would run a command is named and
refused, never run. No test asserts a duration: a hang is caught by the run's timeout."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mcomp
import mcomp.cli
import mcomp.kernels
import mcomp.passes
from clirun import mcomp_argv, run_mcomp, snapshot

MCOMP_FOLDERS = tuple(str(Path(m.__file__).parent) + os.sep for m in (mcomp, mcomp.cli, mcomp.passes, mcomp.kernels))
HANG = 120.0  # a 10 MB YAML used to take minutes; a single command here takes seconds
INTERRUPTED = "error: interrupted; nothing was written"


def one_line(res, code: int, *needles: str) -> None:
    assert res.returncode == code, res.explain()
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith("error: "), res.explain()
    for needle in needles:
        assert needle in res.stderr, res.explain()


# --------------------------------------------------------------------------- YAML


def big_yaml(path: Path, items: int = 250_000) -> Path:
    """A pipeline whose unknown key holds a long list: 10 MB at 250,000 items."""
    lines = ["steps:", "  - optimize: {}", "junk:", *(f"  - item {i:06d} with some more padding text" for i in range(items))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_10mb_pipeline_file_is_refused_at_once_naming_its_size(tmp_path: Path) -> None:
    path = big_yaml(tmp_path / "big.yaml")
    assert path.stat().st_size > 10_000_000
    before = snapshot(tmp_path)
    res = run_mcomp("run", "big.yaml", "builtin:digits", cwd=tmp_path, timeout=HANG)
    one_line(res, 2, f"{path.stat().st_size:,} bytes", "1,048,576")
    assert snapshot(tmp_path) == before


def test_a_10mb_space_file_is_refused_too(tmp_path: Path) -> None:
    big_yaml(tmp_path / "space.yaml")
    res = run_mcomp("auto", "builtin:digits", "--data", "builtin:digits-train", "--eval", "builtin:digits-eval",
                    "--max-drop", "1", "--space", "space.yaml", cwd=tmp_path, timeout=HANG)
    one_line(res, 2, "space.yaml", "too big for a space file")


def test_a_long_list_under_the_cap_is_parsed_once_and_named(tmp_path: Path) -> None:
    """Just under the cap, the answer is the real mistake (the unknown key, with its line)."""
    from mcomp.errors import ConfigError
    from mcomp.pipeline_spec import MAX_YAML_BYTES, load_file

    path = big_yaml(tmp_path / "p.yaml", items=20_000)
    assert path.stat().st_size < MAX_YAML_BYTES
    with pytest.raises(ConfigError, match=r"p.yaml:3: junk: unknown option 'junk'"):
        load_file(path)


def test_nested_aliases_are_refused_before_they_expand() -> None:
    from mcomp.errors import ConfigError
    from mcomp.pipeline_spec import load_text

    text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for name, prev in zip("bcdefgh", "abcdefg"):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    text += "steps: [optimize: {input_shape: *h}]\n"
    with pytest.raises(ConfigError, match="more than 100,000 values"):
        load_text(text, "laughs.yaml")


def test_a_yaml_error_with_a_newline_in_it_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "nul.yaml").write_bytes(b"steps:\n  - optimize: {level: \x00}\n")  # libyaml's ReaderError spans lines
    one_line(run_mcomp("run", "nul.yaml", "builtin:digits", cwd=tmp_path, timeout=HANG), 2, "nul.yaml", "not valid YAML")


def test_fail_collapses_any_message_to_one_line(capsys) -> None:
    from mcomp.cli.console import fail

    exit_ = fail("first line\n  second line\r\n\tthird", 2)
    assert exit_.exit_code == 2
    assert capsys.readouterr().err == "error: first line second line third\n"


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize("args", [
    ("optimize", "builtin:digits", "--threads", "0"),
    ("bench", "builtin:digits", "--threads", "-3"),
    ("bench", "builtin:digits", "--runs", "0"),
    ("quantize", "builtin:digits", "--mode", "int3"),  # a pass command, built when first asked for
    ("prune", "builtin:digits", "--rate", "lots"),
])
def test_a_bad_option_value_is_one_line_exit_2(tmp_path: Path, args) -> None:
    res = run_mcomp(*args, cwd=tmp_path, timeout=HANG)
    one_line(res, 2, args[-2])
    assert "Usage:" not in res.stderr and snapshot(tmp_path) == {}


# --------------------------------------------------------------------------- Ctrl-C


def _interrupt(args, cwd: Path, *, milestone: str | None = None, delay: float = 0.0, argv: list | None = None):
    """Runs mcomp and sends SIGINT once the import ``milestone`` has finished (``-X importtime``
    reports each import as it ends), or after ``delay`` seconds. Returns (exit code, stderr lines
    other than import times, whether the signal was sent before the run ended)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    if milestone:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    proc = subprocess.Popen(argv or mcomp_argv(*args), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, sent = [], False
    if milestone:
        for line in proc.stderr:
            seen.append(line)
            if line.rsplit("|", 1)[-1].strip() == milestone:
                proc.send_signal(signal.SIGINT)
                sent = True
                break
    else:
        time.sleep(delay)
        sent = proc.poll() is None
        proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=HANG)[1]
    lines = [line for line in "".join(seen + [rest]).splitlines() if not line.startswith("import time:")]
    return proc.returncode, lines, sent


@pytest.mark.parametrize("milestone", ["typer", "rich.console", "mcomp.cli.main"])
def test_ctrl_c_during_start_up_is_130_and_one_line(tmp_path: Path, milestone: str) -> None:
    code, lines, sent = _interrupt(("inspect", "builtin:digits"), tmp_path, milestone=milestone)
    assert sent and (code, lines) == (130, [INTERRUPTED])


@pytest.mark.parametrize("milestone", ["mcomp.cli.generate", "onnxruntime", "mcomp.passes.optimize.stages"])
def test_ctrl_c_while_a_command_runs_writes_nothing(tmp_path: Path, milestone: str) -> None:
    """Building the pass command (parsing), then the command's body: no output, no temporary file."""
    code, lines, sent = _interrupt(("optimize", "builtin:digits", "-o", "out.onnx"), tmp_path, milestone=milestone)
    if not sent:  # that import never happened in this run (it finished): nothing to test here
        assert code == 0, lines
        return
    assert (code, lines) == (130, [INTERRUPTED])
    assert snapshot(tmp_path) == {}


def test_ctrl_c_through_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mcomp")
    if not script.is_file():
        pytest.skip("no mcomp console script beside this interpreter")
    code, lines, sent = _interrupt((), tmp_path, milestone="typer", argv=[str(script), "inspect", "builtin:digits"])
    assert sent and (code, lines) == (130, [INTERRUPTED])


def test_ctrl_c_at_any_moment_is_130_one_line_or_done(tmp_path: Path) -> None:
    """Timed, as a person would press it. Until Python has run its ``site`` module and started
    ``mcomp/__main__.py`` no program can answer (the interpreter dies of the signal, or prints its own
    report): such a run shows no frame of mcomp's code and is passed over; every other run answers
    as mcomp should, or had finished."""
    for delay in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.5):
        code, lines, _ = _interrupt(("inspect", "builtin:digits"), tmp_path, delay=delay)
        if (code, lines) == (130, [INTERRUPTED]) or (code == 0 and not lines):
            continue
        text = "\n".join(lines)
        assert not any(folder in text for folder in MCOMP_FOLDERS), (delay, code, text)


# --------------------------------------------------------------------------- pickles


class Shell:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __reduce__(self):
        return os.system, ("echo pwned > marker",)


@pytest.mark.parametrize("form", ["plain", pytest.param("torch-zip", marks=pytest.mark.slow)])  # ~10 s each
@pytest.mark.parametrize("trust", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_pickle_that_runs_a_command_is_named_and_never_run(tmp_path: Path, form: str, trust: bool) -> None:
    path = tmp_path / "evil.pt"
    if form == "plain":
        path.write_bytes(pickle.dumps({"weights": Shell()}, protocol=4))
    else:
        torch = pytest.importorskip("torch")
        torch.save({"weights": Shell()}, path)
    for command in ("export", "inspect"):
        res = run_mcomp(command, "evil.pt", *(["-o", "out.onnx"] if command == "export" else []),
                        *(["--trust-checkpoint"] if trust else []), cwd=tmp_path, timeout=HANG)
        one_line(res, 2, "a pickle that would import os.system, refused")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out.onnx").exists()


def test_the_scan_follows_the_stack_not_the_last_strings(tmp_path: Path) -> None:
    """STACK_GLOBAL pops the two strings on top of the stack: pushing harmless names and popping
    them again does not hide os.system; every protocol's spelling of a global is read."""
    from mcomp.torch_io.pickles import forbidden_global

    def s(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    hidden = b"\x80\x04" + s("os") + s("system") + s("torch") + s("Tensor") + b"00\x93."
    (tmp_path / "hidden.pkl").write_bytes(hidden)
    assert forbidden_global(tmp_path / "hidden.pkl") == "os.system"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "p.pkl").write_bytes(pickle.dumps([1, {"k": Shell()}], protocol=protocol))
        assert forbidden_global(tmp_path / "p.pkl") == "os.system", protocol
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0], "s": {1, 2}}, protocol=protocol))
        assert forbidden_global(tmp_path / "ok.pkl") is None, protocol


def test_a_whole_module_checkpoint_is_not_refused(tmp_path: Path) -> None:
    """The classes of a pickled nn.Module (and torch's own rebuild functions) are not what is refused."""
    torch = pytest.importorskip("torch")
    from mcomp.torch_io.pickles import forbidden_global

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    torch.save(net, tmp_path / "net.pt")
    torch.save(net.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert forbidden_global(tmp_path / "net.pt") is None
    assert forbidden_global(tmp_path / "legacy.pt") is None
