"""``mcomp distill`` and the prune → quantize → distill → optimize pipeline, run as a user would."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from clirun import REPO, Batch, Result, run_mcomp, run_shell, selected_keys, snapshot, uses

ASSETS = REPO / "core" / "assets"
TRAIN, EVAL = ASSETS / "digits_train.npz", ASSETS / "digits_eval.npz"


def _five_class_teacher(path: Path) -> None:
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    graph = oh.make_graph(
        [oh.make_node("Flatten", ["image"], ["flat"]), oh.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)],
        "five", [oh.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 5])],
        [nh.from_array(np.ones((5, 64), np.float32), "w"), nh.from_array(np.zeros(5, np.float32), "b")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)


def _student(path: Path) -> None:
    from mcomp import model as model_io
    from mcomp.pass_base import Context
    from mcomp.passes.prune import Prune

    model = model_io.load(ASSETS / "digits_cnn.onnx").model
    onnx.save(model_io.to_proto(Prune(method="magnitude", rate=0.9, protect_ends=False)(model, Context()).model), path)


BAD = {
    # data without the model's inputs
    "bad-data": lambda d: (np.savez(d / "train.npz", x=np.zeros((8, 1, 8, 8), np.float32)), ["--data", "train.npz"]),
    # a student whose outputs do not match the teacher's
    "bad-outputs": lambda d: (_five_class_teacher(d / "teacher.onnx"), ["--data", str(TRAIN)]),
    # labels of the wrong shape
    "bad-labels": lambda d: (np.savez(d / "train.npz", image=np.load(TRAIN)["image"][:64],
                                      labels=np.zeros((64, 3), np.int64)), ["--data", "train.npz"]),
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cli")
    student = root / "student.onnx"

    def prepare(key: str):
        folder = root / key
        folder.mkdir()
        if key in BAD or key in ("distill", "plain"):
            if not student.exists():
                _student(student)
            shutil.copy(student, folder / "student.onnx")
        if key in BAD:
            shutil.copy(ASSETS / "digits_cnn.onnx", folder / "teacher.onnx")
            _, data_args = BAD[key](folder)
            args = ["distill", "student.onnx", "--teacher", "teacher.onnx", *data_args, "--epochs", "1"]
        elif key == "distill":
            args = ["distill", "student.onnx", "--teacher", ASSETS / "digits_cnn.onnx", "--data", TRAIN, "--eval-data",
                    EVAL, "--epochs", "4", "--lr", "0.01", "--threads", "1", "--json", "--runs", "3"]
        elif key == "pipeline":
            args = ["run", REPO / "configs" / "pipeline.yaml", "-o", "out.onnx", "--json", "--threads", "1"]
        elif key == "plain":
            # stderr is a pipe here, as in CI: progress comes as plain lines (every line, at 0 s between them)
            script = (f"MCOMP_PROGRESS_SECONDS=0 mcomp distill student.onnx --teacher {ASSETS / 'digits_cnn.onnx'} "
                      f"--data {TRAIN} --epochs 2 --time-budget 600 --threads 1 --runs 3 --no-checkpoint")
            args = None
        else:
            raise KeyError(key)
        before = snapshot(folder)

        def go() -> Result:
            res = run_shell(script, cwd=folder) if args is None else run_mcomp(*args, cwd=folder)
            res.folder, res.before = folder, before
            return res
        return go

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]), workers=3)
    yield batch
    batch.close()


@pytest.mark.parametrize("case, message", [
    ("bad-data", "data names do not match the model's inputs"),
    ("bad-outputs", "the student's outputs (logits [N, 10]) do not match the teacher's (logits [N, 5])"),
    ("bad-labels", "labels of shape [64, 3] do not fit output 'logits'"),
])
@uses("{case}")
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(runs, case, message):
    res = runs[case]
    assert res.returncode == 2, res.explain()
    assert len(res.err_lines) == 1 and message in res.stderr, res.explain()
    assert res.stdout == b""
    assert snapshot(res.folder) == res.before, "nothing is written"


@uses("distill")
def test_distill_command_writes_model_report_and_checkpoint(runs):
    res = runs["distill"]
    folder = res.folder
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    step = doc["steps"][0]
    assert step["pass"] == "distill" and step["options"]["epochs"] == 4
    assert "epochs" in step["summary"] and len(step["changes"]["history"]) == 5
    assert doc["accuracy"]["candidate"] > doc["accuracy"]["reference"] + 0.2  # the input is the pruned student
    assert (folder / "student.distill.onnx").exists() and (folder / "student.distill.report.json").exists()
    assert (folder / "student.distill.ckpt" / "last.pt").exists()


@uses("plain")
def test_progress_lines_when_stderr_is_not_a_terminal_and_auto_lr_and_time_budget(runs):
    res = runs["plain"]
    folder = res.folder
    assert res.returncode == 0, res.explain()
    lines = res.err_lines
    assert any(l.startswith("distill: LR range test · lr") for l in lines), res.explain()
    assert any(l.startswith("distill: epoch 1/2 · batch") for l in lines), res.explain()
    assert any(l.startswith("distill: epoch 1 took") and "2 epochs ≈" in l for l in lines), res.explain()
    assert "\x1b" not in res.stderr, "plain lines, no terminal control codes"
    doc = json.loads((folder / "student.distill.report.json").read_text())
    step = doc["steps"][0]
    assert step["options"]["time_budget"] == 600 and step["options"]["lr"] is None
    changes = step["changes"]
    assert changes["training"]["lr_source"] == "LR range test"
    assert changes["lr_range_test"]["lr"] == changes["training"]["lr"]
    assert changes["time"]["budget_seconds"] == 600 and changes["time"]["epochs_run"] == 2
    assert changes["fidelity"]["after"]["cosine"] > changes["fidelity"]["before"]["cosine"]


@uses("pipeline")
def test_prune_quantize_distill_optimize_pipeline(runs):
    res = runs["pipeline"]
    folder = res.folder
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    assert [s["pass"] for s in doc["steps"]] == ["prune", "quantize", "distill", "optimize"]
    distill = doc["steps"][2]["changes"]
    assert distill["teacher"]["source"] == "the pipeline's input model"
    assert distill["quantized"]["tensors"] > 0, "the quantized student was trained as QDQ"
    assert doc["accuracy"]["drop"] <= 0.01, doc["accuracy"]
    assert (folder / "out.onnx").exists()


@pytest.mark.slow
def test_pipeline_on_a_pytorch_checkpoint(tmp_path):
    res = run_mcomp("run", REPO / "configs" / "pipeline.yaml", ASSETS / "digits_cnn.pt", "--arch",
                    REPO / "scripts" / "digits_arch.py:digits_cnn", "--input-shape", "1,1,8,8", "-o", "out.onnx",
                    "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    assert [s["pass"] for s in doc["steps"]] == ["prune", "quantize", "distill", "optimize"]
    assert doc["accuracy"]["drop"] <= 0.01, doc["accuracy"]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    shutil.copy(ASSETS / "digits_cnn.onnx", tmp_path / "teacher.onnx")
    _student(tmp_path / "student.onnx")
    res = run_shell(f"OMP_NUM_THREADS=1 {sys.executable} -m torch.distributed.run --nproc-per-node 2 -m mcomp "
                    f"distill student.onnx --teacher teacher.onnx --data {TRAIN} --epochs 2 --lr 0.01 --threads 1 "
                    "--json -o out.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)  # one report, from rank 0
    assert "2 processes" in doc["steps"][0]["summary"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.distill.ckpt", "out.onnx", "out.report.json",
                                                          "student.onnx", "teacher.onnx"]


def test_plain_progress_lines_are_throttled_and_quiet_silences_them(monkeypatch, capsys):
    from rich.console import Console

    from mcomp.cli import console

    monkeypatch.setattr(console, "err", Console(stderr=True, force_terminal=False))
    monkeypatch.delenv("MCOMP_PROGRESS_SECONDS", raising=False)
    now = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    console.configure(quiet=False)
    with console.Progress(enabled=True) as progress:
        for t, done in ((101, 1), (116, 2), (120, 3), (131, 4)):  # every 10 s by default
            now[0] = t
            progress("distill: epoch 1/9 · batch", done, 9)
    assert capsys.readouterr().err.splitlines() == ["distill: epoch 1/9 · batch  2/9  ~1:45 left",
                                                    "distill: epoch 1/9 · batch  4/9  ~0:50 left"]
    console.configure(quiet=True)
    try:
        with console.Progress(enabled=True) as progress:
            now[0] += 1000
            progress("distill", 1, 2)
    finally:
        console.configure(quiet=False)
    assert capsys.readouterr().err == ""
