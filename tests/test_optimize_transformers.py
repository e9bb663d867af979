"""optimize's transformer stage (onnxruntime's transformer fusions at level extended/all) on BERT, GPT-2
and ViT exported from transformers configs, and the output check's cost on large outputs."""

import json
import warnings

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import transformer_models as tm
from clirun import run_mcomp
from helpers import conv_bn_relu
from mcomp.data import Dataset
from mcomp.embedded import builtin_path
from mcomp.graph import copy, op_histogram
from mcomp.pass_base import Context
from mcomp.passes.optimize import Optimize
from mcomp.passes.optimize.transformer import detect
from mcomp.passes.optimize.verify import OutputCheck

# the portable stages and onnxruntime's C++ optimizer are tested elsewhere: here the transformer stage alone
ONLY_FUSIONS = ["fold-constants", "fold-shapes", "eliminate", "fuse-batchnorm", "fuse", "onnxruntime"]
CPU = ["CPUExecutionProvider"]


def _outputs(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=CPU)
    return sess.run(None, feeds)


@pytest.mark.parametrize("name", tm.NAMES)
def test_architecture_is_read_from_the_graph(name):
    m = tm.build(name)
    arch = detect(ir.load(str(m.path)))
    assert (arch.model_type, arch.num_heads, arch.hidden_size) == (name, m.config["heads"], m.config["hidden"])


@pytest.mark.parametrize("name", ["bert", pytest.param("gpt2", marks=pytest.mark.slow),
                                  pytest.param("vit", marks=pytest.mark.slow)])
