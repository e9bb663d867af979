"""The transformer stage of ``optimize`` (levels extended/all): onnxruntime's transformer fusions.

onnxruntime's C++ optimizer fuses only a few fixed transformer patterns; its Python transformer
optimizer (``onnxruntime.transformers``) knows many more (Attention, SkipLayerNormalization,
EmbedLayerNormalization, BiasGelu, FastGelu …) but must be told the architecture family and its
head count. This module finds those from the graph — so a user need not know them — and runs
onnxruntime's fusions rather than mcomp's own: they are written and tested against the kernels
that execute them. A graph with no attention (no Softmax over a product of two computed tensors)
is not a transformer: the stage returns at once and leaves it as it is. Attention that onnxruntime's
patterns leave unfused (the dynamo exporter's mask matches none of them) goes on to onnxscript's
attention fusions, a stage of its own (``attention.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import onnx_ir as ir

from mcomp.errors import ConfigError
from mcomp.passes.optimize.portable import foreign_ops

MODEL_TYPES = ("bert", "gpt2", "vit")
_HEAD_PERMS = ((0, 2, 1, 3), (0, 2, 3, 1))  # the head split, and the key's split-and-transpose


@dataclass(frozen=True)
class Architecture:
    """What onnxruntime's fusions need to know: the family, the head count and the hidden size."""

    model_type: str
    num_heads: int
    hidden_size: int

    def describe(self) -> str:
        return f"{self.model_type}, {self.num_heads} heads, hidden {self.hidden_size}"


def _const(value: ir.Value | None):
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def has_attention(model: ir.Model) -> bool:
    """A Softmax over the product of two computed tensors (the attention scores), possibly through
    the scale, mask and bias ops in between; the cheap test that keeps non-transformers untouched."""
    for node in model.graph:
        if node.op_type != "Softmax":
            continue
        frontier, seen = [node], 0
        while frontier and seen < 6:  # Softmax ← Add(mask) ← Mul/Div(scale) ← Where … ← MatMul
            seen += 1
            nxt = []
            for n in frontier:
                for v in n.inputs:
                    p = v.producer() if v is not None else None
                    if p is None:
                        continue
                    if p.op_type == "MatMul" and all(i is not None and i.producer() is not None
                                                     and _const(i) is None for i in p.inputs):
                        return True
                    if p.op_type in ("Add", "Mul", "Div", "Where", "Cast", "Sub"):
                        nxt.append(p)
            frontier = nxt
    return False


def _head_splits(model: ir.Model) -> Counter:
    """``(heads, head_size)`` of every Reshape that splits the hidden axis into heads: its target is
    ``[batch, seq, heads, head_size]`` (a constant, or a Concat whose last two parts are constants),
    and a Transpose moving the heads before the sequence follows."""
    found: Counter = Counter()
    for node in model.graph:
        if node.op_type != "Reshape" or len(node.inputs) < 2:
            continue
        if not any(use.op_type == "Transpose" and tuple(use.attributes.get_ints("perm", ())) in _HEAD_PERMS
                   for use, _ in node.outputs[0].uses()):
            continue
        shape = _const(node.inputs[1])
        if shape is None:
            concat = node.inputs[1].producer()
            if concat is None or concat.op_type != "Concat" or len(concat.inputs) < 2:
                continue
            tail = [_const(v) for v in concat.inputs[-2:]]
            if any(t is None or t.size != 1 for t in tail):
                continue
            shape = [0, 0, int(tail[0].reshape(-1)[0]), int(tail[1].reshape(-1)[0])]
        if len(shape) == 4:
            found[(int(shape[2]), int(shape[3]))] += 1
    return found


def _layernorm_width(model: ir.Model) -> int:
    """The hidden size as the most common LayerNormalization scale length (0 when none)."""
    widths = Counter()
    for node in model.graph:
        if node.op_type in ("LayerNormalization", "SkipLayerNormalization") and len(node.inputs) > 1:
            scale = _const(node.inputs[1 if node.op_type == "LayerNormalization" else 2])
            if scale is not None:
                widths[int(scale.size)] += 1
    return widths.most_common(1)[0][0] if widths else 0


def _model_type(model: ir.Model) -> str:
    """vit for an image input (4-D float), gpt2 for a text model whose output is projected back onto
    its vocabulary (a decoder: an output as wide as an embedding table, the token table an LM head is
    tied to), bert otherwise."""
    inputs = model.graph.inputs
    if any(v.shape is not None and len(v.shape) == 4 and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
           for v in inputs):
        return "vit"
    vocab = set()
    for node in model.graph:
        if node.op_type == "Gather" and node.inputs[0] is not None and node.inputs[0].const_value is not None:
            table = _const(node.inputs[0])
            if table is not None and table.ndim == 2:
                vocab.add(table.shape[0])
    for out in model.graph.outputs:
        if out.shape is not None and len(out.shape) >= 2 and out.shape[-1] in vocab:
            return "gpt2"
    return "bert"


