"""scikit-learn's ``ai.onnx.ml`` ops that skl2onnx writes around a network: Scaler, Normalizer,
Imputer, Binarizer (the pipeline's preprocessing) and ArrayFeatureExtractor (the class labels read
at the arg-max). A scikit-learn MLP exported with them could be pruned but not distilled ("cannot
convert to torch: unsupported ops ArrayFeatureExtractor, Scaler"). Each follows onnxruntime's
kernel: outputs compared in the tests. Registered as ``ai.onnx.ml::Op`` (``compiler.ML_PREFIX``).
"""

from __future__ import annotations

import math

import torch

from mcomp.torch_graph.compiler import ML_PREFIX, _op
from mcomp.torch_graph.errors import _Unsupported


def _per_feature(values: list[float] | None, default: float) -> torch.Tensor:
    """An attribute of one value or one per feature (the last axis), as a float32 row."""
    return torch.tensor(values if values else [default], dtype=torch.float32)


@_op(ML_PREFIX + "Scaler")
def _scaler(n):
    offset, scale = _per_feature(n.attr("offset"), 0.0), _per_feature(n.attr("scale"), 1.0)

    def f(ctx, x):
        return ((x.float() - offset.to(x.device)) * scale.to(x.device),)

    return f


@_op(ML_PREFIX + "Normalizer")
def _normalizer(n):
    norm = n.attr("norm", "MAX")
    if norm not in ("MAX", "L1", "L2"):
        raise _Unsupported(f"norm {norm!r}")

    def f(ctx, x):
        x = x.float()
        if norm == "MAX":
            return (x / x.amax(dim=-1, keepdim=True),)
        if norm == "L1":
            return (x / x.abs().sum(dim=-1, keepdim=True),)
        return (x / x.pow(2).sum(dim=-1, keepdim=True).sqrt(),)

    return f


@_op(ML_PREFIX + "Imputer")
def _imputer(n):
    if n.attr("imputed_value_int64s") or n.attr("replaced_value_int64") is not None:
        raise _Unsupported("integer imputation")
    imputed = _per_feature(n.attr("imputed_value_floats"), 0.0)
    replaced = n.attr("replaced_value_float", float("nan"))

    def f(ctx, x):
        missing = torch.isnan(x) if math.isnan(replaced) else x == replaced
        return (torch.where(missing, imputed.to(x.device, x.dtype).expand_as(x), x),)

    return f


@_op(ML_PREFIX + "Binarizer")
def _binarizer(n):
    threshold = n.attr("threshold", 0.0)

    def f(ctx, x):
        return ((x > threshold).to(x.dtype),)

    return f


@_op(ML_PREFIX + "ArrayFeatureExtractor")
def _array_feature_extractor(n):
    def f(ctx, x, indices):
        picked = torch.index_select(x, x.dim() - 1, indices.reshape(-1).long())
        return (picked.reshape(1, -1) if x.dim() == 1 else picked,)  # onnxruntime: a 1-D input gives [1, n]

    return f
