"""ONNX data types to torch dtypes, and tensors between ``onnx_ir``, torch and numpy.

Shared by the module (parameters and buffers from the stored tensors, and
:func:`~mcomp.torch_graph.write_back` going the other way), the compiler (``Constant``
nodes) and the ops (``Cast``, the integer ranges of QuantizeLinear).  INT4/UINT4 are held
widened in int8/uint8 with their values kept exactly; string tensors and float8 raise
``_Unsupported`` (reported with the op that holds them).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch

from mcomp.torch_graph.errors import _Unsupported

_D = ir.DataType
_TORCH_DTYPES: dict[ir.DataType, torch.dtype] = {
    _D.FLOAT: torch.float32, _D.DOUBLE: torch.float64, _D.FLOAT16: torch.float16,
    _D.BFLOAT16: torch.bfloat16, _D.INT8: torch.int8, _D.UINT8: torch.uint8,
    _D.INT16: torch.int16, _D.INT32: torch.int32, _D.INT64: torch.int64, _D.BOOL: torch.bool,
    _D.UINT16: torch.uint16, _D.UINT32: torch.uint32, _D.UINT64: torch.uint64,
}
_FLOAT_TYPES = frozenset({_D.FLOAT, _D.DOUBLE, _D.FLOAT16, _D.BFLOAT16})
# Integer ranges of the quantized types (QuantizeLinear saturates to these).
_QRANGE: dict[ir.DataType, tuple[int, int]] = {
    _D.INT8: (-128, 127), _D.UINT8: (0, 255), _D.INT16: (-32768, 32767), _D.UINT16: (0, 65535),
    _D.INT32: (-(2**31), 2**31 - 1), _D.INT4: (-8, 7), _D.UINT4: (0, 15),
}
# Types stored in a wider torch type (values kept exactly).
_WIDENED = {_D.INT4: torch.int8, _D.UINT4: torch.uint8}


def _torch_dtype(dt: ir.DataType | int) -> torch.dtype:
    dt = ir.DataType(dt)
    if dt in _TORCH_DTYPES:
        return _TORCH_DTYPES[dt]
    if dt in _WIDENED:
        return _WIDENED[dt]
    raise _Unsupported(f"data type {dt.name}")


def _tensor_to_torch(t: ir.TensorProtocol) -> torch.Tensor:
    dt = t.dtype
    if dt == _D.STRING:
        raise _Unsupported("string tensors")
    arr = t.numpy()
    if dt == _D.BFLOAT16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    target = _torch_dtype(dt)  # raises for float8 and the like
    if dt in _WIDENED:
        arr = np.asarray(arr).astype(np.int8 if target == torch.int8 else np.uint8)
    return torch.from_numpy(np.array(arr, copy=True))


def _torch_to_numpy(t: torch.Tensor, dt: ir.DataType) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().astype(dt.numpy(), copy=False)


def _numel(t: ir.TensorProtocol) -> int:
    return math.prod(t.shape.numpy()) if t.shape is not None else 1
