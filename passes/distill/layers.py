"""Transformer layers found in an ONNX graph, for the hidden-state and attention-map losses of
TinyBERT (Jiao et al., 2020) and MiniLM (Wang et al., 2020).

A layer is an attention block: one Softmax over the last axis of a rank-4 ``[N, heads, seq,
seq]`` tensor (the attention probabilities). Its output, the hidden state, is read where the
exporters put a LayerNormalization over the hidden axis at the layer boundary: the last
LayerNormalization before the next layer's Softmax (or the graph's end). That is the layer
output itself in a post-LN model (BERT), and the next layer's (or the final) normalization of
the residual stream in a pre-LN one (GPT-2, ViT); both are ``[N, seq, hidden]``. The hidden
state 0 is the last LayerNormalization before the first Softmax (the embeddings' in BERT, the
first layer's input normalization in GPT-2). Normalized states also make the MSE of layers of
different scale weigh alike.

Layers are matched uniformly when the student has fewer (TinyBERT's ``n = m · L_t / L_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from mcomp.errors import BadInput


@dataclass(frozen=True)
class Layers:
    attention: list[str]  # per layer: the Softmax output (attention probabilities)
    hidden: list[str]  # hidden state 0 (embeddings), then each layer's output


def _is_attention(node: ir.Node) -> bool:
    if node.op_type != "Softmax":
        return False
    shape = node.outputs[0].shape
    axis = node.attributes.get_int("axis", -1)
    return shape is None or (len(shape) == 4 and axis in (-1, 3))


def _is_hidden_norm(node: ir.Node) -> bool:
    return node.op_type == "LayerNormalization" and node.attributes.get_int("axis", -1) == -1


def find(model: ir.Model, which: str) -> Layers:
    """The attention maps and hidden states of ``model`` (``which``: "student" or "teacher", for
    the error). BadInput when the graph has no attention Softmax, or no LayerNormalization at
    the layer boundaries (a LayerNorm decomposed into ReduceMean…, as exports below opset 17 write it)."""
    softmax_at, norms, attention = [], [], []
    for k, node in enumerate(model.graph):
        if _is_attention(node):
            softmax_at.append(k)
            attention.append(node.outputs[0].name)
        elif _is_hidden_norm(node):
            norms.append((k, node.outputs[0].name))
    if not attention:
        raise BadInput(f"distill: the {which} has no attention Softmax ([N, heads, seq, seq]): hidden-state and "
                       "attention losses are for transformers")
    bounds = [-1] + softmax_at + [len(model.graph)]
    hidden = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # between two Softmaxes: the last normalization there
        inside = [name for k, name in norms if lo < k < hi]
        if not inside:
            raise BadInput(f"distill: the {which} has no LayerNormalization between attention layers "
                           f"{len(hidden) - 1} and {len(hidden)} (a LayerNorm exported as primitive ops, below "
                           "opset 17?): --hidden-loss needs one at each layer boundary")
        hidden.append(inside[-1])
    return Layers(attention, hidden)


def uniform(student_count: int, teacher_count: int, *, skip_first: bool) -> list[tuple[int, int]]:
    """Pairs (student index, teacher index): layer m of the student learns from layer
    m · L_t / L_s of the teacher. ``skip_first``: index 0 is the embeddings (hidden states),
    matched with the teacher's 0; layers count from 1 after it."""
    if skip_first:
        ls, lt = student_count - 1, teacher_count - 1
        return [(0, 0)] + [(m, round(m * lt / ls)) for m in range(1, ls + 1)]
    return [(m - 1, max(0, round(m * teacher_count / student_count) - 1)) for m in range(1, student_count + 1)]


def pairs(student: ir.Model, teacher: ir.Model, which: str) -> list[tuple[str, str]]:
    """(student tensor, teacher tensor) for ``which``: "hidden" or "attention"."""
    s, t = find(student, "student"), find(teacher, "teacher")
    s_names, t_names = (s.hidden, t.hidden) if which == "hidden" else (s.attention, t.attention)
    return [(s_names[i], t_names[j]) for i, j in uniform(len(s_names), len(t_names), skip_first=which == "hidden")]
