"""CO3's codecs: float conversion and Huffman coding, every backend against the reference and
against independent float64 / information-theoretic checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import BACKENDS, DTYPES, make, run

from compressors import FloatFormat, kernels
from compressors.codecs import gennorm
from compressors.codecs.huffman import MAX_LENGTH, HuffmanTable, entropy_bits, huffman_lengths

FORMATS = [FloatFormat(5, 2, 15), FloatFormat(4, 3, 10), FloatFormat(4, 3, 7), FloatFormat(2, 1, 1),
           FloatFormat(1, 0, 0), FloatFormat(3, 4, 7), FloatFormat(6, 1, 31), FloatFormat(4, 3, -3)]
ALL_FORMATS = [FloatFormat(e, m, (1 << (e - 1)) - 1) for e in range(1, 8) for m in range(0, 8 - e)]
FINITE_KINDS = ["normal", "ties", "zeros", "scales", "constant"]


def encode(backend, v, fmt, scale=1.0, seed=None):
    return run(backend, "float_encode", v, fmt.exponent, fmt.mantissa, fmt.bias, scale, seed)


def nearest_codes(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Independent float64 oracle: the nearest representable magnitude (ties to the candidate that
    is an even multiple of the spacing between the two), saturating, with x's sign."""
    values = fmt.values()
    magnitudes = values[: 1 << (fmt.exponent + fmt.mantissa)]  # codes 0.. are the non-negative ones, ascending
    a = np.abs(x)
    hi = np.clip(np.searchsorted(magnitudes, a), 1, len(magnitudes) - 1)
    lo = hi - 1
    d_lo, d_hi = a - magnitudes[lo], magnitudes[hi] - a
    spacing = magnitudes[hi] - magnitudes[lo]
    even_hi = np.round(magnitudes[hi] / spacing) % 2 == 0
    pick = np.where((d_hi < d_lo) | ((d_hi == d_lo) & even_hi), hi, lo)
    pick = np.where(a >= magnitudes[-1], len(magnitudes) - 1, pick)
    sign = (np.signbit(x) & (pick > 0)).astype(np.int64) << (fmt.exponent + fmt.mantissa)
    return (pick | sign).astype(np.uint8)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300_000), kind=st.sampled_from(FINITE_KINDS), fmt=st.sampled_from(FORMATS),
       dtype=st.sampled_from(DTYPES), stochastic=st.booleans(), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**40))
def test_float_encode_matches_reference(backend, n, kind, fmt, dtype, stochastic, scale, seed):
    v = make(kind, n, seed % 2**31, dtype)
    v = v.masked_fill(~torch.isfinite(v), 0)  # "scales" overflows fp16
    args = (fmt, scale, seed if stochastic else None)
    assert torch.equal(encode(backend, v, *args), encode("torch", v, *args))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_float_decode_matches_reference(backend, fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    want = run("torch", "float_decode", codes, fmt.exponent, fmt.mantissa, fmt.bias, 0.75)
    got = run(backend, "float_decode", codes, fmt.exponent, fmt.mantissa, fmt.bias, 0.75)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ALL_FORMATS + FORMATS, ids=str)
def test_rounding_to_nearest_matches_a_float64_oracle(backend, fmt):
    values = fmt.values()[: 1 << (fmt.exponent + fmt.mantissa)]
    midpoints = (values[1:] + values[:-1]) / 2  # exact ties (representable in fp32 for these formats)
    g = np.random.default_rng(0)
    x = np.concatenate([values, midpoints, np.nextafter(midpoints, 0), np.nextafter(midpoints, np.inf),
                        g.uniform(0, values[-1] * 1.5, 20_000), [values[-1] * 1e6, 1e-45, 0.0]])
    x = np.concatenate([x, -x]).astype(np.float32)
    got = encode(backend, torch.from_numpy(x), fmt).numpy()
    np.testing.assert_array_equal(got, nearest_codes(x.astype(np.float64), fmt))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_code_of_every_format_round_trips(backend):
    for fmt in ALL_FORMATS + FORMATS:
        codes = torch.arange(fmt.codes, dtype=torch.uint8)
        codes = codes[codes != 1 << (fmt.exponent + fmt.mantissa)]  # -0 encodes as 0
        values = run(backend, "float_decode", codes, fmt.exponent, fmt.mantissa, fmt.bias, 1.0)
        assert torch.equal(encode(backend, values, fmt), codes), fmt
        assert torch.equal(encode(backend, values * 3.0, fmt, 3.0), codes), fmt  # exact scaling by 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", [FloatFormat(5, 2, 15), FloatFormat(2, 1, 1), FloatFormat(1, 0, 0)], ids=str)
