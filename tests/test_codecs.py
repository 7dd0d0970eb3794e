"""CO3's codecs: float conversion, Huffman and rANS coding. The reference is held to independent
oracles (every code of a format enumerated in float64; bit strings in pure Python); every other
implementation here (the C++ extension, numba) must return exactly what the reference returns;
every implementation raises the same argument errors."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import ALL, DTYPES, IMPLS, OTHERS, make

from compressors import FloatFormat, kernels
from compressors.codecs import gennorm, histogram
from compressors.codecs.huffman import MAX_LENGTH, HuffmanTable, entropy_bits, huffman_lengths
from compressors.codecs.rans import PRECISION, RansTable, quantize
from compressors.kernels import reference
from compressors.kernels.checks import RANS_WIDE, rans_states

FORMATS = [FloatFormat(5, 2, 15), FloatFormat(4, 3, 10), FloatFormat(4, 3, 7), FloatFormat(2, 1, 1),
           FloatFormat(1, 0, 0), FloatFormat(3, 4, 7), FloatFormat(6, 1, 31), FloatFormat(4, 3, -3)]
ALL_FORMATS = [FloatFormat(e, m, (1 << (e - 1)) - 1) for e in range(1, 8) for m in range(0, 8 - e)]
FINITE_KINDS = ["normal", "ties", "zeros", "scales", "constant"]


def finite(v: torch.Tensor) -> torch.Tensor:
    """``v`` with NaN and +-inf set to 0 (``make("scales")`` overflows fp16)."""
    return v.masked_fill(~torch.isfinite(v), 0)


def every_16bit_value(dtype: torch.dtype, below: float | None = None) -> torch.Tensor:
    """Every bit pattern of the 16-bit float ``dtype``: every magnitude, both signs, +-0,
    subnormals, +-inf and every NaN payload; with ``below``, 0 for every |v| >= below, NaN, inf."""
    v = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return v if below is None else v.masked_fill(~(v.float().abs() < below), 0)


def encode(impl, v, fmt, scale=1.0, seed=None):
    return IMPLS[impl].float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, scale, -1 if seed is None else seed)


def decode(impl, codes, fmt, scale=1.0):
    return IMPLS[impl].float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, scale)


# -- float oracles: every code of the format, enumerated in float64 ------------------------
def magnitudes(fmt: FloatFormat) -> np.ndarray:
    """The value of every non-negative code 0 .. 2^(e+m) - 1 (ascending), from the format's definition."""
    m = fmt.mantissa
    return np.array([math.ldexp(1 + (c & ((1 << m) - 1)) / 2**m, (c >> m) - fmt.bias) if c >> m
                     else math.ldexp(c / 2**m, 1 - fmt.bias) for c in range(1 << (fmt.exponent + m))])


def signed(magnitude: np.ndarray, negative: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Codes from magnitudes and signs; magnitude 0 is code 0 (no negative zero)."""
    return np.where(magnitude > 0, magnitude | (negative.astype(np.int64) << (fmt.exponent + fmt.mantissa)),
                    0).astype(np.uint8)


def oracle_nearest(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Codes of the fp32 x: the nearest magnitude, saturating; of two equally near, the one that is an
    even multiple of their distance (the even code when m > 0; when m = 0, the larger but for 0)."""
    mags = magnitudes(fmt)
    a = np.abs(x.astype(np.float64))
    hi = np.clip(np.searchsorted(mags, a), 1, len(mags) - 1)
    lo = hi - 1
    d_lo, d_hi = a - mags[lo], mags[hi] - a
    even_hi = np.round(mags[hi] / (mags[hi] - mags[lo])) % 2 == 0
    pick = np.where((d_hi < d_lo) | ((d_hi == d_lo) & even_hi), hi, lo)
    return signed(np.where(a >= mags[-1], len(mags) - 1, pick), np.signbit(x), fmt)


def splitmix64(z: int) -> int:
    mask = 2**64 - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def oracle_stochastic(x: np.ndarray, fmt: FloatFormat, seed: int) -> np.ndarray:
    """Codes of the fp32 x under stochastic rounding: between the neighbouring magnitudes lo < |x| < hi,
    up iff the low bits of element i's noise, read as a fraction of 2^t (2^t = (hi - lo) / ulp(x)),
    fall below (|x| - lo) / (hi - lo). Needs 2^t <= 2^40 (the reference's cap)."""
    mags = magnitudes(fmt)
    codes = np.zeros(x.size, np.int64)
    for i, v in enumerate(x.tolist()):
        a = Fraction(abs(v))
        hi = int(np.searchsorted(mags, float(a)))
        if hi >= len(mags):
            codes[i] = len(mags) - 1
            continue
        if a == Fraction(mags[hi]):
            codes[i] = hi
            continue
        lo_value, hi_value = Fraction(mags[hi - 1]), Fraction(mags[hi])
        ulp = Fraction(2) ** (max(math.frexp(float(a))[1] - 1, -126) - 23)
        steps = (hi_value - lo_value) / ulp
        assert steps.denominator == 1 and steps <= 2**40, "outside the oracle's range"
        noise = splitmix64((seed + (i + 1) * 0x9E3779B97F4A7C15) % 2**64) % int(steps)
        codes[i] = hi if noise < (a - lo_value) / ulp else hi - 1
    return signed(codes, np.signbit(x), fmt)


def oracle_decode(codes: np.ndarray, fmt: FloatFormat, scale: float) -> np.ndarray:
    mags = magnitudes(fmt)
    sign = np.where((codes.astype(np.int64) >> (fmt.exponent + fmt.mantissa)) & 1, -1.0, 1.0)
    values = (sign * mags[codes.astype(np.int64) & (len(mags) - 1)]).astype(np.float32)
    return values * np.float32(scale)  # one fp32 product


def probes(fmt: FloatFormat, seed: int) -> np.ndarray:
    """fp32 inputs at and around every code (midpoints: ties), random ones, beyond the range, +-0."""
    mags = magnitudes(fmt)
    mid = (mags[1:] + mags[:-1]) / 2
    g = np.random.default_rng(seed)
    x = np.concatenate([mags, mid, np.nextafter(mid, 0), np.nextafter(mid, np.inf), g.uniform(0, mags[-1] * 1.5, 5000),
                        mags[-1] * g.uniform(1, 1e6, 20), [1e-45, 2e-38, 0.0, 3e38]])
    x = x.astype(np.float32)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("fmt", ALL_FORMATS + FORMATS, ids=str)
def test_reference_rounds_to_the_nearest_code(fmt):
    x = probes(fmt, fmt.exponent * 8 + fmt.mantissa)
    for scale in (1.0, 0.37):
        v = torch.from_numpy(x) * torch.tensor(scale)
        want = oracle_nearest((v / torch.tensor(scale)).numpy(), fmt)  # x = v / scale in fp32
        np.testing.assert_array_equal(reference.float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, scale, -1).numpy(),
                                      want)


