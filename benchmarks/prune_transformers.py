"""Benchmarks structured pruning of transformers: mcomp on the ONNX graph against Torch-Pruning in torch.

The three small transformers of ``tests/transformer_models.py`` (4 layers, hidden 256, 4 heads, FFN
1024; random weights from a fixed seed): half the attention heads and half the FFN width of every
layer removed, the hidden (residual) size kept. Then mcomp alone cuts the hidden size instead (heads
and FFN kept), 256 → 192 and → 128 in every layer together (``hidden_rate``; the embeddings,
LayerNorms, projections and GPT-2's tied LM head sliced), where the model's output is not the hidden
state (GPT-2's logits, ViT's pooler; BERT's bare encoder returns it, so it has no such rows).

- mcomp: ``prune --method structured --rate 0.5`` (importance l1) on the exported ONNX file;
- Torch-Pruning (a benchmark-only dependency): ``BasePruner`` with L1 magnitude, ``num_heads`` for
  the Q/K/V projections, ``prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5``,
  ``pruning_ratio=0.5`` for the FFN, every residual-writing projection and ViT's pooler ignored
  (so the hidden size and the output stay); the pruned module is exported the way the fixture exports the original. GPT-2's fused
  Conv1D QKV projection has no Torch-Pruning head rule, so GPT-2 is mcomp only.

For each: heads per layer, FFN width, parameters and MACs (mcomp's counters on both ONNX files, at
batch 1 and the sequence length given), output cosine against the unpruned model (random weights:
a check that the cut is sane, not an accuracy), and latency of the input, mcomp's and Torch-Pruning's
file interleaved in one onnxruntime run (spinning off), with the A/A noise floor.

    python benchmarks/prune_transformers.py [--runs 30] [--seq 128] [--models bert,vit,gpt2] [--out DIR]

Writes ``prune_transformers.json`` and ``.md`` under ``benchmarks/results`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import transformer_models as tm  # noqa: E402

from mcomp import bench, graph, model as model_io  # noqa: E402
from mcomp.pass_base import Context  # noqa: E402
from mcomp.passes.prune import Prune  # noqa: E402
from mcomp.passes.prune.structured.prepare import prepare  # noqa: E402
from mcomp.session import resolve_providers  # noqa: E402
from mcomp.summary import tensor_counts  # noqa: E402

CPU = resolve_providers("cpu")


def mcomp_prune(m, out: Path, shapes) -> dict:
    loaded = model_io.load(m.path)
    start = time.perf_counter()
    result = Prune(method="structured", rate=0.5, importance="l1")(graph.copy(loaded.model),
                                                                  Context(input_shapes=shapes))
    seconds = time.perf_counter() - start
    model_io.save(result.model, out)
    groups = result.details["groups"]
    heads = [int(g["note"].split("→")[1]) for g in groups if "heads" in (g.get("note") or "")]
    ffn = [g["channels_after"] for g in groups if g["channels_before"] == m.config["ffn"]]
    return {"path": str(out), "seconds": round(seconds, 2), "heads": heads, "ffn": ffn}


def mcomp_hidden(m, out: Path, shapes, width: int) -> dict | None:
    """The hidden size alone cut to ``width`` (None where it stays whole: the output is the hidden state)."""
    from mcomp.passes.prune.structured import prune_structured

    model = graph.copy(model_io.load(m.path).model)
    start = time.perf_counter()
    report = prune_structured(model, rate=0.0, hidden_rate=1 - width / m.config["hidden"], input_shapes=shapes)
    seconds = time.perf_counter() - start
    hidden = [g for g in report.groups if g.chain.startswith("hidden:") and g.channels_after < g.channels_before]
    if not hidden:
        return None
    model_io.save(model, out)
    return {"path": str(out), "seconds": round(seconds, 2), "heads": [m.config["heads"]] * m.config["layers"],
            "ffn": [m.config["ffn"]] * m.config["layers"], "hidden": hidden[0].channels_after}


def _projections(attention):
    """Q, K, V of a transformers attention module (BERT: query/key/value; ViT: q_proj/k_proj/v_proj)."""
    return [getattr(attention, a, None) or getattr(attention, b) for a, b in
            (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))]


def _attention_modules(module):
    return [a for a in module.modules() if hasattr(a, "num_attention_heads")
            and (hasattr(a, "query") or hasattr(a, "q_proj"))]


def torch_pruning_prune(m, out: Path) -> dict:
    """Torch-Pruning on the same architecture, weights and seed as the fixture's export."""
    import torch
    import torch_pruning as tp

    module = copy.deepcopy(tm._module(m.name, m.config))
    attention = _attention_modules(module)
    num_heads = {lin: a.num_attention_heads for a in attention for lin in _projections(a)}
    ignored = [mod for name, mod in module.named_modules()
               if name.endswith(("output.dense", "o_proj", "mlp.fc2", "pooler.dense"))]
    example = tuple(torch.from_numpy(v) for v in tm._inputs(m.name, m.config, 1, 16, 0).values())
    start = time.perf_counter()
    pruner = tp.pruner.BasePruner(module, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, global_pruning=False, ignored_layers=ignored,
                                  num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=0.5)
    pruner.step()
    seconds = time.perf_counter() - start
    for a in attention:  # the module reads its own head count in forward
        q = _projections(a)[0]
        a.num_attention_heads = pruner.num_heads[q]
        if hasattr(a, "all_head_size"):
            a.all_head_size = q.out_features
    ffn = [mod.out_features for name, mod in module.named_modules() if name.endswith(("intermediate.dense", "mlp.fc1"))]
    _export(module, m, out)
    return {"path": str(out), "seconds": round(seconds, 2), "heads": [a.num_attention_heads for a in attention],
            "ffn": ffn}


