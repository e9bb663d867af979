"""Models whose examples lie on an inner axis, trained as if they lay on axis 0.

An RNN's state is ``[layers, batch, hidden]`` (silero-vad's ``state`` and ``stateN`` are
``[2, batch, 128]``). Training batches, shuffles, splits and compares examples along axis 0:
the teacher's targets, the student's outputs, the losses per example, the validation. Rather
than teach each of those an axis per tensor, the graphs that training runs get a Transpose on
each such input and output, so that they take and give examples first. The Transposes carry no
weights, so the trained parameters are written back into the student graph as it was, and the
written model keeps its own layout.

Which output axis follows the examples is read off the model by running it at two batch sizes:
a symbolic dim (``batch``) may be missing or named differently on each output. A model whose
batch dim is fixed runs at that size only: there the axis is the one of that size
(``fixed_batch_axes``). The same holds without such an input: an exported LSTM gives
``Y_h [layers, batch, hidden]`` from a zero state (the teacher's first batches show it:
``Teacher.follows_axis_0``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial

import numpy as np
import onnx_ir as ir

from mcomp import graph
from mcomp.errors import BadInput, NotApplicable, short
from mcomp.passes.distill import qdq

Axes = dict[str, int]  # tensor name -> the axis its examples lie on (only those past 0)


def examples_first(model: ir.Model, inputs: Axes, outputs: Axes, ranks: dict[str, int] | None = None) -> ir.Model:
    """A copy of ``model`` taking the inputs of ``inputs`` and giving the outputs of ``outputs``
    with their examples on axis 0; names and everything else unchanged. ``ranks``: the rank of
    an input or output whose shape the graph does not declare (as fed, as it ran)."""
    if not inputs and not outputs:
        return model
    model = graph.copy(model)
    g = model.graph
    for i, old in enumerate(list(g.inputs)):
        if inputs.get(old.name):
            g.inputs[i] = _take_first(g, old, inputs[old.name], _rank(old, ranks, "input", inputs[old.name]))
    for i, old in enumerate(list(g.outputs)):
        if outputs.get(old.name):
            g.outputs[i] = _give_first(g, old, outputs[old.name], _rank(old, ranks, "output", outputs[old.name]))
    return model


def _take_first(g: ir.Graph, old: ir.Value, axis: int, rank: int) -> ir.Value:
    """A new input of ``old``'s name with the examples first, transposed back for ``old``'s readers."""
    back = [*range(1, axis + 1), 0, *range(axis + 1, rank)]  # examples-first → the model's layout
    new = ir.Value(name=old.name, shape=_permuted(old.shape, _inverse(back)), type=old.type)
    old.name = f"{old.name}__model_layout"
    transpose = ir.node("Transpose", [new], attributes={"perm": back}, name=f"{new.name}__to_model_layout")
    transpose.outputs[0].name = old.name
    transpose.outputs[0].shape, transpose.outputs[0].type = old.shape, old.type
    old.replace_all_uses_with(transpose.outputs[0], replace_graph_outputs=True)
    if len(g):
        g.insert_before(g.node(0), transpose)
    else:
        g.append(transpose)
    return new


def _give_first(g: ir.Graph, old: ir.Value, axis: int, rank: int) -> ir.Value:
    """A new output of ``old``'s name: ``old`` with the examples moved first."""
    perm = [axis, *(a for a in range(rank) if a != axis)]
    name = old.name
    old.name = f"{name}__model_layout"
    transpose = ir.node("Transpose", [old], attributes={"perm": perm}, name=f"{name}__examples_first")
    out = transpose.outputs[0]
    out.name, out.type, out.shape = name, old.type, _permuted(old.shape, perm)
    g.append(transpose)
    return out


def _rank(value: ir.Value, ranks: dict[str, int] | None, role: str, axis: int) -> int:
    """The rank ``value`` was fed or ran at, else the one its shape declares. A declared shape that
    the model does not give is dropped (ddddocr's recognizer declares ``[1, seqlen]`` for logits it
    gives as ``[T, 1, classes]``; onnxruntime only warns): moved by it, the Transpose was refused."""
    rank = (ranks or {}).get(value.name)
    if rank is None and value.shape is not None:
        rank = len(value.shape)
    if rank is None:
        raise BadInput(f"distill: {role} {value.name!r} holds its examples on axis {axis}, but its rank is unknown")
    if value.shape is not None and len(value.shape) != rank:
        value.shape = None
    return rank