def test_level_all_fuses_layernorm_and_gelu_and_keeps_outputs(name):
    m = tm.build(name)
    model = ir.load(str(m.path))
    result = Optimize(level="all", skip=ONLY_FUSIONS)(copy(model), Context())
    ops = {op.split("::")[-1]: n for op, n in op_histogram(result.model).items()}
    stage = next(s for s in result.details["stages"] if s["name"] == "transformer")
    assert stage["applied"] == 1 and not stage["rejected"], stage
    assert ops.get("SkipLayerNormalization") == 2 * m.config["layers"], ops
    assert any(ops.get(g) == m.config["layers"] for g in ("Gelu", "BiasGelu", "FastGelu")), ops
    # the dynamo mask matches none of onnxruntime's Attention patterns: the attention stage fuses it
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) == m.config["layers"], ops
    assert stage["fused_ops"]["SkipLayerNormalization"] == 2 * m.config["layers"]
    assert any("transformer fusions" in n and "SkipLayerNormalization ×8" in n for n in result.notes), result.notes
    assert result.details["nodes_after"] < result.details["nodes_before"]
    feeds = m.feeds(batch=2, seq=16, seed=3)  # other shapes than the check's
    for got, want in zip(_outputs(result.model, feeds), _outputs(model, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_a_cnn_is_left_to_the_other_stages():
    digits = ir.load(str(builtin_path("digits")))
    assert detect(digits) is None and detect(conv_bn_relu()) is None
    result = Optimize(level="all", skip=ONLY_FUSIONS)(copy(digits), Context())
    assert not result.modified and "transformer" not in {s["name"] for s in result.details["stages"]}


def test_given_head_count_is_used_and_checked():
    model = ir.load(str(tm.build("bert").path))
    assert detect(model, "bert", num_heads=8).num_heads == 8
    from mcomp.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the hidden size 256"):
        detect(model, num_heads=3)


@pytest.mark.slow
def test_bad_num_heads_is_one_line_exit_2(tmp_path):
    ran = run_mcomp("optimize", str(tm.build("bert").path), "--level", "all", "--num-heads", "3", "-o",
                    str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert ran.returncode == 2, ran.explain()
    assert "--num-heads 3 does not divide the hidden size 256" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and "Traceback" not in ran.stderr, ran.explain()


@pytest.mark.slow
def test_cli_level_all_reports_the_fusions(tmp_path):
    ran = run_mcomp("optimize", str(tm.build("bert").path), "--level", "all", "--runs", "3", "--json",
                    "-o", str(tmp_path / "o.onnx"), cwd=tmp_path)
    assert ran.returncode == 0, ran.explain()
    assert "transformer fusions (bert, 4 heads, hidden 256)" in ran.stderr
    assert "SkipLayerNormalization" in json.dumps(json.loads(ran.stdout))


@pytest.fixture(scope="module")
def torchscript_bert(tmp_path_factory):
    """BERT as the TorchScript exporter (``dynamo=False``, opset 17) writes it, with trained-like
    (non-zero) biases: the graph onnxruntime's Attention and EmbedLayerNormalization patterns are
    written for. The dynamo export of ``transformer_models`` builds its mask with GatherND/And/Where,
    which those patterns do not cover (onnxscript's attention stage fuses those: test_attention_fusion.py)."""
    import torch

    cfg = dict(tm.SIZES)
    module = tm._module("bert", cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    example = {k: torch.from_numpy(v) for k, v in tm._inputs("bert", cfg, 2, 16, 0).items()}
    path = tmp_path_factory.mktemp("ts") / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in example})
    return path


@pytest.mark.slow
def test_torchscript_bert_gets_onnxruntimes_full_fusion_set(torchscript_bert):
    """On real data (a padded batch), the result is onnxruntime's own: Attention ×4, EmbedLayerNormalization,
    SkipLayerNormalization ×8, BiasGelu ×4 (417 → 47 nodes)."""
    feeds = [tm._inputs("bert", tm.SIZES, 2, 16, s) for s in range(2)]
    feeds[1]["attention_mask"][1, 9:] = 0
    model = ir.load(str(torchscript_bert))
    result = Optimize(level="all")(copy(model), Context(data={"evaluation": Dataset(feeds, None, False, "feeds", [])}))
    fused = next(s for s in result.details["stages"] if s["name"] == "transformer")["fused_ops"]
    assert fused == {"Attention": 4, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 8, "BiasGelu": 4}
    assert result.details["nodes_after"] <= 50, result.details
    for got, want in zip(_outputs(result.model, feeds[1]), _outputs(model, feeds[1])):
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _plus(bias: np.ndarray) -> ir.Model:
    """y = x + bias, for an output check against y = x + 0."""
    from onnx import helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "plus",
                              [helper.make_tensor_value_info("x", 1, list(bias.shape))],
                              [helper.make_tensor_value_info("y", 1, list(bias.shape))],
                              [numpy_helper.from_array(bias, "b")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_check_finds_the_slice_off_scale_in_a_large_output():
    """The per-slice check, vectorized: a detector-like [2, 12, 20000] output whose 0–1 class rows
    sit beside 0–640 box rows; an error of 0.01 in one class row is over that row's limit only."""
    x = np.random.default_rng(0).uniform(0, 1, (2, 12, 20000)).astype(np.float32)
    x[:, :4] *= 640
    zero = np.zeros_like(x)
    check = OutputCheck(_plus(zero), Dataset([{"x": x}], None, True, "random", []), CPU, 1e-3)
    assert check(_plus(zero)).ok
    off = zero.copy()
    off[1, 7, 123] = 0.01
    verdict = check(_plus(off))
    assert not verdict.ok and "in slice 7 of axis 1" in verdict.reason, verdict
    off[1, 7, 123] = 0.0
    off[0, 2, 5] = 0.5  # within a box row's limit of 0.64
    assert check(_plus(off)).ok


def test_check_keeps_the_feeds_that_fit_its_time(monkeypatch):
    """A heavy model's check runs fewer feeds: every stage's check runs every feed kept (SLANet, 6 s a feed of
    16 tables: 4 feeds a stage made `mcomp optimize` take 167 s). The time is read from the reference's first
    feed; the budget is set here, so that the test does not depend on how fast this machine is."""
    from mcomp.passes.optimize import verify

    x = np.ones((2, 3), np.float32)
    feeds = Dataset([{"x": x * k} for k in range(1, 5)], None, False, "d.npz", [])
    monkeypatch.setattr(verify, "CHECK_SECONDS", 1e6)
    check = OutputCheck(_plus(np.zeros_like(x)), feeds, CPU, 1e-3)
    assert len(check.dataset.feeds) == 4 and check.note is None
    monkeypatch.setattr(verify, "CHECK_SECONDS", 1e-12)  # below any run: one feed, and the note says why
    check = OutputCheck(_plus(np.zeros_like(x)), feeds, CPU, 1e-3)
    assert len(check.dataset.feeds) == 1 and len(check.expected) == 1
    assert check.note.startswith("the stage checks ran on 1 of 4 feeds (a feed ran "), check.note
    assert check(_plus(np.zeros_like(x))).ok and not check(_plus(np.full_like(x, 0.1))).ok