@pytest.mark.parametrize("fmt", [FloatFormat(5, 2, 15), FloatFormat(2, 1, 1), FloatFormat(4, 3, -3),
                                 FloatFormat(1, 0, 0)], ids=str)
def test_reference_stochastic_rounding_matches_the_exact_oracle(fmt):
    mags = magnitudes(fmt)
    g = np.random.default_rng(1)
    x = np.concatenate([g.uniform(mags[1] / 4, mags[-1] * 1.2, 1500), mags[:8], [0.0]]).astype(np.float32)
    x = x * np.where(g.random(x.size) < 0.5, -1, 1).astype(np.float32)
    for seed in (0, 12345, 2**62 + 7):
        got = reference.float_encode(torch.from_numpy(x), fmt.exponent, fmt.mantissa, fmt.bias, 1.0, seed)
        np.testing.assert_array_equal(got.numpy(), oracle_stochastic(x, fmt, seed))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_reference_decodes_every_code(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    for scale in (1.0, 0.75, 3e-5):
        got = reference.float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, scale)
        np.testing.assert_array_equal(got.numpy().view(np.int32), oracle_decode(codes.numpy(), fmt, scale).view(np.int32))


# -- every other implementation against the reference ---------------------------------------
@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 300_000), kind=st.sampled_from(FINITE_KINDS), fmt=st.sampled_from(FORMATS),
       dtype=st.sampled_from(DTYPES), stochastic=st.booleans(), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**40))
def test_float_encode_matches_reference(impl, n, kind, fmt, dtype, stochastic, scale, seed):
    v = finite(make(kind, n, seed % 2**31, dtype))
    args = (fmt, scale, seed if stochastic else None)
    assert torch.equal(encode(impl, v, *args), encode("torch", v, *args))


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("fmt", ALL_FORMATS + FORMATS, ids=str)
def test_float_encode_matches_reference_at_ties_and_edges(impl, fmt):
    x = torch.from_numpy(probes(fmt, 0))
    for seed in (None, 99):
        assert torch.equal(encode(impl, x, fmt, 1.0, seed), encode("torch", x, fmt, 1.0, seed))
        y = x[::3].bfloat16()  # non-contiguous, low precision, scaled
        assert torch.equal(encode(impl, y, fmt, 2.0, seed), encode("torch", y, fmt, 2.0, seed))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_input_encodes_as_its_fp32_value(impl, dtype):
    """Every fp16/bf16 value below 2^100 (all finite fp16) gives the codes of its exact fp32 value,
    at scales whose quotient v / scale leaves the fp16 range (it is computed in fp32) or
    underflows it. (bf16 beyond 2^100 over 1e-3 overflows fp32 and raises, as it should.)"""
    v = every_16bit_value(dtype, below=2.0**100).view(2, -1).t()  # non-contiguous
    for fmt in FORMATS[:4]:
        for scale in (1e-3, 0.37, 3e3):
            for seed in (None, 7):
                assert torch.equal(encode(impl, v, fmt, scale, seed), encode(impl, v.float(), fmt, scale, seed)), \
                    (fmt, scale, seed)


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_float_decode_matches_reference(impl, fmt):
    codes = torch.arange(256, dtype=torch.uint8).repeat(300)[::3]  # non-contiguous, past the vector width
    want = decode("torch", codes, fmt, 0.75)
    assert torch.equal(decode(impl, codes, fmt, 0.75).view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_float_accumulate_adds_alpha_times_the_decoded_values(impl, fmt):
    """out += (value * scale) * alpha with both products rounded to fp32, then one add: the oracle
    is the decoded tensor times alpha added, to the bit; alpha = -1 is the residual v - Q(v)."""
    codes = torch.arange(256, dtype=torch.uint8).repeat(301)[::3]  # non-contiguous, every code, a vector tail
    base = torch.randn(codes.numel(), generator=torch.Generator().manual_seed(3))
    base[:7] = torch.tensor([0.0, -0.0, 1e-40, -1e38, 3e38, 1.0, -1.0])  # subnormal, near overflow
    for scale, alpha in ((0.75, 1.0), (0.75, -1.0), (1e-3, 1 / 3), (2.0 ** 60, 0.5), (1e-30, -7.0)):
        decoded = decode("torch", codes, fmt, scale)
        want = base + decoded * torch.tensor(alpha, dtype=torch.float32)
        out = base.clone()
        IMPLS[impl].float_accumulate(out, codes, fmt.exponent, fmt.mantissa, fmt.bias, scale, alpha)
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), (scale, alpha)
        if alpha == -1.0:
            assert torch.equal(out, base - decoded)
    empty = torch.empty(0)
    IMPLS[impl].float_accumulate(empty, torch.empty(0, dtype=torch.uint8), fmt.exponent, fmt.mantissa, fmt.bias,
                                 1.0, 1.0)


