"""``mcomp distill`` and the prune → quantize → distill → optimize pipeline, run as a user would."""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from clirun import REPO, run_mcomp, run_shell, snapshot

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
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cli")
    _student(root / "student.onnx")
    jobs = {}
    for name, make in BAD.items():
        folder = root / name
        folder.mkdir()
        shutil.copy(root / "student.onnx", folder / "student.onnx")
        shutil.copy(ASSETS / "digits_cnn.onnx", folder / "teacher.onnx")
        _, data_args = make(folder)
        before = snapshot(folder)
        jobs[name] = (folder, before, ["distill", "student.onnx", "--teacher", "teacher.onnx", *data_args,
                                       "--epochs", "1"])
    ok = root / "ok"
    ok.mkdir()
    shutil.copy(root / "student.onnx", ok / "student.onnx")
    jobs["distill"] = (ok, None, ["distill", "student.onnx", "--teacher", str(ASSETS / "digits_cnn.onnx"), "--data",
                                  str(TRAIN), "--eval-data", str(EVAL), "--epochs", "4", "--lr", "0.01",
                                  "--threads", "1", "--json", "--runs", "3"])
    pipe = root / "pipeline"
    pipe.mkdir()
    jobs["pipeline"] = (pipe, None, ["run", str(REPO / "configs" / "pipeline.yaml"), "-o", "out.onnx", "--json",
                                     "--threads", "1"])
    plain = root / "plain"
    plain.mkdir()
    shutil.copy(root / "student.onnx", plain / "student.onnx")
    # stderr is a pipe here, as in CI: progress comes as plain lines (every line, at 0 s between them)
    script = (f"MCOMP_PROGRESS_SECONDS=0 mcomp distill student.onnx --teacher {ASSETS / 'digits_cnn.onnx'} "
              f"--data {TRAIN} --epochs 2 --time-budget 600 --threads 1 --runs 3 --no-checkpoint")
    with ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(run_mcomp, *args, cwd=folder) for k, (folder, _, args) in jobs.items()}
        futures["plain"] = pool.submit(run_shell, script, cwd=plain)
        jobs["plain"] = (plain, None, [])
        yield {k: (f.result(), jobs[k][0], jobs[k][1]) for k, f in futures.items()}


@pytest.mark.parametrize("case, message", [
    ("bad-data", "data names do not match the model's inputs"),
    ("bad-outputs", "the student's outputs (logits [N, 10]) do not match the teacher's (logits [N, 5])"),
    ("bad-labels", "labels of shape [64, 3] do not fit output 'logits'"),
])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(runs, case, message):
    res, folder, before = runs[case]
    assert res.returncode == 2, res.explain()
    assert len(res.err_lines) == 1 and message in res.stderr, res.explain()
    assert res.stdout == b""
    assert snapshot(folder) == before, "nothing is written"


def test_distill_command_writes_model_report_and_checkpoint(runs):
    res, folder, _ = runs["distill"]
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)
    step = doc["steps"][0]
    assert step["pass"] == "distill" and step["options"]["epochs"] == 4
    assert "epochs" in step["changes"]["summary"] and len(step["changes"]["history"]) == 5
    assert doc["accuracy"]["candidate"] > doc["accuracy"]["reference"] + 0.2  # the input is the pruned student
    assert (folder / "student.distill.onnx").exists() and (folder / "student.distill.report.json").exists()
    assert (folder / "student.distill.ckpt" / "last.pt").exists()


def test_progress_lines_when_stderr_is_not_a_terminal_and_auto_lr_and_time_budget(runs):
    res, folder, _ = runs["plain"]
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


def test_prune_quantize_distill_optimize_pipeline(runs):
    res, folder, _ = runs["pipeline"]
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
                    "--json", cwd=tmp_path, timeout=600)
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
                    "--json -o out.onnx", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.explain()
    doc = json.loads(res.out)  # one report, from rank 0
    assert "2 processes" in doc["steps"][0]["changes"]["summary"]
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
        for t, done in ((101, 1), (116, 2), (120, 3), (131, 4)):  # every 15 s by default
            now[0] = t
            progress("distill: epoch 1/9 · batch", done, 9)
    assert capsys.readouterr().err.splitlines() == ["distill: epoch 1/9 · batch (2/9)", "distill: epoch 1/9 · batch (4/9)"]
    console.configure(quiet=True)
    try:
        with console.Progress(enabled=True) as progress:
            now[0] += 1000
            progress("distill", 1, 2)
    finally:
        console.configure(quiet=False)
    assert capsys.readouterr().err == ""