def _export(module, m, path: Path) -> None:
    """As ``transformer_models`` exports the unpruned model (dynamo, opset 18, dynamic batch/seq)."""
    import torch

    example = {k: torch.from_numpy(v) for k, v in tm._inputs(m.name, m.config, 2, 16, 0).items()}
    if m.name == "vit":
        shapes = {"args": ({0: torch.export.Dim("batch", min=1, max=1024)},)}
    else:
        dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("seq", min=2, max=512)}
        shapes = {"args": tuple(dims for _ in example)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            torch.onnx.export(module.eval(), tuple(example.values()), str(path), input_names=list(example),
                              output_names=["y"], opset_version=18, dynamo=True, dynamic_shapes=shapes,
                              external_data=False, verbose=False)


def counts(path, shapes) -> dict:
    """Parameters and MACs as ``mcomp inspect`` counts them, after the same constant folding for every
    file (torch computes some constants at run time that mcomp's output already holds)."""
    model = prepare(model_io.load(path).model)
    return {"params": tensor_counts(model)[0].parameters, "macs": graph.macs(model, shapes).total}


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_model(name: str, seq: int, runs: int, tmp: Path) -> dict:
    import onnxruntime as ort

    m = tm.build(name)
    feeds = [m.feeds(batch=1, seq=seq, seed=s) for s in range(4)]
    shapes = {k: v.shape for k, v in feeds[0].items()}
    rows = {"input": {"path": str(m.path), "heads": [m.config["heads"]] * m.config["layers"],
                      "ffn": [m.config["ffn"]] * m.config["layers"]}}
    rows["mcomp"] = mcomp_prune(m, tmp / f"{name}.mcomp.onnx", shapes)
    if name != "gpt2":
        rows["torch-pruning"] = torch_pruning_prune(m, tmp / f"{name}.tp.onnx")
    for width in (192, 128):
        row = mcomp_hidden(m, tmp / f"{name}.hidden{width}.onnx", shapes, width)
        if row is not None:
            rows[f"mcomp hidden {width}"] = row
    reference = [ort.InferenceSession(str(m.path), providers=CPU).run(None, f)[0] for f in feeds]
    for label, row in rows.items():
        row.update(counts(row["path"], shapes))
        session = ort.InferenceSession(row["path"], providers=CPU)
        row["cosine"] = round(float(np.mean([cosine(r, session.run(None, f)[0]) for r, f in zip(reference, feeds)])), 5)
    timing = bench.interleaved([(label, row["path"]) for label, row in rows.items()], feeds, providers=CPU,
                               warmup=5, runs=runs)
    for stats in timing.models:
        if stats.label in rows:
            rows[stats.label].update(p50_ms=round(stats.p50_ms, 3), ratio=stats.ratio and round(stats.ratio, 3))
    for row in rows.values():
        row.pop("path")
    return {"shape": {k: list(v) for k, v in shapes.items()}, "rows": rows,
            "noise_floor": timing.noise_floor.to_dict() if timing.noise_floor else None}


def markdown(results: dict) -> str:
    lines = ["| model | tool | heads/layer | FFN | params | MACs | cosine | p50 ms | latency × |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, res in results["models"].items():
        for label, row in res["rows"].items():
            lines.append(f"| {name} {res['shape']} | {label} | {row['heads']} | {row['ffn']} | {row['params']:,} | "
                         f"{row['macs']:,} | {row['cosine']} | {row.get('p50_ms')} | {row.get('ratio') or 1.0} |")
        nf = res["noise_floor"]
        if nf:
            lines.append(f"| | A/A noise | | | | | | | {nf['p10']}–{nf['p90']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--models", default="bert,vit,gpt2")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results["models"][name] = run_model(name, args.seq, args.runs, Path(tmp))
            print(json.dumps({name: results["models"][name]}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_transformers.json").write_text(json.dumps(results, indent=1))
    (args.out / "prune_transformers.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