@pytest.mark.parametrize("impl", ALL)
def test_float_accumulate_rejects_a_wrong_out_and_bad_codes(impl):
    ops, codes = IMPLS[impl], torch.zeros(10, dtype=torch.uint8)
    for bad in (torch.zeros(9), torch.zeros(10, dtype=torch.float64), torch.zeros(20)[::2]):
        with pytest.raises(ValueError, match="float_accumulate: out must be a contiguous float32 tensor of 10"):
            ops.float_accumulate(bad, codes, 4, 3, 7, 1.0, 1.0)
    with pytest.raises(TypeError, match="float_accumulate: codes must be uint8"):
        ops.float_accumulate(torch.zeros(10), codes.to(torch.int8), 4, 3, 7, 1.0, 1.0)
    for scale in (float("nan"), 1e39, 1e-300, 0.0, -1.0):  # 0 or inf as an fp32: NaN codes, or no codes at all
        with pytest.raises(ValueError, match="scale must be positive and finite as an fp32"):
            ops.float_accumulate(torch.zeros(10), codes, 4, 3, 7, scale, 1.0)
        with pytest.raises(ValueError, match="scale must be positive and finite as an fp32"):
            ops.float_decode(codes, 4, 3, 7, scale)
        with pytest.raises(ValueError, match="scale must be positive and finite as an fp32"):
            ops.float_encode(torch.ones(10), 4, 3, 7, scale, -1)
    for alpha in (float("nan"), float("inf"), -1e40):
        with pytest.raises(ValueError, match="float_accumulate: alpha must be finite as an fp32"):
            ops.float_accumulate(torch.zeros(10), codes, 4, 3, 7, 1.0, alpha)
        with pytest.raises(ValueError, match="sparse_accumulate: alpha must be finite as an fp32"):
            ops.sparse_accumulate(torch.zeros(10), torch.ones(2), torch.tensor([1, 2]), alpha)


# -- properties every implementation has ----------------------------------------------------
@pytest.mark.parametrize("impl", ALL)
def test_every_code_of_every_format_round_trips(impl):
    for fmt in ALL_FORMATS + FORMATS:
        codes = torch.arange(fmt.codes, dtype=torch.uint8)
        codes = codes[codes != 1 << (fmt.exponent + fmt.mantissa)]  # -0 encodes as 0
        values = decode(impl, codes, fmt)
        assert torch.equal(encode(impl, values, fmt), codes), fmt
        assert torch.equal(encode(impl, values * 3.0, fmt, 3.0), codes), fmt  # exact scaling by 3


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("fmt", [FloatFormat(5, 2, 15), FloatFormat(2, 1, 1), FloatFormat(1, 0, 0)], ids=str)
def test_stochastic_rounding_is_unbiased(impl, fmt):
    mags = magnitudes(fmt)
    x = torch.tensor([0.3 * mags[1], 0.7, -1.1, 2.2, 0.5 * mags[1]], dtype=torch.float32)
    x = x[x.abs() < mags[-1]]
    draws = 20_000
    v = x.repeat(draws)  # every element draws its own noise
    decoded = decode(impl, encode(impl, v, fmt, 1.0, 7), fmt).view(draws, -1)
    mean_error = (decoded.double().mean(0) - x.double()).abs()
    assert bool((mean_error <= 5 * float(np.diff(mags).max()) / 2 / math.sqrt(draws)).all()), mean_error
    assert not torch.equal(decode(impl, encode(impl, v, fmt), fmt), decoded.reshape(-1)), "must differ from nearest"


@pytest.mark.parametrize("impl", ALL)
def test_float_encode_rejects_nan_and_inf_and_bad_arguments(impl):
    ops = IMPLS[impl]
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            encode(impl, torch.tensor([1.0, bad]), FORMATS[0])
    with pytest.raises(ValueError, match="NaN or Inf"):  # finite v, but v / scale overflows
        encode(impl, torch.tensor([3e38]), FORMATS[0], 1e-3)
    with pytest.raises(ValueError, match=r"exponent \+ mantissa <= 7"):
        ops.float_encode(torch.ones(3), 5, 3, 15, 1.0, -1)
    with pytest.raises(ValueError, match="bias must lie in"):
        ops.float_decode(torch.ones(3, dtype=torch.uint8), 5, 2, 65, 1.0)
    with pytest.raises(ValueError, match="scale must be positive"):
        encode(impl, torch.ones(3), FORMATS[0], 0.0)
    with pytest.raises(TypeError, match=r"float_encode: v must be float32, float16 or bfloat16"):
        encode(impl, torch.ones(3, dtype=torch.float64), FORMATS[0])
    with pytest.raises(TypeError, match="float_decode: codes must be uint8"):
        decode(impl, torch.ones(3, dtype=torch.int8), FORMATS[0])


@pytest.mark.parametrize("impl", ALL)
def test_float_encode_non_contiguous_and_empty(impl):
    v = torch.randn(64, 33)[:, ::2]
    assert torch.equal(encode(impl, v, FORMATS[1]), encode("torch", v.contiguous(), FORMATS[1]))
    assert encode(impl, torch.empty(0), FORMATS[1]).numel() == 0
    assert decode(impl, torch.empty(0, dtype=torch.uint8), FORMATS[1]).numel() == 0


def test_float_conversion_into_out_writes_what_the_allocating_call_returns():
    """The public functions' out= (the Python implementations' out= runs in test_kernels' SMOKE)."""
    fmt = FORMATS[0]
    v = torch.randn(40, 50, dtype=torch.bfloat16)[:, ::2]  # non-contiguous input, contiguous out
    codes = torch.full((v.numel(),), 7, dtype=torch.uint8)
    got = kernels.float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, 0.5, 11, out=codes)
    assert got is codes and torch.equal(codes, encode("torch", v, fmt, 0.5, 11))
    values = torch.full((v.numel(),), float("nan"))
    got = kernels.float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, 0.5, out=values)
    assert got is values and torch.equal(values, decode("torch", codes, fmt, 0.5))
    for bad in (torch.empty(v.numel() - 1, dtype=torch.uint8), torch.empty(v.numel(), dtype=torch.int8),
                torch.empty(2 * v.numel(), dtype=torch.uint8)[::2]):
        with pytest.raises(ValueError, match=r"out must be a contiguous uint8 tensor .* torch.empty\(1000, dtype=torch.uint8\)"):
            kernels.float_encode(v, fmt.exponent, fmt.mantissa, fmt.bias, out=bad)
    with pytest.raises(ValueError, match="out must be a contiguous float32 tensor"):
        kernels.float_decode(codes, fmt.exponent, fmt.mantissa, fmt.bias, out=values.half())
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.float_encode(torch.full((1000,), float("nan")), fmt.exponent, fmt.mantissa, fmt.bias, out=codes)


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_the_codec_ops():
    ops = torch.ops.threepc
    v, codes = torch.randn(3000), torch.randint(0, 256, (3000,), dtype=torch.uint8)
    torch.library.opcheck(ops.float_encode.default, (v, 5, 2, 15, 0.5, 3))
    torch.library.opcheck(ops.float_encode.out, (v, 5, 2, 15, 0.5, -1), {"out": torch.empty(3000, dtype=torch.uint8)})
    torch.library.opcheck(ops.float_decode.default, (codes, 5, 2, 15, 0.5))
    torch.library.opcheck(ops.float_decode.out, (codes, 5, 2, 15, 0.5), {"out": torch.empty(3000)})
    torch.library.opcheck(ops.float_accumulate.default, (torch.randn(3000), codes, 5, 2, 15, 0.5, -1.0))
    table = HuffmanTable.from_weights(np.arange(1.0, 257.0))
    stream = table.encode(codes)
    torch.library.opcheck(ops.huffman_encode.default, (codes, table.codes, table.lengths))
    torch.library.opcheck(ops.huffman_decode.default, (stream, 3000, table.codes, table.lengths))
    freqs = RansTable.from_weights(np.arange(1.0, 257.0)).freqs
    torch.library.opcheck(ops.rans_encode.default, (codes, freqs))
    torch.library.opcheck(ops.rans_decode.default, (ops.rans_encode(codes, freqs), 3000, freqs))


