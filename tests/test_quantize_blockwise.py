"""Our block-wise weight quantizer (``kernels/blockwise``) against onnxruntime's kernel: the same bytes."""

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

from mcomp.kernels import blockwise


def _onnxruntime(weight, block, bits):
    rows, columns = weight.shape
    blocks, per_byte = rows // block, 8 // bits
    packed = np.zeros((columns, blocks, block // per_byte), dtype=np.uint8)
    scales = np.zeros((columns, blocks), dtype=np.float32)
    zero_points = np.zeros((columns, (blocks + per_byte - 1) // per_byte), dtype=np.uint8)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, weight, scales, zero_points, block, columns, rows, True)
    return packed, scales


def _awkward(rows, columns, block, seed):
    """Gaussian weights plus the blocks where rounding and range rules show: zeros, a constant, a tie of
    magnitudes (the negative peak wins only when larger), exact halves after scaling, denormal-small values."""
    weight = np.random.default_rng(seed).standard_normal((rows, columns), dtype=np.float32) * 3
    weight[:block, 0] = 0
    weight[:block, 1] = 3.0
    weight[:block, 2] = np.linspace(-4, 4, block, dtype=np.float32)
    weight[:block, 3] = -weight[:block, 3].max()
    weight[:block, 4] = 1e-30
    halves = np.resize(np.array([-8, 0.5, 1.5, 2.5, -0.5, -1.5, 6.5, -7.5], dtype=np.float32), block)
    weight[:block, 5] = halves  # the peak -8 makes the scale 1: x + 8 lands on exact halves
    weight[block:2 * block, 5] = halves * 16  # and the same through a scale of 16
    return weight


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows, columns, block", [(256, 96, 32), (512, 600, 128), (64, 7, 16), (1024, 300, 64)])
def test_the_same_bytes_as_onnxruntimes_kernel(bits, rows, columns, block):
    weight = _awkward(rows, columns, block, seed=rows + columns)
    packed, scales = blockwise.quantize(weight, block, bits, threads=2)
    expected_packed, expected_scales = _onnxruntime(weight, block, bits)
    assert np.array_equal(scales, expected_scales)
    assert np.array_equal(packed, expected_packed)


def test_what_it_does_not_compute_is_left_to_onnxruntime():
    weight = np.ones((96, 8), dtype=np.float32)
    assert blockwise.supported(weight, 32, 4)
    assert not blockwise.supported(weight, 64, 4)  # rows not a whole number of blocks: onnxruntime pads them
    assert not blockwise.supported(weight, 32, 2)
    assert not blockwise.supported(weight.astype(np.float16), 32, 4)
    with pytest.raises(ValueError, match="rows a multiple of the block"):
        blockwise.quantize(weight, 64, 4)
    for bad in (np.nan, np.inf, -np.inf):  # onnxruntime's range scan skips a NaN; numpy's carries it
        weight[70, 5] = bad
        with pytest.raises(blockwise.NonFinite, match="columns 0–7"):
            blockwise.quantize(weight, 32, 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_weight_only_pass_writes_the_same_model_with_either_kernel(monkeypatch, bits):
    """The pass's model, built here (``nbits_full``) and by onnxruntime's quantizer and kernel (ours switched
    off): the same tensors. The count of calls shows which kernel ran."""
    from onnxruntime.quantization import matmul_nbits_quantizer

    from mcomp.passes.quantize import Quantize, nbits_full
    from test_quantize_int4 import _ir, linear_stack, stack_context
    from test_quantize_pass import fixed_timing

    fixed_timing(monkeypatch, {"*": 1.0})
    calls = []
    quantize = blockwise.quantize
    monkeypatch.setattr(blockwise, "quantize", lambda *a, **k: calls.append(1) or quantize(*a, **k))

    def run():
        result = Quantize(mode="weight-only", bits=bits, block_size=64, min_fidelity=0.5)(
            _ir(linear_stack().SerializeToString()), stack_context())
        assert sum(n.op_type == "MatMulNBits" for n in result.model.graph) == 3
        return {v.name: v.const_value.numpy().tobytes() for v in result.model.graph.initializers.values()}

    ours = run()
    assert len(calls) == 3
    monkeypatch.setattr(blockwise, "supported", lambda *a: False)
    monkeypatch.setattr(nbits_full, "unsupported", lambda *a: "onnxruntime's quantizer, to compare")
    spied = matmul_nbits_quantizer.DefaultWeightOnlyQuantizer.qbits_block_quant
    kernel_calls = []
    monkeypatch.setattr(matmul_nbits_quantizer.DefaultWeightOnlyQuantizer, "qbits_block_quant",
                        lambda self, w: kernel_calls.append(1) or spied(self, w))
    theirs = run()
    assert len(calls) == 3 and len(kernel_calls) == 3
    assert ours.keys() == theirs.keys() and all(ours[k] == theirs[k] for k in ours)


def test_a_weight_with_a_nan_is_quantized_by_onnxruntimes_kernel():
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 DefaultWeightOnlyQuantizer)

    from mcomp.passes.quantize.schemes.weight_only import _threaded

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=0, bits=4)
    weight = np.random.default_rng(3).standard_normal((64, 16), dtype=np.float32)
    hooked = _threaded(DefaultWeightOnlyQuantizer(config), config, 2)
    assert type(hooked) is not DefaultWeightOnlyQuantizer
    for bad in (None, np.nan):
        if bad is not None:
            weight[40, 3] = bad
        ours, theirs = hooked.qbits_block_quant(weight), DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ours, theirs))
