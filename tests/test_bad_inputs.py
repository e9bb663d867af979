"""Bad input as a user meets it (issue item 11), through the real command line (a subprocess).

Every case must: exit 2; print exactly one line on stderr, starting "error:", that names
the problem (no traceback); print nothing on stdout; write nothing (no new or changed file
in its folder, no ``<stem>.optimize.onnx``, no report); and leave its input as it was.

Each case runs in a folder of its own holding ``model.onnx`` (the embedded digits CNN) and
``eval.npz`` (its held-out split), plus whatever the case adds. The runs of the selected
tests are started together when the module starts (see ``clirun``), then judged one by one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from onnx import TensorProto, helper

from clirun import DIGITS, DIGITS_EVAL, Batch, Result, run_mcomp, selected_keys, sha256, snapshot, uses

MODEL = "model.onnx"

# key → builder(folder) → (argv after "mcomp", stdin bytes or None)
CASES: dict[str, Callable[[Path], tuple[list[str], bytes | None]]] = {}


def case(key: str):
    def register(build):
        CASES[key] = build
        return build
    return register


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key: str):
        folder = tmp_path_factory.mktemp(re.sub(r"\W+", "_", key))
        shutil.copy(DIGITS, folder / MODEL)
        shutil.copy(DIGITS_EVAL, folder / "eval.npz")
        args, stdin = CASES[key](folder)
        before = snapshot(folder)

        def go() -> Result:
            res = run_mcomp(*args, cwd=folder, stdin=stdin)
            res.before, res.after = before, snapshot(folder)
            return res
        return go

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


def assert_refused(res: Result, *mentions: str, inputs: tuple[str, ...] = (MODEL, "eval.npz")) -> str:
    """The exit-2 contract; returns the error line. A mention may be a regex written as re:…"""
    why = res.explain()
    assert res.returncode == 2, why
    assert "Traceback" not in res.stderr, why
    assert len(res.err_lines) == 1, f"stderr must be exactly one line{why}"
    line = res.err_lines[0]
    assert line.startswith("error: "), why
    for mention in mentions:
        if mention.startswith("re:"):
            assert re.search(mention[3:], line), f"{mention!r} not in the error line{why}"
        else:
            assert mention in line, f"{mention!r} not in the error line{why}"
    assert res.stdout == b"", f"nothing on stdout{why}"
    new = sorted(set(res.after) - set(res.before))
    changed = sorted(k for k in res.before if res.after.get(k) != res.before[k])
    assert not new and not changed, f"written: {new}, changed or removed: {changed}{why}"
    for name in inputs:
        if name in res.before:
            assert sha256(res.folder / name) == res.before[name], f"{name} changed{why}"
    assert not list(res.folder.glob("*.optimize.onnx")) and not list(res.folder.glob("*.report.*")), why
    return line


def tiny_model(path: Path, op: str = "Relu", domain: str = "", import_domain: bool = True) -> None:
    """x[1,4] → op → y, saved without any check (the CLI must do the checking)."""
    node = helper.make_node(op, ["x"], ["y"], domain=domain, name="n0")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain and import_domain else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    path.write_bytes(proto.SerializeToString())


def write_bad_data(folder: Path) -> None:
    data = np.load(DIGITS_EVAL)
    np.savez(folder / "wrong.npz", wrong=data["image"], labels=data["labels"])
    n = len(data["labels"])
    np.savez(folder / "shapes.npz", image=np.zeros((n, 1, 9, 9), np.float32), labels=data["labels"])


def write_pipeline(folder: Path, step: str, extra: str = "", model: str = MODEL) -> None:
    """``step`` lands on line 4 of pipe.yaml."""
    (folder / "pipe.yaml").write_text(f"# a pipeline with a mistake in it\nmodel: {model}\nsteps:\n  - {step}\n{extra}")


# --------------------------------------------------------------------------- unreadable or invalid models


@case("missing-file")
def _(d):
    return ["optimize", "missing.onnx"], None


@uses("missing-file")
def test_missing_file(runs):
    assert_refused(runs["missing-file"], "missing.onnx", "no such file")


@case("directory")
def _(d):
    (d / "folder.onnx").mkdir()
    return ["optimize", "folder.onnx"], None


@uses("directory")
def test_directory(runs):
    assert_refused(runs["directory"], "folder.onnx", "directory")


@case("empty-file")
def _(d):
    (d / "empty.onnx").write_bytes(b"")
    return ["optimize", "empty.onnx"], None


@uses("empty-file")
def test_empty_file(runs):
    assert_refused(runs["empty-file"], "empty.onnx", "empty")


@case("truncated")
def _(d):
    data = DIGITS.read_bytes()
    (d / "half.onnx").write_bytes(data[: len(data) // 2])
    return ["optimize", "half.onnx"], None


@uses("truncated")
def test_truncated_onnx(runs):
    assert_refused(runs["truncated"], "half.onnx", "not a valid ONNX model", inputs=(MODEL, "half.onnx"))


@case("text-file")
def _(d):
    (d / "notes.onnx").write_text("this is a text file, not a model\nsecond line\n")
    return ["optimize", "notes.onnx"], None


@uses("text-file")
def test_text_file(runs):
    assert_refused(runs["text-file"], "notes.onnx", "not a valid ONNX model", inputs=(MODEL, "notes.onnx"))


RANDOM_SIZES = (1, 100, 200_000)
for _size in RANDOM_SIZES:
    @case(f"random-bytes-{_size}")
    def _(d, size=_size):
        (d / "noise.onnx").write_bytes(np.random.default_rng(1234 + size).bytes(size))
        return ["optimize", "noise.onnx"], None


# one size in make test, the others in make test-slow
@pytest.mark.parametrize("size", [s if s == 100 else pytest.param(s, marks=pytest.mark.slow) for s in RANDOM_SIZES])
@uses("random-bytes-{size}")
def test_random_bytes(runs, size):
    assert_refused(runs[f"random-bytes-{size}"], "noise.onnx", "re:(not a valid|invalid) ONNX model",
                   inputs=(MODEL, "noise.onnx"))


@case("unknown-domain")
def _(d):
    tiny_model(d / "foo.onnx", "Foo", "my.domain")
    return ["optimize", "foo.onnx"], None


@uses("unknown-domain")
def test_op_in_unknown_domain(runs):
    assert_refused(runs["unknown-domain"], "foo.onnx", "Foo", "my.domain", inputs=(MODEL, "foo.onnx"))


@case("unknown-op")
def _(d):
    tiny_model(d / "frob.onnx", "Frobnicate")
    return ["optimize", "frob.onnx"], None


@uses("unknown-op")
def test_unknown_op_in_default_domain(runs):
    assert_refused(runs["unknown-op"], "frob.onnx", "Frobnicate", "unknown op", inputs=(MODEL, "frob.onnx"))


@case("stdin-garbage")
def _(d):
    return ["optimize", "-", "-o", "out.onnx"], b"this is not a model\n"


@uses("stdin-garbage")
def test_garbage_on_stdin(runs):
    assert_refused(runs["stdin-garbage"], "stdin", "not a valid ONNX model")


@case("stdin-empty")
def _(d):
    return ["optimize", "-", "-o", "-"], b""


@uses("stdin-empty")
def test_empty_stdin(runs):
    assert_refused(runs["stdin-empty"], "stdin", "empty")


# --------------------------------------------------------------------------- data that does not fit


@case("data-names")
def _(d):
    write_bad_data(d)
    return ["optimize", MODEL, "--data", "wrong.npz"], None


@uses("data-names")
def test_data_names_do_not_match(runs):
    assert_refused(runs["data-names"], "wrong.npz", "'wrong'", "'image'")


@case("data-shapes")
def _(d):
    write_bad_data(d)
    return ["optimize", MODEL, "--data", "shapes.npz"], None


@uses("data-shapes")
def test_data_shapes_do_not_match(runs):
    assert_refused(runs["data-shapes"], "shapes.npz", "'image'", "9, 9", "8, 8")


@case("data-missing")
def _(d):
    return ["optimize", MODEL, "--data", "nothere.npz"], None


@uses("data-missing")
def test_data_file_missing(runs):
    assert_refused(runs["data-missing"], "nothere.npz")


# --------------------------------------------------------------------------- pipeline files


@case("pipeline-unknown-pass")
def _(d):
    write_pipeline(d, "optimise: {level: basic}")
    return ["run", "pipe.yaml"], None


@uses("pipeline-unknown-pass")
def test_pipeline_unknown_pass(runs):
    assert_refused(runs["pipeline-unknown-pass"], "pipe.yaml:4", "'optimise'", "valid", "optimize",
                   inputs=(MODEL, "pipe.yaml"))


@case("pipeline-unknown-option")
def _(d):
    write_pipeline(d, "optimize: {levle: basic}")
    return ["run", "pipe.yaml"], None


@uses("pipeline-unknown-option")
def test_pipeline_unknown_option(runs):
    assert_refused(runs["pipeline-unknown-option"], "pipe.yaml:4", "'levle'", "level", "tolerance",
                   inputs=(MODEL, "pipe.yaml"))


@case("pipeline-bad-value")
def _(d):
    write_pipeline(d, "optimize: {level: turbo}")
    return ["run", "pipe.yaml"], None


@uses("pipeline-bad-value")
def test_pipeline_bad_option_value(runs):
    assert_refused(runs["pipeline-bad-value"], "pipe.yaml:4", "level", "'basic'", "'extended'",
                   inputs=(MODEL, "pipe.yaml"))


@case("pipeline-unknown-gate")
def _(d):
    write_pipeline(d, "optimize: {level: basic}", "gate:\n  min_sped: 2\n")
    return ["run", "pipe.yaml"], None


@uses("pipeline-unknown-gate")
def test_pipeline_unknown_gate(runs):
    assert_refused(runs["pipeline-unknown-gate"], "pipe.yaml:6", "'min_sped'", "min_speedup",
                   inputs=(MODEL, "pipe.yaml"))


@case("pipeline-not-yaml")
def _(d):
    (d / "pipe.yaml").write_text("model: model.onnx\nsteps: [\n")
    return ["run", "pipe.yaml"], None


@uses("pipeline-not-yaml")
def test_pipeline_not_yaml(runs):
    assert_refused(runs["pipeline-not-yaml"], "pipe.yaml", "YAML", inputs=(MODEL, "pipe.yaml"))


@case("pipeline-missing")
def _(d):
    return ["run", "nothere.yaml"], None


@uses("pipeline-missing")
def test_pipeline_file_missing(runs):
    assert_refused(runs["pipeline-missing"], "nothere.yaml")


@case("pipeline-bad-model")
def _(d):
    (d / "half.onnx").write_bytes(DIGITS.read_bytes()[:5000])
    write_pipeline(d, "optimize: {level: basic}", model="half.onnx")
    return ["run", "pipe.yaml"], None


@uses("pipeline-bad-model")
def test_pipeline_bad_model(runs):
    assert_refused(runs["pipeline-bad-model"], "half.onnx", "not a valid ONNX model",
                   inputs=(MODEL, "pipe.yaml", "half.onnx"))


@case("pipeline-bad-data")
def _(d):
    write_bad_data(d)
    write_pipeline(d, "optimize: {level: basic}", "data:\n  evaluation: wrong.npz\n")
    return ["run", "pipe.yaml"], None


@uses("pipeline-bad-data")
def test_pipeline_bad_data(runs):
    assert_refused(runs["pipeline-bad-data"], "wrong.npz", "'wrong'", inputs=(MODEL, "pipe.yaml", "wrong.npz"))


# --------------------------------------------------------------------------- options


@case("level-value")
def _(d):
    return ["optimize", MODEL, "--level", "turbo"], None


@uses("level-value")
def test_bad_option_value_on_the_command_line(runs):
    assert_refused(runs["level-value"], "--level", "'basic'")


@case("json-and-stdout")
def _(d):
    return ["optimize", MODEL, "--json", "-o", "-"], None


@uses("json-and-stdout")
def test_json_with_model_on_stdout(runs):
    assert_refused(runs["json-and-stdout"], "--json", "-o -", "stdout")


INPUT_SHAPES = {"letters": "image=abc", "misfit": "image=1,1,9,9", "zero": "image=0,1,8,8",
                "unknown-name": "other=1,1,8,8"}
for _name, _value in INPUT_SHAPES.items():
    @case(f"input-shape-{_name}")
    def _(d, value=_value):
        return ["optimize", MODEL, "--input-shape", value], None


# a malformed and a misfitting shape in make test, the other two in make test-slow
@pytest.mark.parametrize("name", [n if n in ("letters", "misfit") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in INPUT_SHAPES])
@uses("input-shape-{name}")
def test_bad_input_shape(runs, name):
    line = assert_refused(runs[f"input-shape-{name}"], "--input-shape")
    value = INPUT_SHAPES[name]
    assert value in line or value.split("=")[0] in line or value.split("=")[1] in line


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@case("provider-cuda")
def _(d):
    return ["optimize", MODEL, "--provider", "cuda"], None


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
@uses("provider-cuda")
def test_provider_cuda_without_cuda(runs):
    assert_refused(runs["provider-cuda"], "'cuda'", "not available", "available: cpu")


# --------------------------------------------------------------------------- where the output goes


@case("output-folder-missing")
def _(d):
    return ["optimize", MODEL, "-o", "nodir/out.onnx"], None


@uses("output-folder-missing")
def test_output_folder_does_not_exist(runs):
    assert_refused(runs["output-folder-missing"], "nodir", "does not exist")


@case("output-file-as-folder")
def _(d):
    return ["optimize", MODEL, "-o", "eval.npz/out.onnx"], None


@uses("output-file-as-folder")
def test_output_folder_is_a_file(runs):
    assert_refused(runs["output-file-as-folder"], "eval.npz", "not a folder")


@case("output-under-proc")
def _(d):
    return ["optimize", MODEL, "-o", "/proc/mcomp-test-out.onnx"], None


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
@uses("output-under-proc")
def test_output_folder_unwritable_proc(runs):
    """/proc refuses new files even to root, for whom os.access says yes."""
    assert_refused(runs["output-under-proc"], "/proc", "cannot write")
    assert not Path("/proc/mcomp-test-out.onnx").exists()


@case("report-under-proc")
def _(d):
    return ["optimize", MODEL, "-o", "out.onnx", "--report", "/proc/mcomp-test-report.json"], None


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
@uses("report-under-proc")
def test_report_folder_unwritable(runs):
    """An unwritable report path fails before the model is written, not after."""
    assert_refused(runs["report-under-proc"], "/proc", "cannot write")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_output_folder_unwritable_chmod(tmp_path):
    shutil.copy(DIGITS, tmp_path / MODEL)
    shutil.copy(DIGITS_EVAL, tmp_path / "eval.npz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = snapshot(tmp_path)
        res = run_mcomp("optimize", MODEL, "-o", "locked/out.onnx", cwd=tmp_path)
        res.before, res.after = before, snapshot(tmp_path)
        assert_refused(res, "locked", "not writable")
    finally:
        locked.chmod(0o700)


OUTPUT_IS_INPUT = ("plain", "absolute")
for _spelling in OUTPUT_IS_INPUT:
    @case(f"output-is-input-{_spelling}")
    def _(d, spelling=_spelling):
        dest = {"plain": f"./{MODEL}", "absolute": str(d / MODEL)}[spelling]
        return ["optimize", MODEL, "-o", dest], None


@pytest.mark.parametrize("spelling", [s if s == "plain" else pytest.param(s, marks=pytest.mark.slow)
                                      for s in OUTPUT_IS_INPUT])
@uses("output-is-input-{spelling}")
def test_output_is_the_input(runs, spelling):
    assert_refused(runs[f"output-is-input-{spelling}"], "refusing to overwrite the input")


@case("output-is-input-symlink")
def _(d):
    (d / "link.onnx").symlink_to(MODEL)
    return ["optimize", "link.onnx", "-o", MODEL], None


@uses("output-is-input-symlink")
def test_output_is_the_input_through_a_symlink(runs):
    assert_refused(runs["output-is-input-symlink"], "refusing to overwrite the input")


@case("report-is-input")
def _(d):
    return ["optimize", MODEL, "-o", "out.onnx", "--report", MODEL], None


@uses("report-is-input")
def test_report_path_is_the_input(runs):
    assert_refused(runs["report-is-input"], MODEL, "overwrite")


@case("report-md-is-input")
def _(d):
    return ["optimize", MODEL, "-o", "out.onnx", "--report-md", MODEL], None


@pytest.mark.slow  # the same refusal as test_report_path_is_the_input, for --report-md: make test-slow
@uses("report-md-is-input")
def test_report_md_path_is_the_input(runs):
    assert_refused(runs["report-md-is-input"], MODEL, "overwrite")


@case("output-is-data")
def _(d):
    return ["optimize", MODEL, "--data", "eval.npz", "-o", "eval.npz"], None


@uses("output-is-data")
def test_output_is_the_data_file(runs):
    assert_refused(runs["output-is-data"], "eval.npz", "overwrite")


@case("report-is-output")
def _(d):
    return ["optimize", MODEL, "-o", "out.onnx", "--report", "out.onnx"], None


@uses("report-is-output")
def test_report_path_is_the_output(runs):
    assert_refused(runs["report-is-output"], "out.onnx")


# --------------------------------------------------------------------------- the same through inspect, bench, compare


@case("inspect-missing")
def _(d):
    return ["inspect", "missing.onnx"], None


@uses("inspect-missing")
def test_inspect_missing_file(runs):
    assert_refused(runs["inspect-missing"], "missing.onnx", "no such file")


@case("inspect-random")
def _(d):
    (d / "noise.onnx").write_bytes(np.random.default_rng(7).bytes(5000))
    return ["inspect", "noise.onnx", "--json"], None


@pytest.mark.slow  # the same refusal as test_random_bytes, through inspect: make test-slow
@uses("inspect-random")
def test_inspect_random_bytes(runs):
    assert_refused(runs["inspect-random"], "noise.onnx", "re:(not a valid|invalid) ONNX model",
                   inputs=(MODEL, "noise.onnx"))


@case("inspect-unknown-domain")
def _(d):
    tiny_model(d / "foo.onnx", "Foo", "my.domain")
    return ["inspect", "foo.onnx"], None


@pytest.mark.slow  # the same refusal as test_op_in_unknown_domain, through inspect: make test-slow
@uses("inspect-unknown-domain")
def test_inspect_op_in_unknown_domain(runs):
    assert_refused(runs["inspect-unknown-domain"], "foo.onnx", "my.domain", inputs=(MODEL, "foo.onnx"))


@case("inspect-input-shape")
def _(d):
    return ["inspect", MODEL, "--input-shape", "image=1,x,8"], None


@uses("inspect-input-shape")
def test_inspect_bad_input_shape(runs):
    assert_refused(runs["inspect-input-shape"], "--input-shape", "image=1,x,8")


@case("inspect-input-shape-rank")
def _(d):
    return ["inspect", MODEL, "--input-shape", "image=1,8"], None


@uses("inspect-input-shape-rank")
def test_inspect_input_shape_of_the_wrong_rank(runs):
    """Not only synthetic data: inspect's MACs would be counted on a shape the model cannot take."""
    assert_refused(runs["inspect-input-shape-rank"], "--input-shape", "(1, 8)", "[batch, 1, 8, 8]")


