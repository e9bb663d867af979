"""MACs of transformers (issue 13, item 5): counted through attention at the shapes the figure names.

Checked against the analytic counts of ``transformer_models.analytic_macs`` (the matrix products:
Q/K/V/output projections, the score and context products Q·Kᵀ and scores·V, the FFN, GPT-2's LM
head, ViT's patch embedding and pooler). The analytic count leaves out element-wise work
(LayerNorm, GELU, Softmax, the score scaling, bias adds) and the embedding lookups, and so does
mcomp: the two agree exactly, and the tests allow 1%.

Two exports of each model: ``torch.onnx.export`` with dynamo (the fixture, opset 18), whose shapes
onnx shape inference follows; and the TorchScript exporter at opset 17 (what the issue measured:
BERT 0 MACs, "32 nodes of unknown shape"), whose Shape → Gather → Unsqueeze → Slice/Reshape
arithmetic only onnxruntime's symbolic inference follows.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from clirun import run_mcomp
from mcomp import graph

tm = pytest.importorskip("transformer_models")
pytest.importorskip("transformers")


def _close(counted: int, analytic: int) -> bool:
    return abs(counted - analytic) <= 0.01 * analytic


def _feeds_shapes(m, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in m.feeds(batch=batch, seq=seq).items()}


# --- the fixture's exports (dynamo, opset 18) ---------------------------------------------------

@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("batch,seq", [(1, 32), (2, 128)])
def test_text_transformers_count_the_analytic_macs(name, batch, seq):
    m = tm.build(name)
    count = graph.macs(ir.load(m.path), _feeds_shapes(m, batch, seq))
    assert count.unknown == [] and count.reason is None
    assert _close(count.total, m.macs(batch, seq)), (count.total, m.macs(batch, seq))


@pytest.mark.parametrize("batch", [1, 3])
def test_vit_counts_the_analytic_macs(batch):
    m = tm.build("vit")  # 64×64 images of 8×8 patches: 65 tokens, fixed by the export
    count = graph.macs(ir.load(m.path), _feeds_shapes(m, batch, 0))
    assert count.unknown == [] and _close(count.total, m.macs(batch)), (count.total, m.macs(batch))


def test_inspect_json_counts_at_the_given_input_shape_and_says_so(tmp_path):
    m = tm.build("bert")
    res = run_mcomp("inspect", m.path, "--json", "--input-shape", "input_ids=1,64",
                    "--input-shape", "attention_mask=1,64", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    info = json.loads(res.out)
    assert info["macs"] == m.macs(1, 64) and info["macs_unknown_nodes"] == []
    assert info["macs_input_shapes"] == {"input_ids": [1, 64], "attention_mask": [1, 64]}
    assert info["input_shapes"]["input_ids"]["source"] == "--input-shape"


# --- what the analytic counts check, on graphs small enough to read -------------------------------

def _sliced_to_the_fed_length() -> onnx.ModelProto:
    """``pos[:seq] · w``: a position table sliced to the length of ``ids`` (as BERT's TorchScript
    export slices its position ids), then projected. onnx shape inference does not follow
    Shape → Gather → Unsqueeze into Slice's ends; onnxruntime's symbolic inference does."""
    nodes = [h.make_node("Shape", ["ids"], ["s"]), h.make_node("Gather", ["s", "one"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n", "axis0"], ["e"]), h.make_node("Slice", ["pos", "zero", "e", "axis0"], ["p"]),
             h.make_node("MatMul", ["p", "w"], ["y"], name="mm")]
    inits = [nh.from_array(np.zeros((512, 8), np.float32), "pos"), nh.from_array(np.zeros((8, 4), np.float32), "w"),
             nh.from_array(np.array([0]), "zero"), nh.from_array(np.array(1), "one"), nh.from_array(np.array([0]), "axis0")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_shapes_computed_from_the_input_length_are_followed():
    proto = _sliced_to_the_fed_length()
    assert graph.macs(ir.serde.deserialize_model(proto), {"ids": (1, 100)}) == graph.MacCount(100 * 8 * 4, [])
    assert graph.macs_by_node(proto, {"ids": (1, 100)}) == {"mm": 100 * 8 * 4}


def test_nothing_is_written_to_the_working_directory(tmp_path, monkeypatch):
    # onnxruntime's own entry point saves sym_shape_infer_temp.onnx when it cannot finish
    monkeypatch.chdir(tmp_path)
    model = ir.serde.deserialize_model(_sliced_to_the_fed_length())
    graph.macs(model, {"ids": (1, 7)})
    assert list(tmp_path.iterdir()) == []


def _node(op: str, inputs: list[str], domain: str = "", **attrs) -> onnx.NodeProto:
    return h.make_node(op, inputs, ["out"], domain=domain, **attrs)


@pytest.mark.parametrize("a,b,out,expected", [
    ([1, 5, 8], [3, 8, 2], None, 3 * 5 * 8 * 2),            # a broadcast over b's batch
    ([4, 2, 5, 8], [2, 8, 6], None, 4 * 2 * 5 * 8 * 6),     # b broadcast over a's leading dim
    ([8], [8, 6], None, 8 * 6),                              # 1-D operands are promoted
    ([5, 8], [8], None, 5 * 8),
    ([1, 5, 8], [3, 8, 2], [3, 5, 2], 3 * 5 * 8 * 2),        # from the output when it is known
    ([2, 5, 8], [3, 8, 2], None, None),                      # batch dims that cannot broadcast
])
def test_matmul_of_two_computed_tensors_broadcasts_its_batch_dims(a, b, out, expected):
    shapes = {"a": a, "b": b} | ({"out": out} if out else {})
    assert graph.node_macs(_node("MatMul", ["a", "b"]), shapes) == expected


def test_a_product_whose_first_operand_is_of_unknown_shape_is_counted_from_its_output_and_weight():
    """SLANet's decoder, optimized: a Gemm (transB) on a Concat whose shape no inference resolves, inside its
    Loop body; its output [1, 768] and weight [768, 126] give the count."""
    assert graph.node_macs(_node("Gemm", ["a", "b"], transB=1), {"b": [768, 126], "out": [1, 768]}) == 768 * 126
    assert graph.node_macs(_node("Gemm", ["a", "b"]), {"b": [126, 768], "out": [1, 768]}) == 768 * 126
    assert graph.node_macs(_node("MatMul", ["a", "b"]), {"b": [8, 6], "out": [2, 5, 6]}) == 2 * 5 * 6 * 8
    assert graph.node_macs(_node("Gemm", ["a", "b"], transB=1), {"b": [768, 126]}) is None  # nor the output
    assert graph.node_macs(_node("MatMul", ["a", "b"]), {"b": [3, 4], "out": []}) is None  # an untyped output


def test_fused_matmul_transposes_count_the_inner_dim():
    shapes = {"a": [2, 8, 5], "b": [2, 6, 8]}  # Aᵀ [2,5,8] · Bᵀ [2,8,6]
    node = _node("FusedMatMul", ["a", "b"], "com.microsoft", transA=1, transB=1)
    assert graph.node_macs(node, shapes) == 2 * 5 * 8 * 6


def test_matmuls_after_fused_contrib_ops_are_counted():
    """onnx shape inference does not type com.microsoft ops: after onnxruntime fused a LayerNorm into
    SkipLayerNormalization and quantized a MatMul to MatMulNBits, nothing downstream had a shape."""
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [nh.from_array(np.ones(64, np.float32), "gamma"), nh.from_array(np.zeros(64, np.float32), "beta"),
             nh.from_array(np.ones((64, 32), np.float32), "w"),
             nh.from_array(np.zeros((16, 2, 16), np.uint8), "wq"), nh.from_array(np.ones((16, 2), np.float32), "sc")]
    nodes = [h.make_node("SkipLayerNormalization", ["x", "x", "gamma", "beta"], ["ln"], domain="com.microsoft"),
             h.make_node("Gelu", ["ln"], ["act"], domain="com.microsoft"),
             h.make_node("MatMulNBits", ["act", "wq", "sc"], ["q"], domain="com.microsoft", K=64, N=16, bits=4,
                         block_size=32),
             h.make_node("MatMul", ["ln", "w"], ["y"])]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y, h.make_tensor_value_info("q", TensorProto.FLOAT, None)],
                                      inits), opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    count = graph.macs(ir.serde.deserialize_model(model), {"x": (2, 8, 64)})
    assert count.unknown == [] and count.total == 2 * 8 * 64 * 32 + 2 * 8 * 64 * 16
    # onnx inference alone stops at the contrib ops; typing them carries it on (without symbolic inference,
    # which stops at the dynamo exports' attention-mask pattern)
    from mcomp import value_shapes

    concrete = value_shapes.with_concrete_inputs(model, {"x": (2, 8, 64)})
    alone, _ = value_shapes.onnx_inferred(concrete)
    assert "y" not in value_shapes.known_shapes(alone.graph)
    shapes = value_shapes.known_shapes(value_shapes.through_contrib_ops(alone).graph)
    assert shapes["y"] == [2, 8, 32] and shapes["q"] == [2, 8, 16] and shapes["act"] == [2, 8, 64]


def test_fused_attention_ops_count_projections_and_both_products():
    b, s, hidden, heads = 2, 16, 64, 4
    products = 2 * b * s * s * hidden  # Q·Kᵀ and scores·V over all heads
    ort = _node("Attention", ["x", "w", "bias", "mask"], "com.microsoft", num_heads=heads)
    shapes = {"x": [b, s, hidden], "w": [hidden, 3 * hidden], "bias": [3 * hidden], "mask": [b], "out": [b, s, hidden]}
    assert graph.node_macs(ort, shapes) == b * s * hidden * 3 * hidden + products
    mha = _node("MultiHeadAttention", ["q", "k", "v"], "com.microsoft", num_heads=heads)
    assert graph.node_macs(mha, {"q": [b, s, hidden], "k": [b, s, hidden], "v": [b, s, hidden],
                                 "out": [b, s, hidden]}) == products
    packed = _node("MultiHeadAttention", ["qkv"], "com.microsoft", num_heads=heads)
    assert graph.node_macs(packed, {"qkv": [b, s, heads, 3, hidden // heads], "out": [b, s, hidden]}) == products
    past = 10  # opset 23: 4-D Q/K/V and a past of 10 keys attended to as well
    onnx23 = _node("Attention", ["q", "k", "v", "", "pk", "pv"])
    head = hidden // heads
    four_d = {"q": [b, heads, s, head], "k": [b, heads, s, head], "pk": [b, heads, past, head],
              "out": [b, heads, s, head]}
    assert graph.node_macs(onnx23, four_d) == 2 * b * s * (s + past) * hidden
    assert graph.node_macs(onnx23, {k: v for k, v in four_d.items() if k != "pk"}) is None  # past named, unknown


# --- the TorchScript exports the issue measured (slow: each export takes 10-30 s once, then cached) ---

def _torchscript_export(name: str, **overrides) -> tuple:
    """``name`` exported by the TorchScript exporter (``dynamo=False``) at opset 17 with dynamic
    batch and seq, cached beside the fixture's exports. GPT-2 is fed its attention mask: without it,
    transformers' packed-sequence check calls ``aten::diff``, which that exporter cannot write."""
    import torch
    import transformers

    from realmodels import CACHE_DIR, write_atomically

    cfg = {**tm.SIZES, **overrides}
    tag = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    folder = CACHE_DIR / f"transformers-{transformers.__version__}-torch-{torch.__version__.split('+')[0]}"
    path = folder / f"{name}{tag}-torchscript17.onnx"
    inner = tm._module(name, cfg).inner

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            out = self.inner(input_ids=ids, attention_mask=mask, use_cache=False)
            return out.logits if name == "gpt2" else out.last_hidden_state

    def export(tmp):
        feeds = {"input_ids": torch.randint(0, cfg["vocab"], (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.int64)}
        dims = {0: "batch", 1: "seq"}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(Exported().eval(), tuple(feeds.values()), str(tmp), input_names=list(feeds),
                              output_names=["out"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": dims, "attention_mask": dims, "out": dims})

    if not path.exists():
        write_atomically(path, export)
    return path, cfg


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [("bert", {}), ("gpt2", {"vocab": 50257})])
def test_torchscript_exports_count_the_analytic_macs(name, overrides):
    path, cfg = _torchscript_export(name, **overrides)
    model = ir.load(path)
    for seq in (32, 128):
        count = graph.macs(model, {"input_ids": (1, seq), "attention_mask": (1, seq)})
        analytic = tm.analytic_macs(name, cfg, batch=1, seq=seq)
        assert count.unknown == [] and _close(count.total, analytic), (seq, count, analytic)


@pytest.mark.slow
def test_gpt2_with_a_larger_vocabulary_counts_its_lm_head():
    m = tm.build("gpt2", vocab=8192)
    count = graph.macs(ir.load(m.path), _feeds_shapes(m, 1, 128))
    assert count.unknown == [] and _close(count.total, m.macs(1, 128))


@pytest.mark.slow
def test_prune_report_counts_bert_macs_at_the_data_sequence_length(tmp_path):
    path, cfg = _torchscript_export("bert")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", input_ids=rng.integers(0, cfg["vocab"], (4, 48)),
             attention_mask=np.ones((4, 48), np.int64))
    res = run_mcomp("prune", path, "--rate", "0.3", "--data", tmp_path / "data.npz", "--runs", "3",
                    "-o", tmp_path / "p.onnx", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    report = json.loads(res.out)
    analytic = tm.analytic_macs("bert", cfg, batch=1, seq=48)  # the data's first example, batch cut to 1
    assert report["shapes"]["input_ids"] == {"shape": [1, 48], "source": "data", "assumed_dims": []}
    assert report["input"]["macs"] == report["output"]["macs"] and _close(report["input"]["macs"], analytic)
    assert not report["input"]["macs_unknown"]


@pytest.mark.slow
def test_prune_target_macs_on_bert_removes_what_it_says(tmp_path):
    """``--target macs`` bisects on this count, so on BERT it must be right: the pruned model's MACs
    equal the analytic count at its new FFN widths (read from its weights)."""
    path, cfg = _torchscript_export("bert")
    res = run_mcomp("prune", path, "--method", "structured", "--target", "macs", "--rate", "0.2", "--runs", "3",
                    "--input-shape", "input_ids=1,128", "--input-shape", "attention_mask=1,128",
                    "-o", tmp_path / "p.onnx", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    report = json.loads(res.out)
    before, after = report["input"]["macs"], report["output"]["macs"]
    assert before == tm.analytic_macs("bert", cfg, batch=1, seq=128)
    assert 0.77 <= after / before <= 0.83, (before, after)
    h, s = cfg["hidden"], 128
    widths = [max(i.dims) for i in onnx.load(tmp_path / "p.onnx").graph.initializer
              if len(i.dims) == 2 and h in i.dims and list(i.dims) != [h, h] and i.dims[0] == h]
    assert len(widths) == cfg["layers"]  # one FFN up-projection [hidden, ffn] per layer
    assert after == sum(4 * s * h * h + 2 * s * s * h + 2 * s * h * f for f in widths)


def _looped_matmul() -> onnx.ModelProto:
    """y = x·W, then a Loop of 3 iterations whose body reshapes its carried value through a
    ``value_ints`` Constant (as onnxscript's folding writes them) and multiplies it by W again."""
    body = h.make_graph(
        [h.make_node("Constant", [], ["shape"], value_ints=[2, 8]),
         h.make_node("Reshape", ["v", "shape"], ["flat"]),
         h.make_node("MatMul", ["flat", "w"], ["v_out"], name="body_matmul"),
         h.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [h.make_tensor_value_info("i", TensorProto.INT64, []),
                 h.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 h.make_tensor_value_info("v", TensorProto.FLOAT, [2, 8])],
        [h.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_out", TensorProto.FLOAT, [2, 8])])
    nodes = [h.make_node("MatMul", ["x", "w"], ["y"], name="outer_matmul"),
             h.make_node("Loop", ["trips", "keep", "y"], ["z"], body=body)]
    inits = [nh.from_array(np.eye(8, dtype=np.float32), "w"), nh.from_array(np.array(3, np.int64), "trips"),
             nh.from_array(np.array(True), "keep")]
    return h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                                     [h.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8])], inits),
                        opset_imports=[h.make_opsetid("", 17)])


def test_loop_bodies_are_counted_for_one_iteration_and_said_to_be(tmp_path):
    """SLANet's decoder is a Loop of up to 1024 iterations (501 run): its 6.9 M MACs an iteration were
    counted once, silently, beside a 1.8 G backbone. The count says how much of it is per iteration."""
    count = graph.macs(ir.serde.deserialize_model(_looped_matmul()))
    assert count.unknown == [] and count.total == 2 * 2 * 8 * 8 and count.in_loop_bodies == 2 * 8 * 8
    path = tmp_path / "looped.onnx"
    onnx.save(_looped_matmul(), path)
    res = run_mcomp("inspect", str(path), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.explain()
    assert json.loads(res.out)["macs_in_loop_bodies"] == 128
    text = run_mcomp("inspect", str(path), cwd=tmp_path).out
    assert "128 of them in Loop/Scan bodies, counted for one iteration" in " ".join(text.split())


def test_symbolic_inference_reads_constants_in_every_spelling():
    """onnxruntime's symbolic inference reads a Constant's ``value`` only: on a ``value_ints`` one (in a
    structured-pruned SLANet's Loop) it raised, and the count's reason leaked "'NoneType' object has
    no attribute 'HasField'"."""
    from mcomp import value_shapes

    model = _looped_matmul()
    inferred, failure = value_shapes._symbolic(model)
    assert failure is None and inferred is not None
    body = model.graph.node[1].attribute[0].g
    assert body.node[0].attribute[0].name == "value_ints"  # the input is left as it was
