"""The scaled-sign kernels (sign_encode, sign_residual, sign_decode, sign_accumulate). The reference is held to an
independent oracle (numpy's packbits, math.fsum and a bit-level bf16 rounding; a sequential
float32 loop for the accumulation); every other
implementation here (the C++ extension, numba) must return exactly what the reference returns
(any NaN counts as one NaN: IEEE leaves a NaN's bits open); every implementation raises the same
argument errors and leaves a rejected call's tensors untouched."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import ALL, DTYPES, IMPLS, KINDS, OTHERS, assert_same, make

from compressors.kernels import reference

BLOCKS = [1, 3, 8, 13, 2048]


def oracle_sign_encode(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs by numpy's packbits (little bit order); each scale the correctly rounded mean |x| of
    its block (math.fsum), rounded to fp32, saturated, and rounded to bf16 on the bit pattern."""
    a = x.reshape(-1).float().numpy().astype(np.float64)
    d = a.size
    signs = np.packbits(a < 0, bitorder="little")
    bf16_max = float(torch.finfo(torch.bfloat16).max)
    scales = []
    for lo in range(0, max(d, 1), block):
        part = np.abs(a[lo:lo + block])
        if np.isnan(part).any() or np.isinf(part).any():
            mean = float("nan") if np.isnan(part).any() else float("inf")
        else:
            mean = float(np.float32(math.fsum(part) / max(1, part.size)))
        if math.isnan(mean):
            scales.append(0x7FC0)
            continue
        mean = min(mean, bf16_max) if math.isfinite(mean) else mean
        bits = int(np.float32(mean).view(np.uint32))
        scales.append((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)
    return (torch.from_numpy(signs.astype(np.uint8)),
            torch.tensor(scales, dtype=torch.int32).to(torch.int16).view(torch.bfloat16))


def oracle_decode(x: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """C(x)_j = -s_b where x_j < 0, else s_b, in float64 (exact for bf16 scales)."""
    a = x.reshape(-1).double()
    s = scales.double().repeat_interleave(block)[:a.numel()]
    return torch.where(a < 0, -s, s)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), block=st.sampled_from(BLOCKS), kind=st.sampled_from(KINDS),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_reference_sign_encode_matches_the_oracle(n, block, kind, dtype, seed):
    x = make(kind, n, seed, dtype)
    signs, scales = reference.sign_encode(x, block)
    assert_same((signs, scales), oracle_sign_encode(x, block), nan_bits=False)
    decoded = reference.sign_decode(signs, scales, n, block)
    assert_same((decoded.double(),), (oracle_decode(x, scales, block),), nan_bits=False)
    v = x.float().clone()
    assert_same(reference.sign_residual(v, block), (signs, scales), nan_bits=False)
    assert_same((v,), (x.float() - decoded,), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300_000), block=st.sampled_from(BLOCKS), kind=st.sampled_from(KINDS),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_sign_kernels_match_reference(impl, n, block, kind, dtype, seed):
    ops, x = IMPLS[impl], make(kind, n, seed, dtype)
    want = reference.sign_encode(x, block)
    assert_same(ops.sign_encode(x, block), want, nan_bits=False)
    assert_same((ops.sign_decode(*want, n, block),), (reference.sign_decode(*want, n, block),), nan_bits=False)
    got_v, want_v = x.float().clone(), x.float().clone()
    assert_same(ops.sign_residual(got_v, block), reference.sign_residual(want_v, block), nan_bits=False)
    assert_same((got_v,), (want_v,), nan_bits=False)


def oracle_accumulate(out: torch.Tensor, payloads: list[tuple[torch.Tensor, torch.Tensor]], block: int,
                      alpha: float) -> torch.Tensor:
    """A sequential numpy float32 loop: out_j += sign_rj fp32(s_rb alpha), payload after payload."""
    o = out.numpy().copy()
    for signs, scales in payloads:
        bits = np.unpackbits(signs.numpy(), bitorder="little")[:o.size]
        magnitude = scales.float().numpy() * np.float32(alpha)
        for j in range(o.size):
            m = magnitude[j // block]
            o[j] = np.float32(o[j] + (-m if bits[j] else m))
    return torch.from_numpy(o)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 600), block=st.sampled_from(BLOCKS), ranks=st.integers(0, 4), kind=st.sampled_from(KINDS),
       alpha=st.sampled_from([1.0, 0.5, 1 / 3, -2.0]), seed=st.integers(0, 2**31))