def for_training(model: ir.Model, samples, mapping: dict[str, str], providers: list[str], threads: int | None,
                 which: str, hints: Collection[str] = ()) -> tuple[ir.Model, Axes, dict[str, int]]:
    """``model`` taking the inputs of ``samples.axes`` and giving every output examples-first; the
    axis each of its outputs holds them on in the model, and each output's rank as it ran.
    ``mapping``: a feed's name (the student's) → the model's input name."""
    from mcomp import evaluate

    taking = examples_first(model, {mapping[k]: v for k, v in samples.axes.items()}, {},
                            {mapping[k]: samples.inputs[k].ndim for k in samples.axes})
    session = evaluate.session(qdq.for_shapes(taking), providers, threads, spinning=False)
    names = [o.name for o in session.get_outputs()]

    def run(n: int) -> list[np.ndarray]:
        feeds = samples.batch(np.resize(np.arange(len(samples)), n))
        try:
            return session.run(None, {mapping[k]: np.ascontiguousarray(v) for k, v in feeds.items()})
        except evaluate.ort_errors() as exc:
            raise BadInput(f"distill: the {which} fails on {n} examples of the data ({short(exc, 200)})") from None

    lead = session.get_inputs()[0].shape[0] if session.get_inputs() and session.get_inputs()[0].shape else None
    if isinstance(lead, int):  # a fixed batch: the model runs no other batch size
        ran = run(lead)
        axes = fixed_batch_axes(ran, names, lead, hints)
    else:
        ran = run(2)
        axes = output_axes(lambda n: ran if n == 2 else run(n), names, hints)
    ranks = {n: a.ndim for n, a in zip(names, ran)}
    return examples_first(taking, {}, axes, ranks), axes, ranks


def describe(inputs: Axes, outputs: Axes) -> str:
    """The report's note: which tensors hold their examples on an inner axis."""
    parts = [f"{k} (axis {v})" for k, v in {**inputs, **outputs}.items()] or ["none"]
    return f"examples on an inner axis, trained with them moved first: {', '.join(parts)}"


def output_axes(run: Callable[[int], list[np.ndarray]], names: list[str], hints: Collection[str] = ()) -> Axes:
    """The axis past 0 of each output that follows the examples, found by running the model on 2
    and then 3 examples (``run(n)`` gives the outputs for n examples). An output with no axis that
    follows them cannot be compared example by example: refused, with its shapes. A model output
    so refused is the model's (``NotApplicable``), a hint tensor (``hints``) the option's."""
    two, three = run(2), run(3)
    axes: Axes = {}
    for name, a, b in zip(names, two, three):
        moving = [k for k in range(min(a.ndim, b.ndim)) if a.shape[k] == 2 and b.shape[k] == 3]
        if not moving or a.ndim != b.ndim:
            error = BadInput if name in hints else partial(NotApplicable, pass_name="distill")
            raise error(f"distill: {'hint tensor' if name in hints else 'output'} {name!r} does not follow the "
                        f"examples (shape {list(a.shape)} for 2 examples, {list(b.shape)} for 3), so it cannot be "
                        "compared example by example")
        if moving[0]:
            axes[name] = moving[0]
    return axes


def fixed_batch_axes(outputs: list[np.ndarray], names: list[str], batch: int, hints: Collection[str] = ()) -> Axes:
    """``output_axes`` for a model whose batch dim is fixed at ``batch``, run once at it: the one
    axis of each output of that size. ddddocr's recognizer takes ``[1, 1, 64, W]`` and gives CTC
    logits ``[T, 1, classes]``; its distillation ran 2 examples at once to find the axis and failed
    ("Got: 2 Expected: 1"). Where axis 0 has that size it is taken, as every other check of mcomp
    does; where no axis or several past 0 have it, the output is refused as ``output_axes`` refuses."""
    axes: Axes = {}
    for name, out in zip(names, outputs):
        if out.ndim and out.shape[0] == batch:
            continue
        sized = [k for k in range(1, out.ndim) if out.shape[k] == batch]
        if len(sized) != 1:
            error = BadInput if name in hints else partial(NotApplicable, pass_name="distill")
            raise error(f"distill: {'hint tensor' if name in hints else 'output'} {name!r} is {list(out.shape)} "
                        f"at the model's fixed batch of {batch}: "
                        + ("no axis" if not sized else f"axes {', '.join(map(str, sized))}")
                        + " of that size, so which one follows the examples cannot be told")
        axes[name] = sized[0]
    return axes


def _inverse(perm: list[int]) -> list[int]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return out


def _permuted(shape: ir.Shape | None, perm: list[int]) -> ir.Shape | None:
    return None if shape is None else ir.Shape([shape[p] for p in perm])
