"""Quantization math, 1-D k-means and Huffman coding, on plain arrays."""

import numpy as np
import pytest

from mcomp.kernels import clustering, entropy
from mcomp.kernels import quant as qk

RNG = np.random.default_rng(0)


def test_minmax_formula_matches_the_source_documents():
    x = np.array([-1.0, 0.0, 0.5, 3.0])
    q = qk.minmax_quantize(x, bits=8)
    expected = np.round((x - x.min()) / (x.max() - x.min()) * 255)
    np.testing.assert_array_equal(q, expected)
    assert q.min() == 0 and q.max() == 255


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_minmax_round_trip_error_is_at_most_half_a_step(bits):
    x = RNG.standard_normal(1000)
    lo, hi = float(x.min()), float(x.max())
    back = qk.minmax_dequantize(qk.minmax_quantize(x, bits), lo, hi, bits)
    step = (hi - lo) / ((1 << bits) - 1)
    assert np.max(np.abs(back - x)) <= step / 2 + 1e-6


@pytest.mark.parametrize("signed,symmetric", [(False, False), (True, False), (True, True), (False, True)])
def test_affine_params_round_trip_and_keep_zero_exact(signed, symmetric):
    x = RNG.uniform(-2, 5, 500).astype(np.float32)
    scale, zero = qk.affine_params(x.min(), x.max(), 8, signed, symmetric)
    q = qk.quantize(x, scale, zero, 8, signed)
    qmin, qmax = qk.qrange(8, signed)
    assert q.min() >= qmin and q.max() <= qmax
    assert np.max(np.abs(qk.dequantize(q, scale, zero) - x)) <= scale / 2 + 1e-6
    zero_back = qk.dequantize(qk.quantize(np.zeros(1), scale, zero, 8, signed), scale, zero)
    assert zero_back[0] == 0.0  # zero padding stays exact


def test_symmetric_signed_is_narrow_and_centred():
    scale, zero = qk.affine_params(-1.0, 3.0, 8, signed=True, symmetric=True)
    assert int(zero) == 0
    assert np.isclose(scale, 3.0 / 127)


def test_per_channel_fake_quant_beats_per_tensor_on_unequal_channels():
    w = RNG.standard_normal((8, 64)).astype(np.float32) * np.logspace(-2, 1, 8)[:, None].astype(np.float32)
    per_tensor = qk.fake_quantize(w, 8)
    per_channel = qk.fake_quantize(w, 8, axis=0)
    assert qk.sqnr_db(w, per_channel) > qk.sqnr_db(w, per_tensor)
    # the smallest channel is lost per tensor and kept per channel
    assert qk.sqnr_db(w[0], per_channel[0]) > 35 > 10 > qk.sqnr_db(w[0], per_tensor[0])


def test_block_quantization_error_shrinks_with_smaller_blocks():
    w = RNG.standard_normal((256, 16)).astype(np.float32)
    w[::37] *= 20  # outliers hurt the blocks they fall in
    assert qk.sqnr_db(w, qk.block_fake_quantize(w, 4, 32)) > qk.sqnr_db(w, qk.block_fake_quantize(w, 4, 256))


def test_sqnr_and_noise_ratio():
    x = RNG.standard_normal(10000)
    assert qk.sqnr_db(x, x) == float("inf")
    assert np.isclose(qk.sqnr_db(x, x * 1.1), 20.0, atol=0.01)  # noise = 0.1 x → 20 dB
    assert qk.noise_ratio(np.zeros(3), np.zeros(3)) == 0.0


def test_percentile_range_clips_outliers():
    x = np.concatenate([RNG.standard_normal(100000), [1000.0]])
    lo, hi = qk.percentile_range(x, 99.9)
    assert hi < 10 and lo > -10
    slo, shi = qk.percentile_range(x, 99.9, symmetric=True)
    assert slo == -shi


def test_kmeans_finds_well_separated_clusters():
    centres = np.array([-3.0, -1.0, 0.5, 4.0])
    x = np.concatenate([c + 0.01 * RNG.standard_normal(200) for c in centres])
    for init in ("linear", "kmeans++", "density"):
        found, labels = clustering.kmeans_1d(x, 4, init=init, seed=1)
        np.testing.assert_allclose(found, centres, atol=0.01)
        np.testing.assert_allclose(clustering.reconstruct(found, labels, x.shape), x, atol=0.05)


def test_kmeans_lowers_the_error_from_its_linear_start():
    x = RNG.laplace(size=5000)
    linear = np.linspace(x.min(), x.max(), 16)
    start = np.mean((linear[clustering.assign(x, linear)] - x) ** 2)
    found, labels = clustering.kmeans_1d(x, 16, init="linear")
    assert np.mean((found[labels] - x) ** 2) < start / 2
    assert np.all(np.diff(found) > 0) and labels.max() < 16


def test_kmeans_with_few_distinct_values_is_exact():
    x = np.array([1.0, 2.0, 1.0, 2.0, 3.0])
    found, labels = clustering.kmeans_1d(x, 16)
    np.testing.assert_array_equal(found[labels], x)


def test_huffman_lengths_known_example_and_kraft():
    counts = np.array([45, 13, 12, 16, 9, 5])  # the textbook example: total 224 bits
    lengths = entropy.huffman_lengths(counts)
    assert entropy.huffman_bits(counts) == 224
    assert np.isclose(np.sum(2.0 ** -lengths), 1.0)  # a complete prefix code


@pytest.mark.parametrize("seed", range(5))
def test_huffman_is_within_one_bit_of_entropy(seed):
    counts = np.random.default_rng(seed).integers(0, 1000, 16)
    counts[0] = 0  # an unused symbol gets no code
    n = counts.sum()
    bits, bound = entropy.huffman_bits(counts), entropy.entropy_bits(counts)
    assert bound <= bits < bound + n
    assert entropy.huffman_lengths(counts)[0] == 0


def test_huffman_single_symbol_and_coded_bytes():
    assert entropy.huffman_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    sizes = entropy.coded_bytes(np.array([0] * 900 + [1] * 100), 16)
    assert sizes["fixed"] == 500  # 1000 indices × 4 bits
    assert sizes["huffman"] < sizes["fixed"] / 3  # a skewed distribution codes in about 1 bit each
    assert sizes["entropy"] <= sizes["huffman"]