# -- Huffman --------------------------------------------------------------------------------
def random_table(alphabet: int, seed: int) -> HuffmanTable:
    weights = np.random.default_rng(seed).pareto(1.0, alphabet) + 1e-9
    return HuffmanTable.from_weights(weights)


def oracle_huffman_encode(symbols: list[int], table: HuffmanTable) -> bytes:
    """The codewords as bit strings, concatenated, zero-padded to whole bytes."""
    words = [format(c, f"0{l}b") if l else None for c, l in zip(table.codes.tolist(), table.lengths.tolist())]
    bits = "".join(words[s] for s in symbols)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def oracle_huffman_decode(stream: bytes, n: int, table: HuffmanTable) -> list[int] | None:
    """Greedy prefix matching on the bit string; None where it runs out or matches no codeword."""
    book = {format(c, f"0{l}b"): s for s, (c, l) in enumerate(zip(table.codes.tolist(), table.lengths.tolist())) if l}
    bits, out, word = "".join(format(b, "08b") for b in stream), [], ""
    for bit in bits:
        if len(out) == n:
            break
        word += bit
        if word in book:
            out.append(book[word])
            word = ""
        elif len(word) > MAX_LENGTH:
            return None
    return out if len(out) == n else None


def huffman(impl: str, op: str, *args):
    return getattr(IMPLS[impl], f"huffman_{op}")(*args)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2000), alphabet=st.sampled_from([1, 2, 3, 16, 200, 256]), seed=st.integers(0, 2**31))
