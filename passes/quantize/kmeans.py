"""Weight sharing by k-means (Deep Compression): a per-layer codebook of 2^bits centroids.

The written model keeps float weights whose values are the centroids, so it runs on every
runtime at the input's speed; what it saves shows once deployed in the compressed form —
each layer's codebook plus its Huffman-coded indices — whose size the report gives as the
deployable compressed size (and which zip/zstd partly recover from the ONNX file itself).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mcomp.kernels import clustering, entropy

CLUSTERED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather")


def weight_inputs(model: ir.Model, excluded) -> list[tuple[ir.Node, ir.Value]]:
    """(node, weight initializer) pairs of the layers to cluster: float weights of compute ops and embeddings."""
    out, seen = [], set()
    for node in model.graph:
        if node.op_type not in CLUSTERED_OPS or excluded(node):
            continue
        index = 0 if node.op_type == "Gather" else 1
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is None or value.const_value is None or value.name in seen or value.name not in model.graph.initializers:
            continue
        if value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or value.const_value.size < 64:
            continue
        seen.add(value.name)
        out.append((node, value))
    return out


def cluster(model: ir.Model, bits: int, excluded, init: str = "linear", seed: int = 0) -> dict:
    """Replaces each layer's weights by their centroids, in place; returns per-layer and total sizes."""
    k = 1 << bits
    layers, clustered_params = [], 0
    codebook_bytes = huffman_bytes = fixed_bytes = 0
    entropy_bytes = 0.0
    for node, value in weight_inputs(model, excluded):
        w = value.const_value.numpy()
        centroids, labels = clustering.kmeans_1d(w, k, init=init, seed=seed)
        shared = clustering.reconstruct(centroids, labels, w.shape).astype(w.dtype)
        value.const_value = ir.tensor(shared, name=value.name)
        sizes = entropy.coded_bytes(labels, k)
        book = k * 4  # float32 centroids
        codebook_bytes += book
        huffman_bytes += sizes["huffman"]
        fixed_bytes += sizes["fixed"]
        entropy_bytes += sizes["entropy"]
        clustered_params += w.size
        err = float(np.linalg.norm(shared.astype(np.float64) - w) / max(np.linalg.norm(w.astype(np.float64)), 1e-30))
        layers.append({"node": node.name, "op_type": node.op_type, "weight": value.name, "params": int(w.size),
                       "centroids": int(centroids.size), "relative_error": round(err, 6),
                       "huffman_bits_per_weight": round(8 * sizes["huffman"] / w.size, 3)})
    return {"layers": layers, "clustered_params": clustered_params, "codebook_bytes": codebook_bytes,
            "index_bytes_fixed": fixed_bytes, "index_bytes_huffman": huffman_bytes,
            "index_bytes_entropy_bound": int(np.ceil(entropy_bytes))}
