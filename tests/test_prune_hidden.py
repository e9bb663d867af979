"""Pruning a transformer's hidden (residual) width: one group through every layer (``structured.hidden``).

Planted check: a set of hidden channels is made weak everywhere the group slices (embedding
columns, projection rows and columns, LayerNorm scale and bias, scaled by 1e-3); those must be the
channels cut, in every tensor alike (GPT-2's tied embedding and LM head read one pruned table). The
pruned model cannot match a masked copy exactly (LayerNorm's mean and variance now run over the
kept channels only), so the checks are: which channels went, the shapes, the parameter count
from the config, and that the model runs. BERT's bare encoder, whose output is the hidden state,
stays whole and says why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import transformer_models as tm  # noqa: E402

from mcomp.passes.prune import Prune  # noqa: E402
from mcomp.passes.prune.structured import find_groups, prune_structured  # noqa: E402
from mcomp.passes.prune.structured.paths import map_path  # noqa: E402
from mcomp.passes.prune.structured.prepare import const  # noqa: E402
from mcomp.passes.prune.structured.surgery import set_input  # noqa: E402

WEAK = 1e-3
CUT = 64  # hidden 256 → 192 at hidden_rate 0.25


def _run(path, feeds) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _hidden(model: ir.Model):
    groups = [g for g in find_groups(model, hidden=True) if g.label == "hidden"]
    assert len(groups) == 1
    return groups[0]


def _plant(path: Path, out: Path, weak: np.ndarray) -> None:
    """Channels ``weak`` of the hidden group scaled by 1e-3 in every tensor the group slices."""
    model = ir.load(path)
    group = _hidden(model)
    assert group.prunable, group.reason
    for m in group.members:
        if m.role not in ("producer", "consumer", "param", "table"):
            continue
        w = const(m.node.inputs[m.input_index]).copy()
        np.moveaxis(w, m.axis, 0)[map_path(m.path, weak)[1]] *= WEAK  # a view: scales w itself
        set_input(model, m.node, m.input_index, w)
    ir.save(model, out)


def _expected_removed(name: str, cfg: dict, k: int) -> int:
    """Parameters that ``k`` fewer hidden channels remove, counted from the architecture."""
    h, f, layers = cfg["hidden"], cfg["ffn"], cfg["layers"]
    per_layer = 4 * h * k + k + 2 * f * k + k + 4 * k  # Q, K, V rows and output columns (+bias), FFN, 2 LayerNorms
    if name == "gpt2":
        return layers * per_layer + (cfg["vocab"] + 512) * k + 2 * k  # tied table once, positions, ln_f
    if name == "bert":
        embeddings = (cfg["vocab"] + 512 + 2) * k + 2 * k
        head = h * k  # the pooler dense's input rows (its output is a group of its own)
    else:
        embeddings = 3 * cfg["patch"] ** 2 * k + k + k + ((cfg["image"] // cfg["patch"]) ** 2 + 1) * k
        head = 2 * k + tm.LABELS * k  # final LayerNorm; classifier rows
    return layers * per_layer + embeddings + head


def _check(name: str, tmp_path: Path, **overrides) -> ir.Model:
    m = tm.build(name, **overrides)
    weak = np.sort(np.random.default_rng(0).choice(m.config["hidden"], CUT, replace=False))
    planted = tmp_path / f"{name}.planted.onnx"
    _plant(m.path, planted, weak)
    model = ir.load(planted)
    report = prune_structured(model, rate=0.0, hidden_rate=CUT / m.config["hidden"])
    out = tmp_path / f"{name}.pruned.onnx"
    ir.save(model, out)

    assert any("LayerNormalization now takes its mean and variance over the kept channels" in n
               for n in report.notes)
    hidden = [g for g in report.groups if g.chain.startswith("hidden:")]
    assert [(g.channels_before, g.channels_after) for g in hidden] == [(256, 256 - CUT)]
    assert hidden[0].note == f"hidden width 256 → {256 - CUT} in every layer"

    # the weak channels are the ones that went: every table keeps exactly the strong columns
    strong = np.setdiff1d(np.arange(m.config["hidden"]), weak)
    before = {n.name: n for n in ir.load(planted).graph}
    tables = [(n, 0, 1) for n in model.graph if n.op_type == "Gather" and const(n.inputs[0]) is not None
              and const(n.inputs[0]).ndim == 2]
    tables += [(n, 1, 0) for n in model.graph if n.op_type == "Conv"]  # ViT's patch embedding
    assert len(tables) == (1 if name == "vit" else 2 if name == "gpt2" else 3)
    for node, index, axis in tables:
        want = np.take(const(before[node.name].inputs[index]), strong, axis=axis)
        np.testing.assert_array_equal(const(node.inputs[index]), want)
    norms = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert norms and all(const(n.inputs[1]).shape == (256 - CUT,) for n in norms)
    assert np.all(const(norms[0].inputs[1]) == const(before[norms[0].name].inputs[1])[strong])

    removed = report.parameters_before - report.parameters_after
    expected = _expected_removed(name, m.config, CUT)
    assert abs(removed - expected) <= 0.01 * expected, (removed, expected)

    feeds = m.feeds(batch=2, seq=16, seed=1)
    got, want = _run(out, feeds), _run(m.path, feeds)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    return model


def test_gpt2_tied_head(tmp_path):
    """GPT-2's embedding Gather and its LM head (``MatMul(x, Transpose(table))``) read one table:
    both now read the same pruned table, [vocab, 192]."""
    model = _check("gpt2", tmp_path)
    gather = next(n for n in model.graph if n.op_type == "Gather" and const(n.inputs[0]) is not None
                  and const(n.inputs[0]).shape[0] == 1000)
    transpose = next(n for n in model.graph if n.op_type == "Transpose" and const(n.inputs[0]) is not None)
    assert transpose.inputs[0] is gather.inputs[0] and const(gather.inputs[0]).shape == (1000, 256 - CUT)


@pytest.mark.slow
def test_bert_classifier(tmp_path):
    _check("bert", tmp_path, head="classifier")


@pytest.mark.slow
def test_vit_classifier(tmp_path):
    """ViT: the patch Conv, its Reshape, the class token (Expand of a constant) and the position
    embedding are sliced with the rest."""
    model = _check("vit", tmp_path, head="classifier")
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert const(conv.inputs[1]).shape[0] == 256 - CUT
    token = next(n for n in model.graph if n.op_type == "Expand" and const(n.inputs[0]) is not None
                 and const(n.inputs[0]).ndim == 3)
    assert const(token.inputs[0]).shape == (1, 1, 256 - CUT)
    positions = [const(n.inputs[1]) for n in model.graph if n.op_type == "Add" and const(n.inputs[1]) is not None
                 and const(n.inputs[1]).ndim == 3]
    assert [p.shape for p in positions] == [(1, 65, 256 - CUT)]


def test_hidden_state_output_stays_whole():
    """BERT's bare encoder returns the hidden state: cutting it would change the model's output."""
    model = ir.load(tm.build("bert").path)
    group = _hidden(model)
    assert not group.prunable and group.reason == "reaches graph output last_hidden_state"
    report = prune_structured(ir.load(tm.build("bert").path), rate=0.0, hidden_rate=0.25)
    assert not report.pruned
    assert "hidden width left whole: reaches graph output last_hidden_state" in report.notes


def test_without_the_option_layernorm_blocks():
    """Not asked for, the hidden width is not a group: LayerNorm blocks it as before."""
    groups = find_groups(ir.load(tm.build("gpt2").path))
    assert not any(g.label == "hidden" for g in groups)
    assert any(g.reason and "LayerNormalization normalizes over the channels" in g.reason for g in groups)


def test_config():
    """The option as a pipeline step gives it (``prune: {method: structured, hidden_rate: 0.25}``)."""
    cfg = Prune.Config.model_validate({"method": "structured", "rate": 0.3, "hidden_rate": 0.25})
    assert cfg.hidden_rate == 0.25
    with pytest.raises(ValueError, match="hidden_rate is for method structured"):
        Prune.Config.model_validate({"method": "magnitude", "hidden_rate": 0.25})
    with pytest.raises(ValueError):
        Prune.Config.model_validate({"method": "structured", "hidden_rate": 1.0})


@pytest.mark.slow
def test_pipeline_yaml(tmp_path):
    """``mcomp run`` with ``prune: {method: structured, rate: 0.25, hidden_rate: 0.5}`` on GPT-2:
    heads and FFN at 0.25, the hidden width 256 → 128; the model runs, with the note."""
    import json
    import subprocess

    m = tm.build("gpt2")
    pipeline, out, report = tmp_path / "p.yaml", tmp_path / "gpt2.pruned.onnx", tmp_path / "r.json"
    pipeline.write_text("steps:\n  - prune: {method: structured, rate: 0.25, hidden_rate: 0.5}\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(root / ".venv/bin/mcomp"), "run", str(pipeline), str(m.path), "-o", str(out),
                           "--report", str(report), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    feeds = m.feeds(batch=1, seq=12, seed=3)
    assert _run(out, feeds).shape == (1, 12, 1000)
    norms = [n for n in ir.load(out).graph if n.op_type == "LayerNormalization"]
    assert norms and all(const(n.inputs[1]).shape == (128,) for n in norms)
    assert "LayerNormalization now takes its mean and variance" in report.read_text()
    json.loads(report.read_text())