def detect(model: ir.Model, model_type: str = "auto", num_heads: int = 0, hidden_size: int = 0) -> Architecture | None:
    """The architecture, from the options where given and from the graph where not (0 where neither
    says: onnxruntime then reads it itself, or its fusions do not match); None when the graph has no
    attention. Heads that do not divide the hidden size are a ConfigError."""
    if not has_attention(model):
        return None
    splits = _head_splits(model)
    heads, head_size = splits.most_common(1)[0][0] if splits else (0, 0)
    hidden = hidden_size or (heads * head_size if heads > 0 and head_size > 0 else _layernorm_width(model))
    if not num_heads:
        num_heads = heads if heads > 0 else (hidden // head_size if head_size > 0 and hidden else 0)
    if num_heads > 0 and hidden > 0 and hidden % num_heads:
        raise ConfigError(f"optimize: --num-heads {num_heads} does not divide the hidden size {hidden}")
    return Architecture(_model_type(model) if model_type == "auto" else model_type, num_heads, hidden)


def _with_gemm_bias(proto) -> None:
    """Gives every Gemm without a bias a zero one: onnxruntime's GPT-2 optimizer rewrites Gemm as
    MatMul + Add and reads the third input unconditionally (mcomp's portable stages drop zero biases)."""
    import numpy as np
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] in weights:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            weight = weights[node.input[1]]
            name = f"{node.name or node.output[0]}_zero_bias"
            dtype = helper.tensor_dtype_to_np_dtype(weight.data_type)
            proto.graph.initializer.append(numpy_helper.from_array(
                np.zeros(weight.dims[0] if trans_b else weight.dims[1], dtype), name))
            node.input.append(name)


def fuse(model: ir.Model, arch: Architecture) -> tuple[ir.Model | None, dict[str, int]]:
    """onnxruntime's transformer fusions for ``arch`` on ``model``: the result (None when no fusion
    applies) and the fused ops it added (``op → count``). onnxruntime's own errors propagate (the
    caller rejects the stage)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    before = foreign_ops(model)
    proto = ir.serde.serialize_model(model)
    if arch.model_type == "gpt2":
        _with_gemm_bias(proto)
    # its modules log under their own names (fusion_attention, onnx_model …), warnings included, and a
    # pass never prints: the report says what fused
    muted = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        options = FusionOptions(arch.model_type)
        fused = optimize_by_fusion(proto, arch.model_type, arch.num_heads, arch.hidden_size, options)
    finally:
        logging.disable(muted)
    result = ir.serde.deserialize_model(fused.model)
    domains = {node.domain for node in result.graph}
    for domain in domains - set(result.opset_imports) - {"", "ai.onnx"}:
        result.opset_imports[domain] = 1  # optimize_by_fusion writes the ops but not always their import
    added = {op.split("::", 1)[1]: n - before.get(op, 0) for op, n in foreign_ops(result).items()
             if n > before.get(op, 0)}
    return (result if added else None), added


def fused_summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in sorted(counts.items()))


def run_stage(try_stage, arch: Architecture, current: ir.Model, check, records: dict,
              attention_fusions: bool = True) -> ir.Model:
    """Runs the fusions as a checked stage through ``try_stage`` (``Optimize._try``) and records the
    fused ops of a kept result in the stage's report record (``fused_ops``)."""
    fused: dict[str, int] = {}

    def apply(model: ir.Model) -> ir.Model | None:
        result, added = fuse(model, arch)
        fused.update(added)
        return result

    current, kept = try_stage("transformer", f"onnxruntime transformer fusions ({arch.describe()})", current,
                              apply, check, records, functional=True)
    record = records["transformer"]
    record["fused_ops"] = fused if kept else {}
    if not kept and fused and record["reason"]:
        record["reason"] += f" (fusions tried: {fused_summary(fused)})"
    record["architecture"] = {"model_type": arch.model_type, "num_heads": arch.num_heads,
                              "hidden_size": arch.hidden_size}
    if attention_fusions and has_attention(current):  # onnxruntime's patterns missed it (a dynamo export's mask): onnxscript's
        from mcomp.passes.optimize import attention

        current = attention.run_stage(try_stage, current, check, records)
    return current


def notes(arch: Architecture | None, records: dict) -> list[str]:
    """What the transformer and attention stages did, for people: the fused ops, or that no pattern matched."""
    record, attention = records.get("transformer"), records.get("attention")
    said = [f"attention fusions (onnxscript): {fused_summary(attention['fused_ops'])}"] \
        if attention is not None and attention.get("fused_ops") else []
    if arch is None or record is None or record["rejected"]:
        return said  # not a transformer, or the rejection is already a note with its reason
    if record["fused_ops"]:
        return [f"transformer fusions ({arch.describe()}): {fused_summary(record['fused_ops'])}"] + said
    return [f"transformer fusions ({arch.describe()}): none of onnxruntime's patterns matched this graph"] + said
