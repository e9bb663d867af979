"""Feature losses: which tensors of student and teacher are compared, and along which axis.

Three kinds, all extra outputs of both graphs compared per example:
- hints (FitNets): named pairs, or ``auto``: the inputs of the last two weight layers named
  alike in both graphs (a pruned student's);
- hidden states (``hidden_loss``, TinyBERT): the layer outputs, matched uniformly
  (``layers``);
- attention maps (``attention_loss``, TinyBERT/MiniLM): the matched layers' Softmax outputs.

A student tensor is mapped to the teacher's by a learned linear projection over its feature
axis: the axis its graph computes over (channels, axis 1, where a Conv or BatchNormalization
reads it; hidden, the last axis of ``[batch, seq, hidden]``, where a MatMul, Gemm or
LayerNormalization does; see :func:`feature_axis`). Pruning changes the size of that axis
only, which the projection absorbs; a pair whose other axes differ, or whose leading axis is
not the batch (GPT-2's ``[batch·seq, hidden]`` Gemm inputs), cannot be compared example by
example: an automatic pick is dropped with a note, a named one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp.errors import BadInput
from mcomp.passes.distill import layers
from mcomp.passes.distill.objective import Hint

# Ops that read their input along the last axis, or along axis 1 (channels); and ops that keep
# the meaning of every axis (element-wise), through which the search for such a reader walks.
_LAST_AXIS = {"MatMul", "Gemm", "MatMulInteger", "MatMulNBits", "Softmax", "LogSoftmax"}
_CHANNEL_AXIS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "BatchNormalization",
                 "InstanceNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
_ELEMENTWISE = {"Relu", "Gelu", "Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "Erf", "Clip", "LeakyRelu", "Elu",
                "Selu", "HardSigmoid", "HardSwish", "Identity", "Cast", "Dropout", "Pow", "Sqrt", "Neg", "Exp",
                "Softplus", "Mish", "PRelu", "QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Spec:
    student: str
    teacher: str
    kind: str  # "hint" | "hidden" | "attention"
    auto: bool  # picked by mcomp: dropped with a note, not an error, when it cannot be compared


def specs(cfg, student: ir.Model, teacher: ir.Model, notes: list[str]) -> list[Spec]:
    """The pairs the options ask for, before their shapes are known."""
    out: list[Spec] = []
    if cfg.hints == ["auto"]:
        names = auto_hints(student, teacher)
        if not names:
            notes.append("hints (auto): no layer input named alike in student and teacher")
        out += [Spec(n, n, "hint", True) for n in names]
    else:
        out += [Spec(s, t, "hint", False) for s, t in zip(*_hint_names([h for h in cfg.hints if h != "none"]))]
    if cfg.hidden_loss:
        out += [Spec(s, t, "hidden", False) for s, t in layers.pairs(student, teacher, "hidden")]
    if cfg.attention_loss != "none":
        out += [Spec(s, t, "attention", False) for s, t in layers.pairs(student, teacher, "attention")]
    return out


def auto_hints(student: ir.Model, teacher: ir.Model, count: int = 2) -> list[str]:
    """The inputs of the last ``count`` weight layers (Conv, Gemm, MatMul with a stored weight)
    that both graphs name alike: the deepest features, where a pruned student has fewer channels.
    A layer input reshaped from ``[batch, seq, hidden]`` to ``[batch·seq, hidden]`` (GPT-2's
    Reshape→Gemm) is taken before the Reshape, where its rows are still examples."""
    def layer_inputs(model: ir.Model) -> list[str]:
        graph_inputs = {v.name for v in model.graph.inputs}
        names = []
        for node in model.graph:
            if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.inputs) > 1 and node.inputs[1] is not None \
                    and node.inputs[1].const_value is not None and node.inputs[0] is not None:
                name = _before_row_merge(node.inputs[0]).name
                if name not in graph_inputs and name not in names:
                    names.append(name)
        return names

    theirs = set(layer_inputs(teacher))
    return [n for n in layer_inputs(student) if n in theirs][-count:]


def _before_row_merge(value: ir.Value) -> ir.Value:
    """The rank-3 input of a Reshape that merges its first two axes into rows, else ``value``.
    Where the graph declares neither shape, a Reshape to a constant ``[rows, features]`` is taken as
    such a merge too: a CTC recognizer's ``[T, N, F] → [T·N, F]`` before its Gemm (rows of time and
    examples mixed follow neither, and the hint refused the whole distillation)."""
    node = value.producer()
    if node is None or node.op_type != "Reshape" or node.inputs[0] is None or node.inputs[0].const_value is not None:
        return value
    data = node.inputs[0]
    if value.shape is None and data.shape is None:
        target = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
        flat = target is not None and target.numpy().shape == (2,) and int(target.numpy()[1]) > 0
        return data if flat else value
    if value.shape is None or len(value.shape) != 2:
        return value
    keeps_last = data.shape is not None and len(data.shape) == 3 and data.shape[-1] == value.shape[-1]
    return data if keeps_last else value


def _hint_names(hints: list[str]) -> tuple[list[str], list[str]]:
    pairs = [h.split("=", 1) if "=" in h else [h, h] for h in hints]
    for s, t in pairs:
        if not s.strip() or not t.strip():
            raise BadInput(f"distill: hint {'='.join((s, t))!r}: expected STUDENT_TENSOR=TEACHER_TENSOR")
    return [s.strip() for s, _ in pairs], [t.strip() for _, t in pairs]


def extra_outputs(names: list[str], outputs: list[str]) -> list[str]:
    """``names`` not among the graph's ``outputs``, each once, in order: what to add as outputs."""
    out: list[str] = []
    for n in names:
        if n not in outputs and n not in out:
            out.append(n)
    return out