def test_reference_huffman_matches_the_bit_string_oracle(n, alphabet, seed):
    table = random_table(alphabet, seed)
    symbols = torch.randint(0, alphabet, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    stream = reference.huffman_encode(symbols, table.codes, table.lengths)
    assert bytes(stream.tolist()) == oracle_huffman_encode(symbols.tolist(), table)
    assert reference.huffman_decode(stream, n, table.codes, table.lengths).tolist() == symbols.tolist()
    g = np.random.default_rng(seed)
    garbage = bytes(g.integers(0, 256, n // 8 + 1, dtype=np.uint8).tolist())
    want = oracle_huffman_decode(garbage, n // 3, table)  # random bits: symbols, or corrupt / too short
    if want is None:
        with pytest.raises(ValueError, match="corrupt or shorter"):
            reference.huffman_decode(torch.tensor(list(garbage), dtype=torch.uint8), n // 3, table.codes, table.lengths)
    else:
        got = reference.huffman_decode(torch.tensor(list(garbage), dtype=torch.uint8), n // 3, table.codes, table.lengths)
        assert got.tolist() == want


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 20_000), alphabet=st.sampled_from([2, 3, 16, 200, 256]), seed=st.integers(0, 2**31))
def test_huffman_matches_reference(impl, n, alphabet, seed):
    table = random_table(alphabet, seed)
    symbols = torch.randint(0, alphabet, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    stream = huffman(impl, "encode", symbols, table.codes, table.lengths)
    assert torch.equal(stream, reference.huffman_encode(symbols, table.codes, table.lengths))
    assert stream.numel() == (table.coded_bits(symbols) + 7) // 8
    assert torch.equal(huffman(impl, "decode", stream, n, table.codes, table.lengths), symbols)
    garbage = torch.randint(0, 256, (n // 8 + 1,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    try:
        want = reference.huffman_decode(garbage, n // 3, table.codes, table.lengths)
    except ValueError:
        with pytest.raises(ValueError, match="corrupt or shorter"):
            huffman(impl, "decode", garbage, n // 3, table.codes, table.lengths)
    else:
        assert torch.equal(huffman(impl, "decode", garbage, n // 3, table.codes, table.lengths), want)


@pytest.mark.parametrize("impl", OTHERS)
def test_huffman_long_inputs_give_the_reference_bytes(impl):
    """From 2^18 symbols the C++ encoder looks pairs up in a 65536-entry table: same bytes."""
    g = torch.Generator().manual_seed(5)
    for alphabet, n in ((256, (1 << 18) + 1), (200, 1 << 19)):
        table = random_table(alphabet, n)
        symbols = torch.randint(0, alphabet, (n,), generator=g, dtype=torch.uint8)
        stream = huffman(impl, "encode", symbols, table.codes, table.lengths)
        assert torch.equal(stream, reference.huffman_encode(symbols, table.codes, table.lengths))
        assert torch.equal(huffman(impl, "decode", stream, n, table.codes, table.lengths), symbols)
    holes = HuffmanTable.from_lengths(np.array([1, 2, 2, 0]))
    symbols = torch.zeros(1 << 19, dtype=torch.uint8)
    symbols[-2] = 3  # the one symbol without a codeword, late in a long input
    with pytest.raises(ValueError, match="no codeword"):
        huffman(impl, "encode", symbols, holes.codes, holes.lengths)


@pytest.mark.parametrize("impl", OTHERS)
def test_huffman_round_trips_ten_million_symbols(impl):
    g = torch.Generator().manual_seed(0)
    symbols = (torch.randn(10**7, generator=g) * 20).round().clamp(-128, 127).to(torch.int16).add(128).to(torch.uint8)
    table = HuffmanTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0)
    stream = huffman(impl, "encode", symbols, table.codes, table.lengths)
    assert torch.equal(huffman(impl, "decode", stream, symbols.numel(), table.codes, table.lengths), symbols)


@pytest.mark.parametrize("impl", ALL)
def test_huffman_adversarial_inputs(impl):
    cases = {
        "one symbol only": (torch.full((5000,), 7, dtype=torch.uint8), random_table(256, 1)),
        "all symbols": (torch.arange(256, dtype=torch.uint8).repeat(10), random_table(256, 2)),
        "empty": (torch.empty(0, dtype=torch.uint8), random_table(16, 3)),
        "unlikely symbols": (torch.full((3000,), 255, dtype=torch.uint8),
                             HuffmanTable.from_weights(np.r_[np.ones(255), 1e-30])),  # 16-bit codewords
        "single-symbol alphabet": (torch.zeros(100, dtype=torch.uint8), HuffmanTable.from_weights(np.ones(1))),
        "fixed width": (torch.randint(0, 8, (999,), dtype=torch.uint8), HuffmanTable.fixed(3)),
        "non-contiguous": (torch.randint(0, 8, (2, 999), dtype=torch.uint8).t(), HuffmanTable.fixed(3)),
    }
    for name, (symbols, table) in cases.items():
        stream = huffman(impl, "encode", symbols, table.codes, table.lengths)
        assert bytes(stream.tolist()) == oracle_huffman_encode(symbols.reshape(-1).tolist(), table), name
        decoded = huffman(impl, "decode", stream, symbols.numel(), table.codes, table.lengths)
        assert torch.equal(decoded, symbols.reshape(-1)), name


@pytest.mark.parametrize("impl", ALL)
def test_huffman_rejects_uncoded_symbols_corrupt_streams_and_bad_tables(impl):
    table = HuffmanTable.from_lengths(np.array([1, 2, 2, 0]))  # symbol 3 has no codeword
    with pytest.raises(ValueError, match="no codeword"):
        huffman(impl, "encode", torch.tensor([0, 3], dtype=torch.uint8), table.codes, table.lengths)
    with pytest.raises(ValueError, match="no codeword"):  # beyond the table
        huffman(impl, "encode", torch.tensor([0, 4], dtype=torch.uint8), table.codes, table.lengths)
    stream = huffman(impl, "encode", torch.tensor([1, 2], dtype=torch.uint8), table.codes, table.lengths)
    with pytest.raises(ValueError, match="corrupt or shorter"):
        huffman(impl, "decode", stream, 50, table.codes, table.lengths)
    incomplete = HuffmanTable.from_lengths(np.array([2, 2, 2]))  # the prefix 11 starts no codeword
    for cut in (0, 40):  # the invalid prefix early in a long stream (the windowed path) and in the tail
        stream = torch.cat([huffman(impl, "encode", torch.zeros(4 * cut, dtype=torch.uint8),
                                    incomplete.codes, incomplete.lengths), torch.full((50,), 0xFF, dtype=torch.uint8)])
        with pytest.raises(ValueError, match="corrupt or shorter"):
            huffman(impl, "decode", stream, 4 * cut + 100, incomplete.codes, incomplete.lengths)
    long_stream = huffman(impl, "encode", torch.ones(1000, dtype=torch.uint8), table.codes, table.lengths)
    with pytest.raises(ValueError, match="corrupt or shorter"):
        huffman(impl, "decode", long_stream[:100], 1000, table.codes, table.lengths)
    with pytest.raises(TypeError, match="build one with compressors.codecs.huffman.HuffmanTable"):
        huffman(impl, "encode", torch.zeros(3, dtype=torch.uint8), table.codes.long(), table.lengths)
    with pytest.raises(TypeError, match="huffman_encode: symbols must be uint8"):
        huffman(impl, "encode", torch.zeros(3, dtype=torch.int32), table.codes, table.lengths)
    with pytest.raises(TypeError, match="huffman_decode: stream must be uint8"):
        huffman(impl, "decode", torch.zeros(3, dtype=torch.int8), 1, table.codes, table.lengths)
    with pytest.raises(ValueError, match="n must be >= 0"):
        huffman(impl, "decode", stream, -1, table.codes, table.lengths)
    too_long = (table.codes, torch.tensor([1, 2, 17, 0], dtype=torch.uint8))
    with pytest.raises(ValueError, match="symbol 2 has the invalid codeword"):
        huffman(impl, "decode", stream, 1, *too_long)
    too_wide = (torch.tensor([0, 2, 5, 0], dtype=torch.int32), table.lengths)  # 5 has 3 bits, length 2
    with pytest.raises(ValueError, match="symbol 2 has the invalid codeword 5 of length 2"):
        huffman(impl, "encode", torch.zeros(3, dtype=torch.uint8), *too_wide)
    prefixed = (torch.tensor([0, 0, 1], dtype=torch.int32), torch.tensor([1, 2, 2], dtype=torch.uint8))  # 0, 00, 01
    with pytest.raises(ValueError, match="two codewords overlap"):  # decoding needs a prefix-free code
        huffman(impl, "decode", stream, 1, *prefixed)
    nested = (torch.tensor([1, 0, 3], dtype=torch.int32), torch.tensor([2, 1, 4], dtype=torch.uint8))  # 01, 0, 0011
    with pytest.raises(ValueError, match="two codewords overlap"):  # an earlier, shorter codeword holds a later one
        huffman(impl, "decode", stream, 1, *nested)
    for n in (8 * stream.numel() + 1, 1 << 62):  # more symbols than bits: refused before allocating n bytes
        with pytest.raises(ValueError, match="corrupt or shorter"):
            huffman(impl, "decode", stream, n, table.codes, table.lengths)


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


@pytest.mark.parametrize("fmt", ["fp4-121", "fp8-152"])
@pytest.mark.parametrize("beta", [0.3, 0.7, 1.0, 2.0, 4.0])
def test_gennorm_clip_ratio_is_the_best_candidate_by_direct_integration(fmt, beta):
    magnitudes = np.unique(np.abs(FloatFormat.parse(fmt).values()))
    top = gennorm.abs_quantile(1 - 1e-9, beta, 1.0)
    t = np.linspace(0.0, top, 20_001)
    weight = 2 * gennorm.density(t, beta, 1.0) * (t[1] - t[0])
    edges = (magnitudes[1:] + magnitudes[:-1]) / 2

    def error(c: float) -> float:  # each point rounded to its nearest level, summed directly
        unit = c / magnitudes[-1]
        return float(np.sum((t - magnitudes[np.searchsorted(edges, t / unit)] * unit) ** 2 * weight))

    candidates = np.geomspace(gennorm.abs_quantile(0.5, beta, 1.0), top, 64)
    chosen = gennorm.clip_ratio(tuple(magnitudes.tolist()), beta)
    assert chosen in candidates
    assert error(chosen) <= min(error(c) for c in candidates) * (1 + 1e-6)


def test_the_quantizer_fits_gennorm_to_the_non_zero_values():
    g = np.random.default_rng(3)
    x = torch.from_numpy(g.laplace(size=100_003) * (g.random(100_003) < 0.6)).float()
    x[:5] = 0.0
    nonzero, magnitudes, squares = kernels.abs_moments(x).tolist()
    kept = x[x != 0].double()
    assert nonzero == kept.numel()
    assert gennorm.fit_moments(magnitudes / nonzero, squares / nonzero) == pytest.approx(gennorm.fit(kept), rel=1e-12)


def test_gennorm_bin_probabilities_match_frequencies():
    fmt = FloatFormat(2, 1, 1)
    g = np.random.default_rng(1)
    x = g.gamma(1.0, size=200_000) * g.choice([-1.0, 1.0], 200_000)  # Laplace, beta = 1, alpha = 1
    freq = np.bincount(fmt.encode(torch.from_numpy(x).float()).numpy(), minlength=fmt.codes) / len(x)
    np.testing.assert_allclose(gennorm.bin_probabilities(fmt.values(), 1.0, 1.0), freq, atol=5e-3)


# -- rANS -----------------------------------------------------------------------------------
def random_freqs(alphabet: int, seed: int, precision: int = PRECISION, dead: float = 0.0) -> torch.Tensor:
    """A rANS table of heavy-tailed weights; a fraction ``dead`` of the symbols (never the first) get none."""
    g = np.random.default_rng(seed)
    weights = g.pareto(1.0, alphabet) + 1e-9
    weights[1:][g.random(alphabet - 1) < dead] = 0
    return RansTable.from_weights(weights, precision).freqs


def draw(freqs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n symbols drawn from the table's own model f / M."""
    p = freqs.double() / freqs.sum()
    return torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(seed)).to(torch.uint8) \
        if n else torch.empty(0, dtype=torch.uint8)


def rans(impl: str, op: str, *args):
    return getattr(IMPLS[impl], f"rans_{op}")(*args)


def rans_bound_bits(symbols: torch.Tensor, freqs: torch.Tensor) -> float:
    """8 * (stream bytes) can reach at most: the 32-bit states plus, per symbol, log2(M / f_s) and
    the renormalised state's slack log2(1 + 2^(p - 23)) (reference docstring; codecs.rans)."""
    table = RansTable(freqs)
    slack = symbols.numel() * math.log2(1 + 2.0 ** (table.precision - 23))
    return 32 * rans_states(symbols.numel()) + table.ideal_bits(symbols) + slack + 1e-6


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3000), alphabet=st.sampled_from([1, 2, 3, 16, 200, 256]), precision=st.integers(8, 16),
       seed=st.integers(0, 2**31), dead=st.sampled_from([0.0, 0.5]))
def test_reference_rans_round_trips_within_the_entropy_bound(n, alphabet, precision, seed, dead):
    freqs = random_freqs(alphabet, seed, precision, dead)
    symbols = draw(freqs, n, seed)
    stream = reference.rans_encode(symbols, freqs)
    assert torch.equal(reference.rans_decode(stream, n, freqs), symbols)
    assert 64 <= 8 * stream.numel() <= rans_bound_bits(symbols, freqs)


def test_reference_rans_hand_example():
    """f = (1, 1), M = 2: symbol s sends bit s into its state; nothing is emitted until a state
    reaches 2^31, so three symbols stay in the states: x_0 = 2 (2 L + 1) + 0 (symbols 2, 0), x_1 = 2 L + 1."""
    stream = reference.rans_encode(torch.tensor([0, 1, 1], dtype=torch.uint8), torch.tensor([1, 1], dtype=torch.int32))
    low = 1 << 23
    assert bytes(stream.tolist()) == (2 * low + 1).to_bytes(4, "big") + (4 * low + 2).to_bytes(4, "big")


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 20_000), alphabet=st.sampled_from([1, 2, 16, 200, 256]), precision=st.integers(1, 16),
       seed=st.integers(0, 2**31), dead=st.sampled_from([0.0, 0.5]))
def test_rans_matches_reference(impl, n, alphabet, precision, seed, dead):
    if alphabet > 1 << precision:
        precision = 8
    freqs = random_freqs(alphabet, seed, precision, dead)
    symbols = draw(freqs, n, seed)
    stream = rans(impl, "encode", symbols, freqs)
    assert torch.equal(stream, reference.rans_encode(symbols, freqs))
    assert torch.equal(rans(impl, "decode", stream, n, freqs), symbols)
    noise = torch.randint(0, 256, (n // 8,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    garbage = torch.cat([noise, stream[-8:]])  # valid final states over random bytes
    try:
        want = reference.rans_decode(garbage, n // 3, freqs)
    except ValueError:
        with pytest.raises(ValueError, match="corrupt"):
            rans(impl, "decode", garbage, n // 3, freqs)
    else:
        assert torch.equal(rans(impl, "decode", garbage, n // 3, freqs), want)


@pytest.mark.parametrize("impl", ALL)
def test_rans_adversarial_inputs(impl):
    one = torch.tensor([1 << PRECISION], dtype=torch.int32)
    tiny = torch.tensor([(1 << PRECISION) - 255] + [1] * 255, dtype=torch.int32)
    cases = {
        "one symbol only": (torch.full((5000,), 7, dtype=torch.uint8), random_freqs(256, 1)),
        "a certain symbol (0 bits each)": (torch.zeros(5000, dtype=torch.uint8), one),
        "all symbols": (torch.arange(256, dtype=torch.uint8).repeat(10), random_freqs(256, 2)),
        "empty": (torch.empty(0, dtype=torch.uint8), random_freqs(16, 3)),
        "length 1": (torch.tensor([200], dtype=torch.uint8), random_freqs(256, 4)),
        "length 2": (torch.tensor([5, 255], dtype=torch.uint8), tiny),
        "length 3": (torch.tensor([255, 0, 254], dtype=torch.uint8), tiny),
        "only the unlikeliest symbols": (torch.randint(1, 256, (3001,), dtype=torch.uint8), tiny),
        "uniform, 8 bits each": (torch.randint(0, 256, (2999,), dtype=torch.uint8),
                                 torch.full((256,), 1 << (PRECISION - 8), dtype=torch.int32)),
        "precision 16": (torch.randint(0, 256, (999,), dtype=torch.uint8), random_freqs(256, 5, 16)),
        "precision 0": (torch.zeros(77, dtype=torch.uint8), torch.tensor([1], dtype=torch.int32)),
        "non-contiguous": (torch.randint(0, 8, (2, 999), dtype=torch.uint8).t(), random_freqs(8, 6)),
    }
    for name, (symbols, freqs) in cases.items():
        stream = rans(impl, "encode", symbols, freqs)
        assert 8 * stream.numel() <= rans_bound_bits(symbols, freqs), name
        assert torch.equal(stream, reference.rans_encode(symbols, freqs)), name
        assert torch.equal(rans(impl, "decode", stream, symbols.numel(), freqs), symbols.reshape(-1)), name


@pytest.mark.parametrize("impl", OTHERS)
def test_rans_round_trips_long_inputs_with_the_same_bytes_everywhere(impl):
    g = torch.Generator().manual_seed(0)
    symbols = (torch.randn(4_000_000, generator=g) * 20).round().clamp(-128, 127).to(torch.int16).add(128)
    symbols = symbols.to(torch.uint8)
    freqs = RansTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0).freqs
    stream = rans(impl, "encode", symbols, freqs)
    assert torch.equal(rans(impl, "decode", stream, symbols.numel(), freqs), symbols)
    assert 8 * stream.numel() <= rans_bound_bits(symbols, freqs)
    for other in OTHERS:
        assert torch.equal(rans(other, "encode", symbols, freqs), stream)
    head = symbols[:20_000]
    assert torch.equal(rans(impl, "encode", head, freqs), reference.rans_encode(head, freqs))


@pytest.mark.parametrize("impl", OTHERS)
def test_rans_interleaves_four_states_from_rans_wide_symbols_as_the_reference_does(impl):
    """Around the length where a message goes from 2 to 4 states (each state 4 more bytes), with a
    remainder of 0-3 symbols for the last states; a 4-state stream decoded as a shorter message."""
    freqs = random_freqs(200, 7)
    symbols = draw(freqs, RANS_WIDE + 3, 7)
    for n in (RANS_WIDE - 1, RANS_WIDE, RANS_WIDE + 1, RANS_WIDE + 3):
        head = symbols[:n]
        stream = rans(impl, "encode", head, freqs)
        assert torch.equal(stream, reference.rans_encode(head, freqs)), n
        assert torch.equal(rans(impl, "decode", stream, n, freqs), head), n
        tail = int.from_bytes(bytes(stream[-4 * rans_states(n):].tolist()), "big")
        assert all((tail >> (32 * j)) & 0xFFFFFFFF >= 1 << 23 for j in range(rans_states(n))), n
        assert 8 * stream.numel() <= rans_bound_bits(head, freqs), n
    with pytest.raises(ValueError, match="corrupt"):  # the 4-state stream read as 2 states' (a wrong n)
        rans(impl, "decode", stream, RANS_WIDE - 1, freqs)


@pytest.mark.parametrize("impl", ALL)
def test_rans_rejects_uncoded_symbols_corrupt_streams_and_bad_tables(impl):
    freqs = torch.tensor([2, 1, 1, 0], dtype=torch.int32)  # symbol 3 has frequency 0
    for symbols in ([0, 3], [0, 4]):  # without frequency; beyond the table
        with pytest.raises(ValueError, match="frequency 0"):
            rans(impl, "encode", torch.tensor(symbols * 100, dtype=torch.uint8), freqs)
    for n in (7, RANS_WIDE + 3):  # one such symbol, first, in the middle or last, for 2 and 4 states
        for at in (0, n // 2, n - 1):
            symbols = torch.zeros(n, dtype=torch.uint8)
            symbols[at] = 3
            with pytest.raises(ValueError, match="frequency 0"):
                rans(impl, "encode", symbols, freqs)
    symbols = torch.tensor([0, 1, 2, 0] * 50, dtype=torch.uint8)
    stream = rans(impl, "encode", symbols, freqs)
    for bad_stream, n in ((stream[:-1], 200), (torch.cat([stream, stream[:1]]), 200), (stream, 199), (stream, 201),
                          (stream[:7], 0), (torch.zeros(8, dtype=torch.uint8), 0),
                          (torch.full((8,), 0xFF, dtype=torch.uint8), 0)):
        with pytest.raises(ValueError, match="rans_decode: the stream is corrupt"):
            rans(impl, "decode", bad_stream, n, freqs)
    for bad in (torch.tensor([2, 1, 2], dtype=torch.int32), torch.tensor([5, -1], dtype=torch.int32),
                torch.tensor([0, 0], dtype=torch.int32), torch.tensor([1 << 17], dtype=torch.int32)):
        with pytest.raises(ValueError, match="sum to a power of two"):
            rans(impl, "encode", symbols, bad)
        with pytest.raises(ValueError, match="sum to a power of two"):
            rans(impl, "decode", stream, 200, bad)
    with pytest.raises(TypeError, match="build one with compressors.codecs.rans.RansTable"):
        rans(impl, "encode", symbols, freqs.long())
    with pytest.raises(TypeError, match="build one with compressors.codecs.rans.RansTable"):
        rans(impl, "decode", stream, 200, torch.ones(257, dtype=torch.int32))
    with pytest.raises(TypeError, match="rans_encode: symbols must be uint8"):
        rans(impl, "encode", symbols.int(), freqs)
    with pytest.raises(TypeError, match="rans_decode: stream must be uint8"):
        rans(impl, "decode", stream.to(torch.int8), 200, freqs)
    with pytest.raises(ValueError, match="n must be >= 0"):
        rans(impl, "decode", stream, -1, freqs)


# -- rANS of a message's own histogram (codecs.histogram) ------------------------------------
def histogram_round_trip(symbols: torch.Tensor, alphabet: int) -> torch.Tensor:
    """Header + stream of ``symbols`` with the table of their own histogram, checked against the
    reference coder and decoded by a receiver that sees only the bytes; returns the bytes."""
    levels = histogram.levels(np.bincount(symbols.numpy(), minlength=alphabet))
    table = histogram.table(levels)
    stream = table.encode(symbols)
    assert torch.equal(stream, reference.rans_encode(symbols, table.freqs))
    sent = torch.cat([histogram.write(levels), stream, torch.tensor([7], dtype=torch.uint8)])  # more bytes follow
    got_levels, size = histogram.read(sent, alphabet)
    assert np.array_equal(got_levels, levels) and torch.equal(sent[size:-1], stream)
    got = histogram.table(got_levels)
    assert torch.equal(got.freqs, table.freqs)
    assert torch.equal(reference.rans_decode(sent[size:-1], symbols.numel(), got.freqs), symbols)
    assert torch.equal(got.decode(sent[size:-1], symbols.numel()), symbols)
    return sent[:-1]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 5000), alphabet=st.sampled_from([2, 16, 256]), seed=st.integers(0, 2**31),
       dead=st.sampled_from([0.0, 0.5, 0.95]))
def test_histogram_rans_round_trips_within_the_levels_cost(n, alphabet, seed, dead):
    """Exact round trips, and the stream codes the histogram p within D(p || w / sum w) of H
    (weights within 2^(+-1/4) of the counts: at most 0.022 bits per symbol) plus the quantization
    to M = 2^15 and rANS's slack (< 0.006 bits per symbol), and the 8 bytes of state."""
    symbols = draw(random_freqs(alphabet, seed, dead=dead), n, seed)
    sent = histogram_round_trip(symbols, alphabet)
    _, size = histogram.read(sent, alphabet)
    counts = np.bincount(symbols.numpy(), minlength=alphabet)
    assert size <= (alphabet * 15 + 7) // 8
    if n:
        entropy = n * entropy_bits(symbols, alphabet)
        assert 8 * (sent.numel() - size) <= entropy + 0.06 * n + 64, counts


def test_histogram_rans_adversarial_inputs():
    g = torch.Generator().manual_seed(0)
    cases = {
        "empty": (torch.empty(0, dtype=torch.uint8), 256),
        "length 1": (torch.tensor([200], dtype=torch.uint8), 256),
        "one symbol only (0 bits each)": (torch.full((5000,), 7, dtype=torch.uint8), 256),
        "all 256 symbols": (torch.arange(256, dtype=torch.uint8).repeat(3), 256),
        "tiny counts beside a huge one": (torch.cat([torch.zeros(100_000, dtype=torch.uint8),
                                                     torch.arange(1, 256, dtype=torch.uint8)]), 256),
        "the last symbol only": (torch.full((3,), 255, dtype=torch.uint8), 256),
        "uniform": (torch.randint(0, 256, (4001,), generator=g, dtype=torch.uint8), 256),
        "fp4 codes, one of 16": (torch.tensor([15], dtype=torch.uint8), 16),
        "two symbols": (torch.tensor([1, 0, 1], dtype=torch.uint8), 2),
        "odd alphabet": (torch.tensor([2, 2, 0, 1], dtype=torch.uint8), 3),
        "alphabet 1": (torch.zeros(9, dtype=torch.uint8), 1),
    }
    for name, (symbols, alphabet) in cases.items():
        sent = histogram_round_trip(symbols, alphabet)
        if name.startswith("one symbol"):
            assert sent.numel() <= 32 + 4 + 8, name  # a bit per level, 3 x 11 for its level in, out and mirrored; states


def test_histogram_levels_and_their_weights():
    counts = np.array([0, 1, 2, 3, 4, 1000, (1 << 31) - 1])
    levels = histogram.levels(counts)
    assert levels.tolist() == [0, 1, 3, 4, 5, 21, 63]
    weights = 2.0 ** ((levels - 1) / 2)
    assert np.all(np.abs(np.log2(weights[1:] / counts[1:])) <= 0.25 + 1e-12)
    assert histogram.table(np.zeros(16, np.int64)).freqs.tolist() == [1 << PRECISION] + [0] * 15
    with pytest.raises(ValueError, match="counts"):
        histogram.levels(np.array([-1]))
    header = histogram.write(levels)
    with pytest.raises(ValueError, match="header is corrupt"):
        histogram.read(header[:1], len(levels))
    with pytest.raises(ValueError, match="header is corrupt"):
        histogram.read(torch.zeros(40, dtype=torch.uint8), 256)


@settings(max_examples=60, deadline=None)
@given(alphabet=st.integers(1, 256), seed=st.integers(0, 2**31), skew=st.floats(0.1, 30),
       precision=st.integers(8, 16), dead=st.sampled_from([0.0, 0.3]))
def test_quantized_frequencies_are_complete_and_optimal(alphabet, seed, skew, precision, dead):
    """sum f = 2^p, f_s >= 1 exactly where the weight is positive, and no unit moved between two
    symbols lowers sum_s p_s log2(M / f_s): optimal, the cost being separable and convex."""
    g = np.random.default_rng(seed)
    weights = g.pareto(1 / skew, alphabet) + 1e-12
    weights[1:][g.random(alphabet - 1) < dead] = 0
    f = quantize(weights, precision)
    assert f.sum() == 1 << precision and ((f > 0) == (weights > 0)).all()
    p, live = weights / weights.sum(), f > 0
    gain = p[live] * np.log2((f[live] + 1) / f[live])
    loss = p[f > 1] * np.log2(f[f > 1] / (f[f > 1] - 1))
    assert not loss.size or gain.max() <= loss.min() * (1 + 1e-9)


def test_quantize_rejects_what_no_table_can_code():
    with pytest.raises(ValueError, match="not all 0"):
        quantize(np.zeros(4))
    with pytest.raises(ValueError, match="do not fit"):
        quantize(np.ones(257), 8)
