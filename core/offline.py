"""onnxruntime's offline graph optimization, as a step of mcomp's own (optimize's onnxruntime stage,
quantize's preparation): the graph onnxruntime writes at a level, with a big model's weights kept
out of the protobuf and shared with the input where unchanged, and never grown by its folding.
Split from ``evaluate`` (running and judging models), which it uses for session options.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx_ir as ir

from mcomp.evaluate import _options
from mcomp.external_data import external_tensors, mapped_in_memory, release_pages, release_tensor
from mcomp.graph import all_graphs
from mcomp.sources import BIG_WEIGHTS, reads_data, runnable, weight_bytes


def offline_optimized(model: ir.Model | bytes | str | Path, level: str, providers: list[str], *,
                      disabled: Iterable[str] = ()) -> ir.Model:
    """onnxruntime's offline-optimized graph at ``level`` (basic: standard ONNX ops, any provider;
    extended/all: onnxruntime's fused ops for ``providers``), with the optimizers named in ``disabled``
    (e.g. ``MatMulAddFusion``) left out. onnxruntime's errors propagate as they are: a caller decides
    whether a graph the optimizer rejects is bad input or a step to skip."""
    import onnxruntime as ort

    big = weight_bytes(model) >= BIG_WEIGHTS
    options = _options(optimization=level, big=big)
    handed = _passed_through(model) if big and level == "basic" and isinstance(model, ir.Model) else []
    with (_as_inputs(model, handed), runnable(model) as source,
          tempfile.TemporaryDirectory(prefix="mcomp-ort-") as tmp):
        out = Path(tmp) / "optimized.onnx"
        reads_data(options, source)
        options.optimized_model_filepath = str(out)
        if big:  # the optimized weights go to a file beside it, mapped below: no protobuf of them
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "optimized.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        ort.InferenceSession(source, options, providers=providers, disabled_optimizers=list(disabled))
        optimized = ir.load(out)
        for value in external_tensors(optimized):  # mapped now, so the pages outlive the temp folder
            tensor = value.const_value
            value.const_value = mapped_in_memory(tensor)
        _restored(optimized, handed)
        if isinstance(model, ir.Model) and big:
            _share_unchanged(optimized, model)
        return optimized


# Weights of this size or more that onnxruntime's basic level only reads, handed to it as graph inputs: it writes
# every initializer it holds to the optimized file, 2.4 s of a 0.75 GiB model's 2.7 s there (about 0.4 GB/s)
# for weights that come back unchanged. Ops whose weight input no basic-level optimizer rewrites: they fuse
# around it (MatMul + Add → Gemm) from the graph, which an input leaves as it was.
PASSED_MIN_BYTES = 1 << 20
PASSED_THROUGH = frozenset({"MatMul", "Gemm", "Gather", "LSTM", "GRU", "RNN"})


def _passed_through(model: ir.Model) -> list[ir.Value]:
    """The top-level weights of ``PASSED_MIN_BYTES`` or more read only by ``PASSED_THROUGH`` nodes that also
    read a value computed at run time (so constant folding would not fold the node)."""
    def computed(value: ir.Value | None) -> bool:
        producer = value.producer() if value is not None else None
        return value is not None and value.const_value is None and (producer is None or producer.op_type != "Constant")

    chosen = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if (tensor is None or tensor.nbytes < PASSED_MIN_BYTES or value.is_graph_input()
                or value.is_graph_output() or not value.uses()):
            continue
        if all(node.op_type in PASSED_THROUGH and node.domain in ("", "ai.onnx") and any(map(computed, node.inputs))
               for node, _ in value.uses()):
            chosen.append(value)
    return chosen


@contextmanager
def _as_inputs(model: ir.Model, values: list[ir.Value]):
    """``values`` (initializers of ``model``) declared as graph inputs in the block instead: the model is then
    serialized without their data. Restored after, in their order."""
    if not values:
        yield
        return
    graph, order = model.graph, list(model.graph.initializers)
    for value in values:
        graph.initializers.pop(value.name)
        graph.inputs.append(value)
    try:
        yield
    finally:
        for value in values:
            graph.inputs.remove(value)
        held = {name: graph.initializers.pop(name) for name in list(graph.initializers)}
        held.update({value.name: value for value in values})
        for name in order:
            graph.initializers.add(held[name])


def _restored(optimized: ir.Model, handed: list[ir.Value]) -> None:
    """The weights handed as inputs (``_as_inputs``) made initializers of ``optimized`` again, holding the
    input's own tensors; one its optimizer left unread is dropped."""
    inputs = {value.name: value for value in optimized.graph.inputs}
    for original in handed:
        value = inputs.get(original.name)
        if value is None:
            continue
        optimized.graph.inputs.remove(value)
        if value.uses():
            value.const_value = original.const_value
            optimized.graph.initializers.add(value)