@case("bench-truncated")
def _(d):
    data = DIGITS.read_bytes()
    (d / "half.onnx").write_bytes(data[: len(data) // 2])
    return ["bench", MODEL, "half.onnx", "--runs", "3"], None


@pytest.mark.slow  # the same refusal as test_truncated_onnx, through bench: make test-slow
@uses("bench-truncated")
def test_bench_truncated(runs):
    assert_refused(runs["bench-truncated"], "half.onnx", "not a valid ONNX model", inputs=(MODEL, "half.onnx"))


@case("bench-cuda")
def _(d):
    return ["bench", MODEL, "--provider", "cuda", "--runs", "3"], None


@pytest.mark.slow  # the same refusal as test_provider_cuda_without_cuda, through bench: make test-slow
@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
@uses("bench-cuda")
def test_bench_provider_cuda_without_cuda(runs):
    assert_refused(runs["bench-cuda"], "'cuda'", "available: cpu")


@case("bench-data-names")
def _(d):
    write_bad_data(d)
    return ["bench", MODEL, "--data", "wrong.npz", "--runs", "3"], None


@uses("bench-data-names")
def test_bench_data_names_do_not_match(runs):
    assert_refused(runs["bench-data-names"], "wrong.npz", "'wrong'")


@case("bench-mismatched-models")
def _(d):
    tiny_model(d / "relu.onnx")
    return ["bench", MODEL, "relu.onnx", "--runs", "3"], None


@uses("bench-mismatched-models")
def test_bench_models_with_different_inputs(runs):
    assert_refused(runs["bench-mismatched-models"], "relu.onnx", "re:input", inputs=(MODEL, "relu.onnx"))


@case("compare-data-shapes")
def _(d):
    write_bad_data(d)
    return ["compare", MODEL, MODEL, "--data", "shapes.npz", "--runs", "3"], None


@uses("compare-data-shapes")
def test_compare_data_shapes_do_not_match(runs):
    assert_refused(runs["compare-data-shapes"], "shapes.npz", "9, 9")


@case("compare-text-file")
def _(d):
    (d / "notes.onnx").write_text("hello\n")
    return ["compare", MODEL, "notes.onnx", "--runs", "3"], None


@pytest.mark.slow  # the same refusal as test_text_file, through compare: make test-slow
@uses("compare-text-file")
def test_compare_text_file(runs):
    assert_refused(runs["compare-text-file"], "notes.onnx", "not a valid ONNX model", inputs=(MODEL, "notes.onnx"))


def test_every_case_has_a_test():
    """A case nobody reads would run for nothing; a key with no case would fail at run time."""
    used = set()
    for name, fn in globals().items():
        if name.startswith("test_") and callable(fn):
            for key in getattr(fn, "_mcomp_runs", ()):
                used.add(key)
    expected = set()
    for key in used:
        if "{" in key:
            field = re.search(r"\{(\w+)\}", key).group(1)
            values = {"size": RANDOM_SIZES, "name": INPUT_SHAPES, "spelling": OUTPUT_IS_INPUT}[field]
            expected |= {key.format(**{field: v}) for v in values}
        else:
            expected.add(key)
    assert expected == set(CASES), (sorted(set(CASES) - expected), sorted(expected - set(CASES)))