def test_reference_sign_accumulate_is_a_sequential_fp32_loop(n, block, ranks, kind, alpha, seed):
    payloads = [reference.sign_encode(make(kind, n, seed + r), block) for r in range(ranks)]
    out = make("normal", n, seed + 99)
    want = oracle_accumulate(out, payloads, block, alpha)
    reference.sign_accumulate(out, [p[0] for p in payloads], [p[1] for p in payloads], block, alpha)
    assert_same((out,), (want,), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 200_000), block=st.sampled_from(BLOCKS), ranks=st.integers(0, 5), kind=st.sampled_from(KINDS),
       alpha=st.sampled_from([1.0, 0.25, 1 / 3, 1 / 7]), seed=st.integers(0, 2**31))
def test_sign_accumulate_matches_reference(impl, n, block, ranks, kind, alpha, seed):
    payloads = [reference.sign_encode(make(kind, n, seed + r), block) for r in range(ranks)]
    got, want = make("normal", n, seed + 99), make("normal", n, seed + 99)
    IMPLS[impl].sign_accumulate(got, [p[0] for p in payloads], [p[1] for p in payloads], block, alpha)
    reference.sign_accumulate(want, [p[0] for p in payloads], [p[1] for p in payloads], block, alpha)
    assert_same((got,), (want,), nan_bits=False)


@pytest.mark.parametrize("impl", ALL)
def test_sign_kernels_on_non_contiguous_multidimensional_and_huge_inputs(impl):
    ops = IMPLS[impl]
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)).t()[::2]
    assert_same(ops.sign_encode(x, 16), oracle_sign_encode(x.contiguous(), 16))
    huge = torch.tensor([3.4e38, -3.4e38, 3.4e38, 1e-45, -0.0, 0.0])  # the mean saturates to bf16's max
    signs, scales = ops.sign_encode(huge, 3)
    assert signs.tolist() == [0b10] and scales.float().tolist() == [torch.finfo(torch.bfloat16).max, 0.0]


@pytest.mark.parametrize("impl", ALL)
def test_a_non_finite_entry_makes_its_block_non_finite_and_no_other(impl):
    ops = IMPLS[impl]
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.ones(24)
        x[9] = bad
        decoded = ops.sign_decode(*ops.sign_encode(x, 8), 24, 8)
        assert torch.isfinite(decoded[:8]).all() and not torch.isfinite(decoded[8:16]).any()
        assert torch.isfinite(decoded[16:]).all()


@pytest.mark.parametrize("impl", ALL)
def test_sign_kernels_reject_bad_arguments_with_the_fix(impl):
    ops = IMPLS[impl]
    with pytest.raises(ValueError, match="sign_encode: block must be at least 1 entry, got 0"):
        ops.sign_encode(torch.randn(10), 0)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, .*cast it with \.float\(\)"):
        ops.sign_encode(torch.randn(10, dtype=torch.float64), 4)
    v = torch.randn(20)
    before = v.clone()
    with pytest.raises(TypeError, match=r"v must be a contiguous float32 tensor .*pass v\.float\(\)\.contiguous\(\)"):
        ops.sign_residual(v[::2], 4)
    with pytest.raises(ValueError, match="sign_residual: block must be at least 1"):
        ops.sign_residual(v, -3)
    assert torch.equal(v, before), "a rejected call must not touch v"
    signs, scales = reference.sign_encode(v, 4)
    with pytest.raises(ValueError, match="20 entries in blocks of 4 need 3 sign bytes and 5 scales, got 3 and 5"
                                         r"|need 3 sign bytes and 10 scales, got 3 and 5; pass the payload's numel"):
        ops.sign_decode(signs, scales, 20, 2)
    with pytest.raises(TypeError, match="signs must be uint8 and scales bfloat16"):
        ops.sign_decode(signs, scales.float(), 20, 4)
    with pytest.raises(ValueError, match="numel must be >= 0"):
        ops.sign_decode(signs, scales, -1, 4)
    out = torch.zeros(20)
    with pytest.raises(ValueError, match="2 sign tensors but 1 scale tensors; pass one of each per payload"):
        ops.sign_accumulate(out, [signs, signs], [scales], 4, 1.0)
    with pytest.raises(ValueError, match="need 3 sign bytes and 5 scales, got 3 and 4"):
        ops.sign_accumulate(out, [signs, signs], [scales, scales[:4]], 4, 1.0)
    with pytest.raises(TypeError, match="out must be a contiguous float32 tensor"):
        ops.sign_accumulate(out.double(), [signs], [scales], 4, 1.0)
    assert torch.equal(out, torch.zeros(20)), "a rejected call must not touch out"


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_the_sign_ops():
    ops, x = torch.ops.threepc, torch.randn(5000)
    signs, scales = ops.sign_encode(x, 64)
    torch.library.opcheck(ops.sign_encode.default, (x, 64))
    torch.library.opcheck(ops.sign_residual.default, (x.clone(), 64))
    torch.library.opcheck(ops.sign_decode.default, (signs, scales, 5000, 64))
    torch.library.opcheck(ops.sign_accumulate.default, (torch.randn(5000), [signs, signs], [scales, scales], 64, 0.5))