# The teacher's feature tensors are computed once for all examples and held in memory: attention
# maps grow with seq², 9.4 MB per example for BERT-base at sequence length 128.
TARGET_MEMORY = 8 << 30


def check_memory(names: list[str], probed: list[np.ndarray], probe_examples: int, examples: int) -> None:
    """BadInput before the teacher runs when its feature tensors for all ``examples`` would not fit
    ``TARGET_MEMORY`` (``probed``: those tensors on ``probe_examples`` examples)."""
    need = sum(t.nbytes for t in probed) / max(probe_examples, 1) * examples
    if need > TARGET_MEMORY:
        largest = max(zip((t.nbytes for t in probed), names))[1]
        raise BadInput(f"distill: the teacher's feature tensors (hints, hidden states, attention maps; the largest "
                       f"{largest}) for {examples} examples need {need / (1 << 30):.1f} GiB in memory, over "
                       f"{TARGET_MEMORY >> 30} GiB: use fewer examples, a shorter sequence, or fewer feature losses")


def feature_axis(model: ir.Model, name: str, rank: int) -> int | None:
    """The axis the graph computes over in tensor ``name`` (of ``rank``, batch included): the
    last for a tensor a MatMul/Gemm/LayerNormalization/Softmax reads, 1 for one a Conv,
    BatchNormalization or pooling reads, looking through element-wise ops on both sides;
    1 for rank 2; the last across a Reshape that merges ``[batch, seq]`` into rows; None where
    no op decides."""
    if rank <= 2:
        return rank - 1
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    start = values.get(name)
    seen, frontier = {name}, [start] if start is not None else []
    for _ in range(8):
        following = []
        for value in frontier:
            for node, index in value.uses():
                axis = _reads(node, index, rank)
                if axis is not None:
                    return axis
                if node.op_type in _ELEMENTWISE:
                    following += [o for o in node.outputs if o.name not in seen]
            producer = value.producer()
            if producer is not None:
                axis = _reads(producer, None, rank)
                if axis is not None:
                    return axis
                if producer.op_type in _ELEMENTWISE:
                    following += [v for v in producer.inputs if v is not None and v.const_value is None
                                  and v.name not in seen and v.shape is not None and len(v.shape) == rank]
        seen.update(v.name for v in following)
        frontier = following
    return None


def _reads(node: ir.Node, index: int | None, rank: int) -> int | None:
    """The axis ``node`` computes over in its input ``index`` (None: in its output)."""
    op = node.op_type
    if op in _CHANNEL_AXIS:
        return 1
    if op == "LayerNormalization":
        axis = node.attributes.get_int("axis", -1)
        return rank - 1 if axis in (-1, rank - 1) else None
    if op in ("Softmax", "LogSoftmax"):
        axis = node.attributes.get_int("axis", -1)
        return rank - 1 if axis in (-1, rank - 1) else None
    if op in _LAST_AXIS and index in (0, None):
        return rank - 1
    if op == "Reshape" and _merges_rows(node):  # [batch, seq, hidden] ↔ [batch·seq, hidden] of a token-wise layer
        return rank - 1
    return None


