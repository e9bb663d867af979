"""The every-layer weight-only model that onnxruntime's ``MatMulNBitsQuantizer`` writes, built here.

Why: its quantizer loads the prepared model, quantizes each MatMul weight with a one-core kernel and
each Gather table in numpy whole-table temporaries, then the model is saved and loaded again, once
per block size the search tries. On a 1 GiB LLM-shaped model (an 8192² embedding table, its tied
head and 3 layers) each run took ~12 s and the pass peaked at 2.3× the model. Here each weight is read where
it is (a big model's from its mapped file) and quantized in slices on every core
(``kernels.blockwise`` for MatMulNBits, ``kernels.table_int4`` for GatherBlockQuantized).

The result holds what ``nbits_compose.compose`` takes from onnxruntime's: its header (opsets, IR
version), the nodes replacing each unit (``X_Q{bits}``, ``com.microsoft``) and their initializers
(``W_Q{bits}`` and ``W_scales``; ``T_Q4`` and ``T_scales`` for a table), the same names, attributes and
bytes as onnxruntime's (``tests/test_quantize_nbits_full.py`` checks candidates of both against each
other). Symmetric weights only, as the scheme quantizes them (no zero points). What is not computed here
(a float16 weight, a table with a shorter last block; int8 tables onnxruntime leaves float, and so
does this) is left to onnxruntime's quantizer, for the whole model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from mcomp.external_data import copy_fields, release_tensor
from mcomp.kernels import blockwise, table_int4
from mcomp.passes.quantize import mapped_source

INT4_OPSET = 21  # int4 tensors (GatherBlockQuantized's table); onnxruntime's quantizer sets it, with IR 10
INT4_IR = 10


def unsupported(proto: onnx.ModelProto, names: list[str], bits: int, block: int) -> str | None:
    """Why the model of ``names`` quantized goes to onnxruntime's quantizer; None when it is built here."""
    inits = {t.name: t for t in proto.graph.initializer}
    names = set(names)
    for node in proto.graph.node:
        if node.name not in names:
            continue
        if node.op_type == "MatMul":
            weight = inits.get(node.input[1])
            if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2:
                return f"MatMul {node.name!r} reads no 2-D float32 weight"
        elif node.op_type == "Gather":
            table = inits.get(node.input[0])
            if bits != 4:
                continue  # onnxruntime leaves it float: int4 tables only
            if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2:
                return f"Gather {node.name!r} reads no 2-D float32 table"
            if block < 16 or block & (block - 1):
                return f"Gather {node.name!r}: a table's block is a power of two from 16, not {block}"
            if table.dims[1] % block:
                return f"Gather {node.name!r}: its {table.dims[1]} columns are not whole blocks of {block}"
        else:
            return f"a {node.op_type}"
    return None


def build(proto: onnx.ModelProto, names: list[str], op_types: tuple[str, ...], bits: int, block: int,
          threads: int | None = None, spill: Path | None = None) -> onnx.ModelProto:
    """``proto`` with every node of ``names`` quantized, as onnxruntime's quantizer writes it with the
    accuracy level unset (``0``): its header, the replacing nodes and their initializers only.
    ``spill``: a file (in the pass's folder) the new initializers are written to and referred to in, for a
    big model: held inline between candidates, the 1 GiB LLM-shaped model's (200 MB) were in memory
    beside the input's session while the guard timed it."""
    store = mapped_source.Store(spill)
    inits = {t.name: t for t in proto.graph.initializer}
    names = set(names)
    nodes: list[onnx.NodeProto] = []
    tensors: dict[str, list[TensorProto]] = {}  # a weight or table → what replaces it, made once
    for node in proto.graph.node:
        if node.name not in names:
            continue
        if node.op_type == "MatMul":
            weight = inits[node.input[1]]
            if weight.name not in tensors:
                tensors[weight.name] = _matmul_weight(weight, bits, block, threads, store)
            k, n = weight.dims
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{weight.name}_Q{bits}",
                                                          f"{weight.name}_scales"], [node.output[0]],
                                          name=f"{node.name}_Q{bits}", domain="com.microsoft", K=k, N=n, bits=bits,
                                          block_size=block))
        elif node.op_type == "Gather" and bits == 4 and "Gather" in op_types:
            table = inits[node.input[0]]
            if table.name not in tensors:
                tensors[table.name] = _table(table, block, threads, store)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            nodes.append(helper.make_node("GatherBlockQuantized", [f"{table.name}_Q4", node.input[1],
                                                                   f"{table.name}_scales"], [node.output[0]],
                                          name=f"{node.name}_Q4", domain="com.microsoft", gather_axis=axis,
                                          quantize_axis=1, block_size=block))
    out = onnx.ModelProto()
    copy_fields(proto, out, skip={"graph"})
    _set_opset(out, "com.microsoft", 1)
    if "Gather" in op_types:  # as onnxruntime's quantizer does whenever it is asked for tables
        for opset in out.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < INT4_OPSET:
                opset.version = INT4_OPSET
        out.ir_version = max(out.ir_version, INT4_IR)
    out.graph.name = proto.graph.name
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(t for made in tensors.values() for t in made)
    return out


def _set_opset(proto: onnx.ModelProto, domain: str, version: int) -> None:
    """onnxruntime's ``set_opset_import``: the domain's version set, or the domain appended."""
    for opset in proto.opset_import:
        if opset.domain == domain:
            opset.version = version
            return
    proto.opset_import.append(helper.make_opsetid(domain, version))


def _matmul_weight(weight: TensorProto, bits: int, block: int, threads,
                   store: mapped_source.Store | None = None) -> list[TensorProto]:
    store = store or mapped_source.Store()
    tensor = ir.serde.deserialize_tensor(weight)  # viewed inline, or mapped from a big model's file
    array = tensor.numpy()
    tail = array.shape[0] % block
    try:
        if tail * bits % 8:  # an odd last row of 4 bits: onnxruntime's kernel fills the pad nibble its own way
            raise blockwise.NonFinite("an odd tail")
        # onnxruntime pads the rows with zeros to whole blocks (K stays the rows) and leaves the pad's bytes 0
        padded = np.pad(array, ((0, block - tail), (0, 0))) if tail else array
        packed, scales = blockwise.quantize(padded, block, bits, threads)
        if tail:
            packed[:, -1, tail * bits // 8:] = 0
    except blockwise.NonFinite:
        packed, scales = _onnxruntimes_kernel(array, bits, block)  # its range scan skips a NaN
    release_tensor(tensor)
    return [store(packed, f"{weight.name}_Q{bits}"), store(scales, f"{weight.name}_scales")]


def _onnxruntimes_kernel(array: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits)
    packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(array))
    return packed, scales


def _table(table: TensorProto, block: int, threads, store) -> list[TensorProto]:
    tensor = ir.serde.deserialize_tensor(table)
    packed, scales = table_int4.quantize(tensor.numpy(), block, threads)
    release_tensor(tensor)
    return [store(packed, f"{table.name}_Q4", TensorProto.INT4, list(table.dims)),
            store(scales, f"{table.name}_scales")]
