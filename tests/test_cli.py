"""The command line as a user sees it: ``python -m mcomp ...`` in a subprocess (design §5).

The runs of the selected tests are started together when the module starts (see
``clirun``), each in a folder of its own, and judged one by one.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clirun import (DIGITS, DIGITS_EVAL, REPO, Batch, Result, run_mcomp, run_shell, selected_keys, sha256, snapshot,
                    uses)

COMMANDS = ("", "inspect", "prune", "optimize", "run", "bench", "compare", "export", "passes")
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def constant_weights_model(path: Path) -> None:
    """x[N,4] → MatMul(Constant W[4,3], float) → Add(initializer b[3]) → Reshape(Constant shape, int64) → y[N,3].

    Weights held by Constant nodes (as paddle2onnx writes them) are parameters; the int64 shape is not.
    """
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["W"], value=w, name="w"),
             helper.make_node("Constant", [], ["shape"], value=shape, name="s"),
             helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def gate_pipeline(path: Path) -> None:
    path.write_text("model: digits.onnx\n"
                    "steps:\n  - optimize: {level: basic}\n"
                    "measure: {runs: 3, warmup: 1}\n"
                    "gate:\n  min_speedup: 1000000000   # a billion times faster: fails however loaded the machine\n")


def _prepare_args(key: str, d: Path) -> tuple[list[str], bytes | None] | str:
    """The command line of run ``key`` in folder ``d`` (holding digits.onnx and digits_eval.npz), or a bash script."""
    if key.startswith("help-"):
        command = key[len("help-"):]
        return ([command] if command else []) + ["--help"], None
    if key == "inspect":
        return ["inspect", "digits.onnx", "--json"], None
    if key.startswith("inspect-shape-"):
        return ["inspect", "digits.onnx", "--json", "--input-shape", key[len("inspect-shape-"):]], None
    if key == "inspect-constants":
        constant_weights_model(d / "constants.onnx")
        return ["inspect", "constants.onnx", "--json"], None
    if key == "optimize":
        return ["optimize", "digits.onnx", "--data", "digits_eval.npz", "--runs", "5"], None
    if key == "pipe":
        return ("mcomp optimize - -o - --runs 3 < digits.onnx | tee piped.onnx | mcomp inspect - --json\n")
    if key == "outputs":
        return ["optimize", "digits.onnx", "-o", "out.onnx", "--report", "r.json", "--report-md", "r.md",
                "--runs", "3"], None
    if key == "quickstart":
        return ["run", REPO / "configs" / "quickstart.yaml", "-o", d / "q.onnx", "--json"], None
    if key == "gate":
        gate_pipeline(d / "gate.yaml")
        return ["run", "gate.yaml", "-o", "gated.onnx"], None
    if key == "bench":
        shutil.copy(d / "digits.onnx", d / "b.onnx")
        return ["bench", "digits.onnx", "b.onnx", "--runs", "5", "--json"], None
    if key == "compare":
        return ["compare", "digits.onnx", "digits.onnx", "--data", "digits_eval.npz", "--json", "--runs", "3"], None
    if key == "passes":
        return ["passes", "--json"], None
    if key == "realmodel":
        import realmodels

        shutil.copy(realmodels.fetch("ppocr-cls").path, d / "cls.onnx")
        return ["optimize", "cls.onnx", "--input-shape", "x=1,3,48,192", "--runs", "3", "--json"], None
    raise KeyError(key)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    def prepare(key: str):
        d = tmp_path_factory.mktemp(key.replace("-", "_").replace("=", "_").replace(",", "_") or "top")
        shutil.copy(DIGITS, d / "digits.onnx")
        shutil.copy(DIGITS_EVAL, d / "digits_eval.npz")
        spec = _prepare_args(key, d)
        before = snapshot(d)

        def go() -> Result:
            res = run_shell(spec, cwd=d) if isinstance(spec, str) else run_mcomp(*spec[0], cwd=d, stdin=spec[1])
            res.folder, res.before, res.after = d, before, snapshot(d)
            return res
        return go

    batch = Batch(prepare, selected_keys(request, sys.modules[__name__]))
    yield batch
    batch.close()


def ok(res: Result) -> Result:
    assert res.returncode == 0, res.explain()
    assert "Traceback" not in res.stderr, res.explain()
    return res


def json_stdout(res: Result):
    """stdout is one JSON document and nothing else."""
    try:
        return json.loads(res.out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON alone ({exc}){res.explain()}") from None


def node_count(model: onnx.ModelProto) -> int:
    def count(graph):
        n = 0
        for node in graph.node:
            n += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += count(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    n += sum(count(g) for g in attr.graphs)
        return n
    return count(model.graph)


def parameter_count(model: onnx.ModelProto) -> int:
    """Initializer elements plus float Constant-node elements, in every graph: counted here with onnx alone."""
    def count(graph):
        n = sum(int(np.prod(t.dims)) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and attr.name == "value"
                        and attr.t.data_type in FLOAT_TYPES):
                    n += int(np.prod(attr.t.dims))
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += count(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    n += sum(count(g) for g in attr.graphs)
        return n
    return count(model.graph)


def dot_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def ort_outputs(path: Path, image: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image})


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "mcomp")
@uses("help-{command}")
def test_help(runs, command):
    res = ok(runs[f"help-{command}"])
    assert "Usage:" in res.out, res.explain()
    if not command:
        for sub in COMMANDS[1:]:
            assert sub in res.out, f"{sub} missing from mcomp --help{res.explain()}"
        assert "Exit codes" in res.out


# --------------------------------------------------------------------------- inspect


@uses("inspect")
def test_inspect_json(runs):
    res = ok(runs["inspect"])
    info = json_stdout(res)
    model = onnx.load(DIGITS)
    initializers = {t.name for t in model.graph.initializer}
    assert [i["name"] for i in info["inputs"]] == [i.name for i in model.graph.input if i.name not in initializers]
    assert [o["name"] for o in info["outputs"]] == [o.name for o in model.graph.output] == ["logits"]
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["shape"][1:] == [1, 8, 8]
    assert info["parameters"] == parameter_count(model)
    assert info["nodes"] == node_count(model)
    assert info["sha256"] == sha256(DIGITS)
    assert info["macs"] > 0 and not info["macs_unknown_nodes"]


@uses("inspect-constants")
def test_inspect_counts_float_constant_nodes(runs):
    info = json_stdout(ok(runs["inspect-constants"]))
    model = onnx.load(runs["inspect-constants"].folder / "constants.onnx")
    assert info["parameters"] == parameter_count(model) == 4 * 3 + 3
    assert info["constant_elements"] == 2  # the int64 shape of the Reshape
    assert info["macs"] == 1 * 4 * 3  # dynamic N taken as 1


@uses("inspect", "inspect-shape-image=1,1,8,8", "inspect-shape-image=4,1,8,8", "inspect-shape-4x1x8x8")
def test_inspect_input_shape_scales_macs(runs):
    default = json_stdout(ok(runs["inspect"]))["macs"]
    batch1 = json_stdout(ok(runs["inspect-shape-image=1,1,8,8"]))
    batch4 = json_stdout(ok(runs["inspect-shape-image=4,1,8,8"]))
    unnamed = json_stdout(ok(runs["inspect-shape-4x1x8x8"]))
    assert batch1["macs"] == default > 0  # dynamic dims default to 1
    assert batch4["macs"] == 4 * batch1["macs"]
    assert unnamed["macs"] == batch4["macs"]
    assert batch4["macs_input_shapes"] == {"image": [4, 1, 8, 8]}
    assert batch4["parameters"] == batch1["parameters"]


# --------------------------------------------------------------------------- optimize


@uses("optimize")
def test_optimize_writes_model_and_report_beside_the_input(runs):
    res = ok(runs["optimize"])
    d = res.folder
    assert res.stdout == b"", "without --json nothing but data goes to stdout" + res.explain()
    assert sorted(set(res.after) - set(res.before)) == ["digits.optimize.onnx", "digits.optimize.report.json"]
    assert res.after["digits.onnx"] == res.before["digits.onnx"] == sha256(DIGITS), "the input changed"

    doc = json.loads((d / "digits.optimize.report.json").read_text())
    assert doc["schema"] == "mcomp-report/1"
    assert doc["steps"][0]["pass"] == "optimize"
    assert doc["accuracy"]["known"] is True, doc["accuracy"]
    assert doc["accuracy"]["drop"] <= 0.005
    assert doc["accuracy"]["examples"] == len(np.load(DIGITS_EVAL)["labels"])
    assert doc["input"]["sha256"] == sha256(d / "digits.onnx")
    assert doc["output"]["sha256"] == sha256(d / "digits.optimize.onnx")
    assert Path(doc["output"]["path"]).name == "digits.optimize.onnx"


@uses("optimize")
def test_optimized_model_matches_the_input(runs):
    d = ok(runs["optimize"]).folder
    image = np.load(DIGITS_EVAL)["image"]
    ref, out = ort_outputs(d / "digits.onnx", image), ort_outputs(d / "digits.optimize.onnx", image)
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        np.testing.assert_allclose(o, r, atol=1e-4, rtol=0)
    optimized = onnx.load(d / "digits.optimize.onnx")
    onnx.checker.check_model(optimized)
    assert node_count(optimized) < node_count(onnx.load(d / "digits.onnx"))


@uses("pipe")
def test_stdin_stdout_pipe(runs):
    res = ok(runs["pipe"])
    d = res.folder
    piped = onnx.load_model_from_string((d / "piped.onnx").read_bytes())  # optimize's stdout, as tee saw it
    onnx.checker.check_model(piped)
    info = json_stdout(res)  # inspect's stdout
    assert info["path"] == "-"
    assert info["sha256"] == sha256(d / "piped.onnx")
    assert info["nodes"] == node_count(piped) < node_count(onnx.load(DIGITS))
    image = np.load(DIGITS_EVAL)["image"][:32]
    np.testing.assert_allclose(ort_outputs(d / "piped.onnx", image)[0], ort_outputs(DIGITS, image)[0], atol=1e-4)
    assert sorted(set(res.after) - set(res.before)) == ["piped.onnx"], "reading stdin writes no report by default"


@uses("outputs")
def test_output_report_and_markdown_paths(runs):
    res = ok(runs["outputs"])
    d = res.folder
    assert sorted(set(res.after) - set(res.before)) == ["out.onnx", "r.json", "r.md"]
    onnx.checker.check_model(onnx.load(d / "out.onnx"))
    doc = json.loads((d / "r.json").read_text())
    assert doc["schema"] == "mcomp-report/1" and Path(doc["output"]["path"]).name == "out.onnx"
    md = (d / "r.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and any(set(r.replace("|", "").replace(":", "").strip()) == {"-"} for r in rows), md


@uses("outputs")
def test_markdown_tables_keep_their_columns(runs):
    md = (ok(runs["outputs"]).folder / "r.md").read_text()
    table: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            cells = [len(r.replace("\\|", "").strip().strip("|").split("|")) for r in table]
            assert len(set(cells)) == 1, f"rows of one table with {cells} cells:\n" + "\n".join(table)
            table = []


@uses("outputs")
def test_report_is_as_readable_as_the_model(runs):
    d = ok(runs["outputs"]).folder
    model_mode = (d / "out.onnx").stat().st_mode & 0o777
    assert (d / "r.json").stat().st_mode & 0o777 == model_mode
    assert (d / "r.md").stat().st_mode & 0o777 == model_mode


@uses("optimize", "outputs", "pipe", "bench", "compare")
def test_no_temp_files_left_after_success(runs):
    for key in ("optimize", "outputs", "pipe", "bench", "compare"):
        res = ok(runs[key])
        assert not dot_files(res.folder), f"{key}: {dot_files(res.folder)}"


# --------------------------------------------------------------------------- pipelines


@pytest.mark.slow  # ~50 s of CPU (15 epochs of distillation); make demo runs the same file, and
@uses("quickstart")  # test_distill_cli's pipeline test covers prune → quantize → distill → optimize in make test
def test_quickstart_pipeline(runs):
    res = ok(runs["quickstart"])
    doc = json_stdout(res)
    assert doc["schema"] == "mcomp-report/1"
    assert doc["accuracy"]["known"] is True and doc["accuracy"]["drop"] <= 0.005
    assert doc["input"]["sha256"] == sha256(DIGITS)
    assert all(g["passed"] for g in doc["gates"].values()) and doc["gates"]
    assert (res.folder / "q.onnx").is_file() and (res.folder / "q.report.json").is_file()
    assert sha256(res.folder / "q.onnx") == doc["output"]["sha256"]
    assert not dot_files(res.folder), dot_files(res.folder)


@uses("gate")
def test_failed_gate_writes_nothing(runs):
    res = runs["gate"]
    assert res.returncode == 3, res.explain()
    assert "Traceback" not in res.stderr
    assert res.err_lines[-1].startswith("error:") and "min_speedup" in res.err_lines[-1], res.explain()
    assert res.stdout == b""
    assert res.after == res.before, "a failed gate writes nothing"
    assert not (res.folder / "gated.onnx").exists()


# --------------------------------------------------------------------------- bench, compare, passes


@uses("bench")
def test_bench_json(runs):
    doc = json_stdout(ok(runs["bench"]))
    models = doc["models"]
    assert [Path(m["label"]).name for m in models] == ["digits.onnx", "b.onnx"]
    assert models[0]["ratio"] is None
    assert isinstance(models[1]["ratio"], float) and models[1]["ratio"] > 0
    assert all(m["runs"] == 5 and m["p50_ms"] > 0 for m in models)
    floor = doc["noise_floor"]
    assert floor and {"median", "p10", "p90"} <= set(floor) and floor["p10"] <= floor["median"] <= floor["p90"]


@uses("compare")
def test_compare_json(runs):
    doc = json_stdout(ok(runs["compare"]))
    assert doc["fidelity"]["summary"]["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert doc["fidelity"]["summary"]["slice_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert doc["fidelity"]["figure"] == {"mode": "slice", "value": doc["fidelity"]["summary"]["slice_cosine"],
                                         "what": "worst-slice cosine"}
    assert doc["fidelity"]["summary"]["max_abs_error"] <= 1e-6
    acc = doc["accuracy"]
    assert acc["known"] is True and acc["reference"] == acc["candidate"] > 0.9 and acc["drop"] == 0
    assert doc["latency"]["ratio"] > 0


@uses("passes")
def test_passes_json(runs):
    described = {p["name"]: p for p in json_stdout(ok(runs["passes"]))}
    opts = described["optimize"]["options"]
    assert {"level", "tolerance", "skip"} <= set(opts)
    assert set(opts["level"]["enum"]) == {"none", "basic", "extended", "all"}
    assert opts["level"]["default"] == "basic"
    assert opts["tolerance"]["type"] == "number"


# --------------------------------------------------------------------------- a real third-party model


@pytest.mark.realmodel
@uses("realmodel")
def test_optimize_real_model(runs):
    res = ok(runs["realmodel"])
    d = res.folder
    doc = json_stdout(res)
    assert doc["input"]["sha256"] == res.before["cls.onnx"] == sha256(d / "cls.onnx")
    out = onnx.load(d / "cls.optimize.onnx")
    onnx.checker.check_model(out)
    assert node_count(out) < node_count(onnx.load(d / "cls.onnx"))
    assert doc["fidelity"]["summary"]["cosine"] >= 0.9999 and doc["fidelity"]["summary"]["slice_cosine"] >= 0.9999
    assert (d / "cls.optimize.report.json").is_file() and not dot_files(d)

    import onnxruntime as ort
    import realmodels

    feeds = realmodels.fetch("ppocr-cls").feeds()
    ref, got = (ort.InferenceSession(str(d / name), providers=["CPUExecutionProvider"]).run(None, feeds)
                for name in ("cls.onnx", "cls.optimize.onnx"))
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=0)