def _merges_rows(node: ir.Node) -> bool:
    """A Reshape between ``[batch, seq, hidden]`` and ``[batch·seq, hidden]`` (either way)."""
    a, b = node.inputs[0].shape, node.outputs[0].shape
    return a is not None and b is not None and sorted((len(a), len(b))) == [2, 3] and a[-1] == b[-1] \
        and isinstance(a[-1], int)


def build(chosen: list[Spec], student: ir.Model, s_outputs: list[str], probe_s: list[np.ndarray],
          t_outputs: list[str], probe_t: list[np.ndarray], train_t: list[np.ndarray], notes: list[str]) -> list[Hint]:
    """The checked hints: each spec's tensors in the student's outputs (``s_outputs``, probed as
    ``probe_s``) and the teacher's (``t_outputs``: probed as ``probe_t``, on the training data as
    ``train_t``)."""
    hints, dropped = [], []
    for spec in chosen:
        si, ti = s_outputs.index(spec.student), t_outputs.index(spec.teacher)
        s, t = probe_s[si], probe_t[ti]
        why, axis = _mismatch(spec, student, s, t, len(probe_s[0]))
        if why is not None:
            if not spec.auto:
                raise BadInput(f"distill: {_label(spec)} {spec.student}={spec.teacher}: {why}")
            dropped.append(f"{spec.student} ({why})")
            continue
        hints.append(Hint(spec.student, spec.teacher, int(s.shape[axis]), int(t.shape[axis]), float(np.var(train_t[ti])),
                          axis=axis,
                          kind=spec.kind, student_index=si, teacher_index=ti))
    if dropped:
        notes.append(f"hints (auto): left out {'; '.join(dropped)}")
    picked = [h for h in hints if h.kind == "hint" and any(s.auto for s in chosen)]
    if any(s.auto for s in chosen):
        notes.append(f"hints (auto): {', '.join(f'{h.student} (axis {h.axis})' for h in picked)}" if picked else
                     "hints (auto): none left; soft targets only")
    heads = {(h.student_channels, h.teacher_channels) for h in hints if h.kind == "attention"}
    if any(a != b for a, b in heads):
        notes.append("attention maps of students with fewer heads than the teacher are compared averaged over "
                     "the heads")
    return hints


def _mismatch(spec: Spec, student: ir.Model, s: np.ndarray, t: np.ndarray, batch: int) -> tuple[str | None, int]:
    """Why the two probed tensors cannot be compared example by example (None: they can), and the
    feature axis of the student's."""
    shapes = f"shapes {list(s.shape[1:])} and {list(t.shape[1:])}"
    if s.ndim < 2 or s.shape[0] != batch or t.shape[0] != batch:
        return f"shape {list(s.shape)} for {batch} examples: the leading axis is not the batch", 1
    if s.ndim != t.ndim:
        return f"{shapes} differ in rank", 1
    if spec.kind == "attention":
        if s.ndim != 4 or s.shape[2:] != t.shape[2:]:
            return f"{shapes}: attention maps [heads, seq, seq] of different sequence lengths", 1
        return None, 1
    axis = feature_axis(student, spec.student, s.ndim)
    differ = [a for a in range(1, s.ndim) if s.shape[a] != t.shape[a]]
    if axis is None:  # no op reads it along a known axis: the one axis the prune changed, else channels
        axis = differ[0] if len(differ) == 1 else 1
    if any(a != axis for a in differ):
        return f"{shapes} differ in more than the feature axis ({axis}, {_axis_word(axis, s.ndim)})", axis
    return None, axis


def _axis_word(axis: int, rank: int) -> str:
    return "hidden" if axis == rank - 1 and rank == 3 else "channels" if axis == 1 else "last" \
        if axis == rank - 1 else f"axis {axis}"


def _label(spec: Spec) -> str:
    return {"hint": "hint", "hidden": "hidden state", "attention": "attention map"}[spec.kind]