def test_stochastic_rounding_is_unbiased(backend, fmt):
    values = fmt.values()
    x = torch.tensor([0.3 * values[1], 0.7, -1.1, 2.2, 0.5 * values[1]], dtype=torch.float32)
    x = x[x.abs() < values[: 1 << (fmt.exponent + fmt.mantissa)].max()]
    draws = 20_000
    v = x.repeat(draws)  # every element draws its own noise
    decoded = run(backend, "float_decode", encode(backend, v, fmt, 1.0, 7), fmt.exponent, fmt.mantissa, fmt.bias,
                  1.0).view(draws, -1)
    mean_error = (decoded.double().mean(0) - x.double()).abs()
    spacing = torch.tensor([float(np.diff(values[: 1 << (fmt.exponent + fmt.mantissa)]).max())])
    assert bool((mean_error <= 5 * spacing.double() / 2 / math.sqrt(draws)).all()), mean_error
    nearest = run(backend, "float_decode", encode(backend, v, fmt), fmt.exponent, fmt.mantissa, fmt.bias, 1.0)
    assert not torch.equal(nearest, decoded.reshape(-1)), "stochastic rounding must differ from nearest"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_encode_rejects_nan_and_inf_and_bad_formats(backend):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            encode(backend, torch.tensor([1.0, bad]), FORMATS[0])
    with pytest.raises(ValueError, match="exponent \\+ mantissa <= 7"):
        run(backend, "float_encode", torch.ones(3), 5, 3, 15, 1.0, None)
    with pytest.raises(ValueError, match="scale must be positive"):
        encode(backend, torch.ones(3), FORMATS[0], 0.0)
    with pytest.raises(ValueError, match="not of the form"):
        FloatFormat.parse("fp8-e5m2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_encode_non_contiguous_and_empty(backend):
    v = torch.randn(64, 33)[:, ::2]
    assert torch.equal(encode(backend, v, FORMATS[1]), encode("torch", v.contiguous(), FORMATS[1]))
    assert encode(backend, torch.empty(0), FORMATS[1]).numel() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_conversion_into_out_writes_what_the_allocating_call_returns(backend):
    fmt = FORMATS[0]
    v = torch.randn(40, 50, dtype=torch.bfloat16)[:, ::2]  # non-contiguous input, contiguous out
    codes = torch.full((v.numel(),), 7, dtype=torch.uint8)
    with kernels.use_backend(backend):
        got = kernels.float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, 0.5, 11, out=codes)
        assert got is codes and torch.equal(codes, encode("torch", v, fmt, 0.5, 11))
        values = torch.full((v.numel(),), float("nan"))
        got = kernels.float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, 0.5, out=values)
        assert got is values and torch.equal(values, run("torch", "float_decode", codes, fmt.exponent, fmt.mantissa,
                                                         fmt.bias, 0.5))
        for bad in (torch.empty(v.numel() - 1, dtype=torch.uint8), torch.empty(v.numel(), dtype=torch.int8),
                    torch.empty(2 * v.numel(), dtype=torch.uint8)[::2]):
            with pytest.raises(ValueError, match="out must be a contiguous torch.uint8 tensor"):
                kernels.float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, out=bad)
        with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor"):
            kernels.float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, out=values.half())


@pytest.mark.skipif("ext" not in BACKENDS, reason="the compiled extension is not built")
def test_opcheck_passes_for_the_codec_ops():
    ops = torch.ops.threepc
    v, codes = torch.randn(3000), torch.randint(0, 256, (3000,), dtype=torch.uint8)
    torch.library.opcheck(ops.float_encode.default, (v, 5, 2, 15, 0.5, 3))
    torch.library.opcheck(ops.float_encode.out, (v, 5, 2, 15, 0.5, -1), {"out": torch.empty(3000, dtype=torch.uint8)})
    torch.library.opcheck(ops.float_decode.default, (codes, 5, 2, 15, 0.5))
    torch.library.opcheck(ops.float_decode.out, (codes, 5, 2, 15, 0.5), {"out": torch.empty(3000)})
    table = HuffmanTable.from_weights(np.arange(1.0, 257.0))
    stream = table.encode(codes)
    torch.library.opcheck(ops.huffman_encode.default, (codes, table.codes, table.lengths))
    torch.library.opcheck(ops.huffman_decode.default, (stream, 3000, table.codes, table.lengths))


