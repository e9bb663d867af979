"""Structured pruning of transformers on their ONNX graphs: attention heads and FFN widths of BERT,
GPT-2 (fused QKV through Reshape→Gemm→Reshape) and ViT, as ``torch.onnx.export`` writes them.

The strongest check is a planted one: every other head and every other FFN channel is made weak
(its weights scaled by 1e-3), a masked copy has those units' weights set to zero (a head whose Q,
K, V and output rows are zero adds exactly nothing), and the pruned model must compute what the
masked copy computes. That proves the right heads were cut, Q, K and V together, with the output
projection's rows, and that every Reshape constant was rewritten to match.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import transformer_models as tm  # noqa: E402

from mcomp.passes.prune.structured import find_groups, prune_structured  # noqa: E402
from mcomp.passes.prune.structured.paths import map_path  # noqa: E402
from mcomp.passes.prune.structured.prepare import const, prepare  # noqa: E402
from mcomp.passes.prune.structured.surgery import set_input  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEAK = 1e-3


def _run(path, feeds) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _plant(path: Path, tmp: Path) -> tuple[Path, Path, list]:
    """(planted model, masked model, its groups): every other unit of every prunable group weak /
    zero in all the tensors the group cuts."""
    copies = {}
    for scale in (WEAK, 0.0):
        model = ir.load(path)
        groups = find_groups(model)
        for group in groups:
            if not group.prunable:
                continue
            units = group.units or [np.array([c]) for c in range(group.channels)]
            weak = np.concatenate(units[1::2])
            for m in group.members:
                if m.role not in ("producer", "consumer", "param"):
                    continue
                w = const(m.node.inputs[m.input_index]).copy()
                index = [slice(None)] * w.ndim
                index[m.axis] = map_path(m.path, weak)[1]
                w[tuple(index)] *= scale
                set_input(model, m.node, m.input_index, w)
        copies[scale] = tmp / f"{path.stem}.{'masked' if scale == 0 else 'planted'}.onnx"
        ir.save(model, copies[scale])
    return copies[WEAK], copies[0.0], groups


def _expected_params_removed(cfg: dict, qkv_bias: bool) -> int:
    """Half the heads (Q, K, V columns and biases, output rows) and half the FFN (fc columns and
    bias, projection rows) of every layer."""
    h, f, layers = cfg["hidden"], cfg["ffn"], cfg["layers"]
    heads = 4 * h * (h // 2) + (3 * (h // 2) if qkv_bias else 0)
    ffn = 2 * h * (f // 2) + (f // 2 if qkv_bias else 0)
    return layers * (heads + ffn)


def _check_pruned(name: str, tmp_path: Path) -> None:
    m = tm.build(name)
    planted, masked, _ = _plant(m.path, tmp_path)
    model = ir.load(planted)
    report = prune_structured(model, rate=0.5)
    out = tmp_path / f"{name}.pruned.onnx"
    ir.save(model, out)

    notes = [g.note for g in report.groups if g.note]
    assert notes == [f"layer {i} attention: 4 heads → 2" for i in range(m.config["layers"])]
    ffn = [g for g in report.groups if g.channels_before == m.config["ffn"]]
    assert len(ffn) == m.config["layers"] and all(g.channels_after == m.config["ffn"] // 2 for g in ffn)

    # the Q projection (GPT-2: the fused QKV) lost half its columns; ViT's Reshape constants say 2 heads
    pruned = ir.load(out)
    first = next(n for n in pruned.graph if n.op_type in ("MatMul", "Gemm") and const(n.inputs[1]) is not None
                 and const(n.inputs[1]).shape[0] == m.config["hidden"])
    width = const(first.inputs[1]).shape[1]
    assert width == (3 if name == "gpt2" else 1) * m.config["hidden"] // 2
    heads_entries = [const(n.inputs[1]).tolist() for n in pruned.graph if n.op_type == "Reshape"
                     and const(n.inputs[1]) is not None and len(const(n.inputs[1])) == 4]
    if name == "vit":
        assert heads_entries and all(e[2] == 2 for e in heads_entries)

    removed = report.parameters_before - report.parameters_after
    expected = _expected_params_removed(m.config, qkv_bias=name != "gpt2")
    assert abs(removed - expected) <= 0.01 * expected, (removed, expected)

    feeds = m.feeds(batch=2, seq=16, seed=1)
    got, want = _run(out, feeds), _run(masked, feeds)
    assert got.shape == _run(m.path, feeds).shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_heads_and_ffn(name, tmp_path):
    _check_pruned(name, tmp_path)


def test_gpt2_exact_when_nothing_cut(tmp_path):
    """A rate too small to remove a head or a multiple of 8 FFN channels changes nothing, although
    the Reshape shape nodes shared by the layers were given private copies. (Compared with the
    graph as ``prepare`` folds it: folding alone moves GPT-2's logits by ~1e-7, as onnxruntime
    then fuses differently.)"""
    m = tm.build("gpt2")
    model = ir.load(m.path)
    report = prune_structured(model, rate=0.001)
    assert not report.pruned and report.parameters_after == report.parameters_before
    out, ref = tmp_path / "same.onnx", tmp_path / "prepared.onnx"
    ir.save(model, out)
    ir.save(prepare(ir.load(m.path)), ref)
    feeds = m.feeds(batch=2, seq=8, seed=2)
    assert np.array_equal(_run(out, feeds), _run(ref, feeds))


@pytest.mark.slow
def test_cli_gpt2(tmp_path):
    """``mcomp prune --method structured --rate 0.5`` on GPT-2: heads and FFN cut, the model runs."""
    m = tm.build("gpt2")
    out = tmp_path / "gpt2.pruned.onnx"
    proc = subprocess.run([str(ROOT / ".venv/bin/mcomp"), "prune", str(m.path), "--method", "structured",
                           "--rate", "0.5", "-o", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    feeds = m.feeds(batch=1, seq=12, seed=3)
    assert _run(out, feeds).shape == _run(m.path, feeds).shape
    heads = [n for n in ir.load(out).graph if n.op_type == "Gemm" and const(n.inputs[1]).shape[1] == 384]
    assert len(heads) == m.config["layers"]
