"""Weight sharing by k-means (Deep Compression): a per-layer codebook of 2^bits centroids.

The written model keeps float weights whose values are the centroids, so it runs on every
runtime at the input's speed; what it saves shows once deployed in the compressed form —
each layer's codebook plus its Huffman-coded indices — whose size the report gives as the
deployable compressed size (and which zip/zstd partly recover from the ONNX file itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mcomp.kernels import clustering, entropy

# op type → the inputs that hold weights (Deep Compression shares every layer's weights, recurrent ones too)
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (1,), "Gemm": (1,), "Gather": (0,),
                 "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}


def weight_inputs(model: ir.Model, excluded) -> list[tuple[ir.Node, ir.Value]]:
    """(node, weight initializer) pairs to cluster, in every graph (subgraphs included): float weights of
    compute, recurrent and embedding ops, 64 elements or more."""
    out, seen = [], set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type not in WEIGHT_INPUTS or node.domain not in ("", "ai.onnx") or excluded(node):
            continue
        for index in WEIGHT_INPUTS[node.op_type]:
            value = node.inputs[index] if len(node.inputs) > index else None
            if value is None or value.const_value is None or id(value) in seen or not value.is_initializer():
                continue
            if value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or value.const_value.size < 64:
                continue
            seen.add(id(value))
            out.append((node, value))
    return out


@dataclass
class Layer:
    node: ir.Node
    value: ir.Value
    original: ir.TensorProtocol
    shared: ir.TensorProtocol
    info: dict


def plan(model: ir.Model, bits: int, excluded, init: str = "linear", seed: int = 0) -> list[Layer]:
    """Each layer's codebook and shared weights, with its sizes; the model is not changed yet."""
    k = 1 << bits
    layers = []
    for node, value in weight_inputs(model, excluded):
        w = value.const_value.numpy()
        centroids, labels = clustering.kmeans_1d(w, k, init=init, seed=seed)
        shared = clustering.reconstruct(centroids, labels, w.shape).astype(w.dtype)
        sizes = entropy.coded_bytes(labels, k)
        err = float(np.linalg.norm(shared.astype(np.float64) - w) / max(np.linalg.norm(w.astype(np.float64)), 1e-30))
        info = {"node": node.name, "op_type": node.op_type, "weight": value.name, "params": int(w.size),
                "centroids": int(centroids.size), "relative_error": round(err, 6),
                "huffman_bits_per_weight": round(8 * sizes["huffman"] / w.size, 3),
                "codebook_bytes": k * 4, "index_bytes_fixed": sizes["fixed"], "index_bytes_huffman": sizes["huffman"],
                "index_bytes_entropy_bound": sizes["entropy"]}
        layers.append(Layer(node, value, value.const_value, ir.tensor(shared, name=value.name), info))
    return layers


def apply(layers: list[Layer], keep_float: set[int]) -> None:
    """Shared weights in every layer but those (by index) in ``keep_float``, in place."""
    for i, layer in enumerate(layers):
        layer.value.const_value = layer.original if i in keep_float else layer.shared


def sizes(layers: list[Layer], keep_float: set[int], total_params: int) -> dict:
    """Deployable bytes: codebooks + indices of the shared layers, float32 for every other parameter."""
    shared = [layer.info for i, layer in enumerate(layers) if i not in keep_float]
    clustered = sum(x["params"] for x in shared)
    other = 4 * (total_params - clustered)
    book = sum(x["codebook_bytes"] for x in shared)
    return {"float32": 4 * total_params, "clustered_params": clustered,
            "deployable_huffman": book + sum(x["index_bytes_huffman"] for x in shared) + other,
            "deployable_fixed_width": book + sum(x["index_bytes_fixed"] for x in shared) + other,
            "entropy_bound": int(np.ceil(book + sum(x["index_bytes_entropy_bound"] for x in shared) + other))}