# Parameters onnxruntime's optimizer may add (folded shapes and small constants): 2 % and 64 k elements (a tiny
# model's folded shape constants are a large share of it).
GROWTH, GROWTH_ELEMENTS = 1.02, 1 << 16


class WeightsGrew(Exception):
    """onnxruntime's optimizer grew the weights even without its constant folding: ``before`` → ``after``."""

    def __init__(self, before: int, after: int):
        super().__init__(f"onnxruntime's optimizer grew the weights ({before:,} → {after:,} parameters)")
        self.before, self.after = before, after


def offline_optimized_no_bigger(model: ir.Model, level: str, providers: list[str], *,
                                disabled: Iterable[str] = ()) -> tuple[ir.Model, str | None]:
    """``offline_optimized``, without growing the weights; with a note where its constant folding was left out.

    onnxruntime's constant folding materializes a Transpose (or Cast …) of a weight other nodes also read:
    an LLM's tied head, ``MatMul(h, Transpose(table))``, came out with the table stored twice (a 0.75 GiB
    model written at 1.07 GB), and folding inside subgraphs copies weights into every branch. Where the
    parameters grow by more than ``GROWTH`` and ``GROWTH_ELEMENTS``, the optimizer runs again without
    ``ConstantFolding``; ``WeightsGrew`` if they still grow."""
    from mcomp.summary import tensor_counts

    before = tensor_counts(model)[0].parameters
    limit = before * GROWTH + GROWTH_ELEMENTS
    copied = _folding_copies(model, limit - before)
    if copied is None:
        optimized = offline_optimized(model, level, providers, disabled=disabled)
        folded = tensor_counts(optimized)[0].parameters
        if folded <= limit:
            return optimized, None
        copied = f"grew the weights ({before:,} → {folded:,} parameters)"
    optimized = offline_optimized(model, level, providers, disabled=[*disabled, "ConstantFolding"])
    after = tensor_counts(optimized)[0].parameters
    if after > limit:
        raise WeightsGrew(before, after)
    return optimized, f"onnxruntime's constant folding {copied}; optimized without it"


FOLDED_COPIES = ("Transpose", "Cast")  # ops whose folding onnxruntime always does, writing a copy of their input


def _folding_copies(model: ir.Model, room: float) -> str | None:
    """What constant folding would grow the weights by more than ``room`` elements with, said before running
    it: a Transpose or Cast of a weight that other nodes also read (a tied LM head's ``Transpose(table)``),
    whose folded copy is stored beside it. Found here, the optimizer runs once, without folding; on a 0.75 GiB
    LLM-shaped model the run that found the growth took ~2 s. Other growth is found by running it."""
    for node in model.graph:
        if node.op_type not in FOLDED_COPIES or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        weight = node.inputs[0]
        if weight is None or weight.const_value is None or weight.const_value.size <= room:
            continue
        others = [user for user, _ in weight.uses() if user is not node]
        if others or weight.is_graph_output():
            return (f"would copy {weight.name!r} ({weight.const_value.size:,} parameters; {node.op_type} "
                    f"{node.name!r}), which {'other nodes read' if others else 'is a graph output'} too")
    return None


def _share_unchanged(optimized: ir.Model, model: ir.Model) -> None:
    """Gives ``optimized`` the input's own tensor objects where onnxruntime wrote the same bytes under
    the same name (most weights of a big model pass through unchanged): the result then holds one copy
    of them, the input's mapped one, rather than a second one from onnxruntime's file."""
    own = {name: value.const_value for g in all_graphs(model.graph) for name, value in g.initializers.items()}
    for value in optimized.graph.initializers.values():
        before, after = own.get(value.name), value.const_value
        if (before is None or before is after or after is None or before.dtype != after.dtype or before.shape != after.shape
                or before.nbytes < (1 << 20)):
            continue
        if np.array_equal(np.asarray(before.numpy()), np.asarray(after.numpy())):
            value.const_value = before  # the other's mapping goes with its last reference
        release_tensor(before)  # both compared: one weight's pages at a time resident, not the model's twice
        release_tensor(after)
    release_pages(model)
