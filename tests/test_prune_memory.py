"""Pruning a big model holds one more copy of a weight at a time, not of every weight (issue 12):
magnitude pruning consumes its scores and makes one pruned array per layer, the channel norms of
structured pruning are taken a block of channels at a time (the same sums, bit for bit), and the
mapped pages of weights read or replaced are released. Small models; the sizes are lowered."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcomp.kernels import importance as imp
from mcomp.passes.prune import criteria
from mcomp.passes.prune import unstructured as un
from mcomp.passes.prune.structured import driver


def _chain(dim: int, layers: int = 4) -> ir.Model:
    """x → ``layers`` MatMuls of ``dim``×``dim`` float weights."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        prev = f"m{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _whole_tensor_norm(w: np.ndarray, axis: int, p: int) -> np.ndarray:
    """channel_norm as it was, over the whole tensor at once: what the blocks must reproduce exactly."""
    moved = np.moveaxis(w.astype(np.float32), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(moved).sum(axis=1) if p == 1 else np.sqrt((moved ** 2).sum(axis=1))


@pytest.mark.parametrize("shape", [(100, 513), (513, 100), (64, 32, 3, 3), (40, 30, 20)])
@pytest.mark.parametrize("channels_a_block", [1, 2, 7, 64])
def test_channel_norm_in_blocks_is_bit_for_bit_the_whole_tensors(monkeypatch, shape, channels_a_block):
    """Blocks of any size, a last block of one channel included (numpy sums a lone channel in
    another order), give the very scores of the whole tensor, so the channels kept do not change."""
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for axis in range(w.ndim):
        monkeypatch.setattr(imp, "CHANNEL_BLOCK_BYTES", channels_a_block * 4 * (w.size // w.shape[axis]))
        for p in (1, 2):
            assert imp.channel_norm(w, axis, p).tobytes() == _whole_tensor_norm(w, axis, p).tobytes()


def test_channel_norm_holds_one_block_not_three_copies(monkeypatch):
    """The float32 copy, the reordering and the absolute values were each a copy of the tensor."""
    w = np.random.default_rng(2).standard_normal((512, 512)).astype(np.float32)  # 1 MiB
    monkeypatch.setattr(imp, "CHANNEL_BLOCK_BYTES", 64 << 10)
    tracemalloc.start()
    try:
        imp.channel_norm(w, 1, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < w.nbytes / 2


def test_magnitude_apply_consumes_the_scores_and_copies_each_weight_once():
    """Each score is dropped once its mask is made, and the pruned array is not converted into a
    second copy: one layer's apply held its score, the np.where result and an astype copy of it."""
    model = _chain(512, layers=3)
    layers, _ = un.find_layers(model, [], protect_ends=False)
    weight_bytes = layers[0].value.const_value.nbytes
    tracemalloc.start()  # before the scores, so that freeing them counts
    try:
        scores = un.weight_scores(layers, criteria.get("magnitude"), np.random.default_rng(0))
        counts = un.allocate(scores, 0.5, "global", 0.95)
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        records = un.apply(layers, scores, counts)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert scores == [None] * len(layers)
    assert [r["sparsity"] for r in records] == [pytest.approx(0.5, abs=0.01)] * 3
    # one layer's weights read from the protobuf, its partition copy of the score (or its pruned
    # array, in the freed score's place) and its mask: 2.0×; before, every score stayed and each
    # pruned array was copied once more: 5.25×
    assert peak < 3 * weight_bytes


def test_magnitude_pruning_releases_the_mapped_pages_it_reads(monkeypatch):
    """Counting, scoring and replacing each weight release its mapped pages, so none stays resident
    beside the scores and the pruned copies."""
    released = []
    monkeypatch.setattr(un, "release_tensor", lambda tensor: released.append(tensor.name))
    model = _chain(32)
    layers, _ = un.find_layers(model, [], protect_ends=False)
    names = [layer.name for layer in layers]
    un.nonzero(layers)
    assert released == names
    scores = un.weight_scores(layers, criteria.get("magnitude"), np.random.default_rng(0))
    assert released == names * 2
    un.apply(layers, scores, un.allocate(scores, 0.5, "global", 0.95))
    assert released == names * 3


def test_structured_cut_releases_each_replaced_weight(monkeypatch):
    """The cut reads each weight it slices; the original's mapped pages are released once it is
    replaced, not held (with every other original) until the end of the pass."""
    released = []
    monkeypatch.setattr(driver, "release_tensor", lambda tensor: released.append(tensor))
    model = _chain(32)
    originals = {v.name: v.const_value for v in model.graph.initializers.values()}
    driver.prune_structured(model, rate=0.5, round_to=1)
    cut = [name for name, tensor in originals.items() if model.graph.initializers[name].const_value is not tensor]
    assert cut == ["w0", "w1", "w2", "w3"]
    # w1 and w2 are cut twice (a consumer in one group, a producer in the next): their first cut too
    assert {id(originals[name]) for name in cut} <= {id(t) for t in released}


def test_magnitude_of_float32_weights_makes_one_array():
    """|w| of a float32 weight is not taken of a float32 copy of it (256 MiB more for one 8192×8192 weight)."""
    w = np.random.default_rng(3).standard_normal((512, 512)).astype(np.float32)
    tracemalloc.start()
    try:
        scores = imp.magnitude(w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scores.dtype == np.float32 and np.array_equal(scores, np.abs(w))
    assert peak < 1.5 * w.nbytes