# -- Huffman --------------------------------------------------------------------------------
def random_table(alphabet: int, seed: int) -> HuffmanTable:
    weights = np.random.default_rng(seed).pareto(1.0, alphabet) + 1e-9
    return HuffmanTable.from_weights(weights)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 20_000), alphabet=st.sampled_from([2, 3, 16, 200, 256]), seed=st.integers(0, 2**31))
def test_huffman_round_trip_and_bytes_match_reference(backend, n, alphabet, seed):
    table = random_table(alphabet, seed)
    symbols = torch.randint(0, alphabet, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    stream = run(backend, "huffman_encode", symbols, table.codes, table.lengths)
    assert torch.equal(stream, run("torch", "huffman_encode", symbols, table.codes, table.lengths))
    assert stream.numel() == (table.coded_bits(symbols) + 7) // 8
    assert torch.equal(run(backend, "huffman_decode", stream, n, table.codes, table.lengths), symbols)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huffman_adversarial_inputs(backend):
    cases = {
        "one symbol only": (torch.full((5000,), 7, dtype=torch.uint8), random_table(256, 1)),
        "all symbols": (torch.arange(256, dtype=torch.uint8).repeat(10), random_table(256, 2)),
        "empty": (torch.empty(0, dtype=torch.uint8), random_table(16, 3)),
        "unlikely symbols": (torch.full((3000,), 255, dtype=torch.uint8),
                             HuffmanTable.from_weights(np.r_[np.ones(255), 1e-30])),  # 16-bit codewords
        "single-symbol alphabet": (torch.zeros(100, dtype=torch.uint8), HuffmanTable.from_weights(np.ones(1))),
        "fixed width": (torch.randint(0, 8, (999,), dtype=torch.uint8), HuffmanTable.fixed(3)),
    }
    for name, (symbols, table) in cases.items():
        stream = run(backend, "huffman_encode", symbols, table.codes, table.lengths)
        assert torch.equal(run(backend, "huffman_decode", stream, symbols.numel(), table.codes, table.lengths),
                           symbols), name


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_huffman_round_trips_ten_million_symbols(backend):
    g = torch.Generator().manual_seed(0)
    symbols = (torch.randn(10**7, generator=g) * 20).round().clamp(-128, 127).to(torch.int16).add(128).to(torch.uint8)
    table = HuffmanTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0)
    stream = run(backend, "huffman_encode", symbols, table.codes, table.lengths)
    assert torch.equal(run(backend, "huffman_decode", stream, symbols.numel(), table.codes, table.lengths), symbols)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_huffman_long_inputs_give_the_reference_bytes(backend):
    """From 2^18 symbols the C++ encoder looks pairs up in a 65536-entry table: same bytes."""
    g = torch.Generator().manual_seed(5)
    for alphabet, n in ((256, (1 << 18) + 1), (200, 1 << 19)):
        table = random_table(alphabet, n)
        symbols = torch.randint(0, alphabet, (n,), generator=g, dtype=torch.uint8)
        stream = run(backend, "huffman_encode", symbols, table.codes, table.lengths)
        assert torch.equal(stream, run("torch", "huffman_encode", symbols, table.codes, table.lengths))
    holes = HuffmanTable.from_lengths(np.array([1, 2, 2, 0]))
    symbols = torch.zeros(1 << 19, dtype=torch.uint8)
    symbols[-2] = 3  # the one symbol without a codeword, late in a long input
    with pytest.raises(ValueError, match="no codeword"):
        run(backend, "huffman_encode", symbols, holes.codes, holes.lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huffman_rejects_uncoded_symbols_and_corrupt_streams(backend):
    table = HuffmanTable.from_lengths(np.array([1, 2, 2, 0]))  # symbol 3 has no codeword
    with pytest.raises(ValueError, match="no codeword"):
        run(backend, "huffman_encode", torch.tensor([0, 3], dtype=torch.uint8), table.codes, table.lengths)
    stream = run(backend, "huffman_encode", torch.tensor([1, 2], dtype=torch.uint8), table.codes, table.lengths)
    with pytest.raises(ValueError, match="corrupt or shorter"):
        run(backend, "huffman_decode", stream, 50, table.codes, table.lengths)
    incomplete = HuffmanTable.from_lengths(np.array([2, 2, 2]))  # the prefix 11 starts no codeword
    for cut in (0, 40):  # the invalid prefix early in a long stream (the windowed path) and in the tail
        stream = torch.cat([run(backend, "huffman_encode", torch.zeros(4 * cut, dtype=torch.uint8),
                                incomplete.codes, incomplete.lengths), torch.full((50,), 0xFF, dtype=torch.uint8)])
        with pytest.raises(ValueError, match="corrupt or shorter"):
            run(backend, "huffman_decode", stream, 4 * cut + 100, incomplete.codes, incomplete.lengths)
    long_stream = run(backend, "huffman_encode", torch.ones(1000, dtype=torch.uint8), table.codes, table.lengths)
    with pytest.raises(ValueError, match="corrupt or shorter"):
        run(backend, "huffman_decode", long_stream[:100], 1000, table.codes, table.lengths)
    with pytest.raises(TypeError, match="HuffmanTable"):
        run(backend, "huffman_encode", torch.zeros(3, dtype=torch.uint8), table.codes.long(), table.lengths)


@settings(max_examples=50, deadline=None)
@given(alphabet=st.integers(1, 256), seed=st.integers(0, 2**31), skew=st.floats(0.1, 30))
def test_huffman_lengths_are_prefix_free_limited_and_near_entropy(alphabet, seed, skew):
    weights = np.random.default_rng(seed).pareto(1 / skew, alphabet) + 1e-12
    lengths = huffman_lengths(weights)
    assert lengths.max() <= MAX_LENGTH and lengths.min() >= 1
    assert sum(2.0 ** -lengths) <= 1 + 1e-12  # Kraft: a prefix code exists
    table = HuffmanTable.from_lengths(lengths)
    words = {format(c, f"0{l}b") for c, l in zip(table.codes.tolist(), lengths.tolist())}
    assert all(not b.startswith(a) for a in words for b in words if a != b), "not prefix-free"
    p = weights / weights.sum()
    entropy = float(-(p * np.log2(p)).sum())
    if huffman_lengths(weights, limit=64).max() <= MAX_LENGTH:  # the limit did not bind: Huffman's bound
        assert entropy - 1e-9 <= float((p * lengths).sum()) <= entropy + 1  # = only for one symbol


def test_huffman_header_round_trips():
    table = random_table(256, 5)
    rebuilt = HuffmanTable.from_header(table.header())
    assert torch.equal(rebuilt.codes, table.codes) and torch.equal(rebuilt.lengths, table.lengths)
    assert table.header().numel() == 128


def test_entropy_bits_of_a_uniform_alphabet():
    assert entropy_bits(torch.arange(256, dtype=torch.uint8).repeat(4), 256) == pytest.approx(8.0)
    assert entropy_bits(torch.zeros(10, dtype=torch.uint8), 256) == 0.0


# -- the GenNorm model ------------------------------------------------------------------------
def test_gammainc_matches_closed_forms():
    for x in (1e-3, 0.1, 0.9, 1.0, 2.5, 10.0, 60.0):
        assert gennorm.gammainc(1.0, x) == pytest.approx(1 - math.exp(-x), rel=1e-12, abs=1e-15)
        assert gennorm.gammainc(0.5, x) == pytest.approx(math.erf(math.sqrt(x)), rel=1e-12, abs=1e-15)
        assert gennorm.gammainc(2.0, x) == pytest.approx(1 - (1 + x) * math.exp(-x), rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [1e-4, 0.3])
def test_gennorm_fit_recovers_shape_and_scale(beta, alpha):
    g = np.random.default_rng(int(beta * 100))
    x = alpha * g.gamma(1 / beta, size=400_000) ** (1 / beta) * g.choice([-1.0, 1.0], 400_000)
    fit_beta, fit_alpha = gennorm.fit(torch.from_numpy(x).float())
    assert fit_beta == pytest.approx(beta, rel=0.05) and fit_alpha == pytest.approx(alpha, rel=0.05)


def test_gennorm_bin_probabilities_match_frequencies():
    fmt = FloatFormat(2, 1, 1)
    g = np.random.default_rng(1)
    x = g.gamma(1.0, size=200_000) * g.choice([-1.0, 1.0], 200_000)  # Laplace, beta = 1, alpha = 1
    freq = np.bincount(fmt.encode(torch.from_numpy(x).float()).numpy(), minlength=fmt.codes) / len(x)
    np.testing.assert_allclose(gennorm.bin_probabilities(fmt.values(), 1.0, 1.0), freq, atol=5e-3)
