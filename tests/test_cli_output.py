"""Where output goes (design §5): a terminal never gets protobuf or waits on stdin, a rebuild that
replaces a file says so, a pipeline's output folder is made, and builtin: assets work as MODEL."""

from __future__ import annotations

from clirun import DIGITS, run_mcomp


def _with_terminal(args: list[str], cwd, *, stdin_tty: bool = False, stdout_tty: bool = False):
    """Runs mcomp with stdin and/or stdout on a pseudo-terminal; stderr captured."""
    res = run_mcomp(*args, cwd=cwd, terminal=("stdin",) * stdin_tty + ("stdout",) * stdout_tty)
    return res.returncode, res.stderr


def test_model_to_a_terminal_is_refused_in_one_line(tmp_path):
    code, err = _with_terminal(["optimize", str(DIGITS), "-o", "-", "--runs", "3"], tmp_path, stdout_tty=True)
    assert code == 2 and "stdout is a terminal" in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_model_from_a_terminal_is_refused_in_one_line(tmp_path):
    code, err = _with_terminal(["inspect", "-"], tmp_path, stdin_tty=True)
    assert code == 2 and "stdin is a terminal" in err and len(err.strip().splitlines()) == 1, err


def test_a_rebuild_says_it_replaced_the_output(tmp_path):
    first = run_mcomp("optimize", "builtin:digits", "--runs", "3", cwd=tmp_path)
    second = run_mcomp("optimize", "builtin:digits", "--runs", "3", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, second.explain()
    assert "wrote digits.optimize.onnx" in first.stderr and "replaced digits.optimize.onnx" in second.stderr
    assert (tmp_path / "digits.optimize.onnx").exists()  # beside the caller, not inside the package


def test_a_pipeline_output_folder_is_made_and_builtin_works_everywhere(tmp_path):
    (tmp_path / "p.yaml").write_text("model: builtin:digits\nsteps:\n  - optimize: {}\nmeasure: {runs: 3}\n"
                                     "output: build/deep/o.onnx\n")
    ran = run_mcomp("run", "p.yaml", cwd=tmp_path)
    assert ran.returncode == 0 and (tmp_path / "build/deep/o.onnx").exists(), ran.explain()
    shown = run_mcomp("inspect", "builtin:digits", cwd=tmp_path)
    assert shown.returncode == 0 and "MACs" in shown.out, shown.explain()
    compared = run_mcomp("compare", "builtin:digits", "build/deep/o.onnx", "--data", "builtin:digits-eval",
                         "--runs", "3", cwd=tmp_path)
    assert compared.returncode == 0 and "fidelity" in compared.out, compared.explain()


def test_inspect_cuts_a_dim_formula_in_its_table_and_json_keeps_it():
    """A YOLOv8 export names its anchors dim with a 380-character formula of height and width."""
    from mcomp.cli.cmd_inspect import DIM_NAME_WIDTH, _signature

    formula = "(floor(floor(floor(height/2 - 1/2)/2)/2) + 1)*(floor(floor(floor(width/2 - 1/2)/2)/2) + 1)"
    line = _signature({"name": "output0", "dtype": "float32", "shape": ["batch", 22, formula], "dynamic_dims": [0, 2]})
    assert line == f"output0: float32 [batch, 22, {formula[:DIM_NAME_WIDTH - 1]}…], dims 0,2 dynamic"
    assert _signature({"name": "x", "dtype": "float32", "shape": ["N", 3], "dynamic_dims": [0]}) == \
        "x: float32 [N, 3], dim 0 dynamic"


def test_a_checkpoints_warning_is_one_line_addressed_to_the_user(tmp_path):
    """A checkpoint exported at a fixed batch warns through Python's warnings, which printed mcomp's
    source path and line and the line of code under it; with -q nothing."""
    import torch

    class Pinned(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, 4) * 2

    torch.export.save(torch.export.export(Pinned(), (torch.zeros(2, 4),)), str(tmp_path / "pinned.pt2"))
    res = run_mcomp("export", "pinned.pt2", "-o", "p.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "warning: pinned.pt2: the program was exported with a fixed batch size (2); kept as is", lines
    assert len(lines) == 2 and ".py:" not in res.stderr
    quiet = run_mcomp("export", "pinned.pt2", "-o", "q.onnx", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.explain()
