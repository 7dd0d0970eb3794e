"""The packed Top-K kernels (``packed_encode``, ``packed_accumulate``; PackedTopK's payload). The
reference is held to independent oracles (the scale's definition, float_encode/decode, the
support rebuilt from the counts and offsets, a sequential fp32 loop); the C++ extension and numba
return exactly what the reference returns, on random and adversarial inputs; every implementation
raises the same argument errors and touches nothing when it does."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import ALL, DTYPES, IMPLS, KINDS, OTHERS, assert_same, make

from compressors import FloatFormat, kernels
from compressors.kernels import reference

FORMATS = {"fp8-143": FloatFormat.parse("fp8-143"), "fp8-152": FloatFormat.parse("fp8-152"),
           "fp4-121": FloatFormat.parse("fp4-121")}
SIZES = [0, 1, 254, 255, 256, 4097, 1_000_003]


def _support(kind: str, n: int, ratio: float, seed: int, dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, torch.Tensor]:
    x = make(kind, n, seed, dtype)
    return kernels.topk_abs(x, min(n, math.ceil(ratio * n)))


def _args(fmt: FloatFormat) -> tuple[int, int, int]:
    return fmt.exponent, fmt.mantissa, fmt.bias


# -- the reference against its definition ----------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("block", [1, 7, 255])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_packed_encode_is_its_definition(kind, block, fmt):
    f = FORMATS[fmt]
    for n in (1, 300, 4097):
        values, indices = _support(kind, n, 0.3, seed=n)
        codes, scale, counts, offsets = reference.packed_encode(values, indices, n, block, *_args(f))
        assert counts.dtype == offsets.dtype == codes.dtype == torch.uint8 and scale.dtype == torch.float32
        blocks = torch.repeat_interleave(torch.arange(counts.numel()), counts.long())
        assert counts.numel() == math.ceil(n / block) and torch.equal(blocks * block + offsets.long(), indices)
        s, top = float(scale), float(values.abs().max())
        if not math.isfinite(top):
            assert math.isnan(s) and not codes.any()
            continue
        if top == 0:
            assert s == 1.0
        else:
            below = float(torch.nextafter(scale, torch.tensor([0.0])))
            assert s * f.max_value >= top and (below * f.max_value < top or s == 2.0 ** -149)
        assert torch.equal(codes, f.encode(values, s))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-2.0 ** 100, 2.0 ** 100, width=32), min_size=1, max_size=700), st.floats(0.01, 1.0),
       st.integers(1, 255), st.floats(-4.0, 4.0))
def test_packed_accumulate_adds_what_the_payload_decodes_to(values, ratio, block, alpha):
    """accumulate(out, encode(Top-K of x)) is out + alpha s q(v / s) at Top-K's indices, as a
    sequential fp32 loop computes it, whatever the block."""
    x = torch.tensor(values, dtype=torch.float32)
    v, i = kernels.topk_abs(x, max(1, math.ceil(ratio * x.numel())))
    f = FORMATS["fp8-143"]
    payload = reference.packed_encode(v, i, x.numel(), block, *_args(f))
    decoded = f.decode(payload[0], float(payload[1]))
    out = torch.randn(x.numel(), generator=torch.Generator().manual_seed(len(values)))
    want = out.clone()
    for j, index in enumerate(i.tolist()):
        want[index] += torch.tensor(alpha, dtype=torch.float32) * decoded[j]
    reference.packed_accumulate(out, [payload[0]], [payload[1]], [payload[2]], [payload[3]], block, *_args(f), alpha)
    assert_same((out,), (want,))


def test_a_nan_scale_decodes_to_nan_at_the_payloads_entries_only():
    v, i = torch.tensor([1.0, float("inf"), -2.0]), torch.tensor([0, 4, 9])
    for impl in ALL:
        codes, scale, counts, offsets = IMPLS[impl].packed_encode(v, i, 12, 5, *_args(FORMATS["fp8-143"]))
        assert math.isnan(float(scale)) and not codes.any()
        out = torch.zeros(12)
        IMPLS[impl].packed_accumulate(out, [codes], [scale], [counts], [offsets], 5, *_args(FORMATS["fp8-143"]), 1.0)
        assert out.isnan().nonzero().reshape(-1).tolist() == [0, 4, 9] and not out[[1, 2, 3, 5, 11]].any()


# -- every other implementation against the reference ---------------------------------------
@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_packed_kernels_match_the_reference(impl, kind, dtype):
    ops = IMPLS[impl]
    for n in SIZES:
        for ratio, block, fmt in ((0.05, 255, "fp8-143"), (1.0, 255, "fp8-143"), (0.3, 13, "fp4-121"),
                                  (0.5, 1, "fp8-152")):
            f = FORMATS[fmt]
            values, indices = _support(kind, n, ratio, seed=n + 1, dtype=dtype)
            want = reference.packed_encode(values, indices, n, block, *_args(f))
            assert_same(ops.packed_encode(values, indices, n, block, *_args(f)), want)
            other = reference.packed_encode(*_support("normal", n, ratio, seed=n + 2), n, block, *_args(f))
            payloads = [want, other, want]  # list order: rank order
            got, expected = torch.ones(n), torch.ones(n)
            for out, kernel in ((got, ops), (expected, reference)):
                kernel.packed_accumulate(out, *[[p[j] for p in payloads] for j in range(4)], block, *_args(f), -1 / 3)
            assert_same((got,), (expected,), nan_bits=False)


@pytest.mark.parametrize("impl", ALL)
def test_packed_kernels_take_int32_and_non_contiguous_inputs(impl):
    ops, f = IMPLS[impl], FORMATS["fp8-143"]
    values, indices = kernels.topk_abs(make("normal", 1000, seed=3), 100)
    want = reference.packed_encode(values, indices, 1000, 255, *_args(f))
    strided_values, strided_indices = torch.stack([values, -values], 1)[:, 0], torch.stack([indices, indices], 1)[:, 1]
    assert not strided_values.is_contiguous() and not strided_indices.is_contiguous()
    assert_same(ops.packed_encode(strided_values, strided_indices.int(), 1000, 255, *_args(f)), want)
    codes, scale, counts, offsets = want
    strided = [torch.stack([t, t], 1)[:, 0] for t in (codes, counts, offsets)]
    got, expected = torch.zeros(1000), torch.zeros(1000)
    ops.packed_accumulate(got, [strided[0]], [scale], [strided[1]], [strided[2]], 255, *_args(f), 1.0)
    reference.packed_accumulate(expected, [codes], [scale], [counts], [offsets], 255, *_args(f), 1.0)
    assert_same((got,), (expected,))


@pytest.mark.parametrize("impl", ALL)
def test_packed_kernels_reject_bad_arguments_with_the_fix(impl):
    ops, f = IMPLS[impl], _args(FORMATS["fp8-143"])
    with pytest.raises(IndexError, match=r"indices must ascend strictly within \[0, 10\) \(topk_abs's order\)"):
        ops.packed_encode(torch.ones(2), torch.tensor([3, 2]), 10, 4, *f)
    with pytest.raises(IndexError, match="must ascend strictly"):
        ops.packed_encode(torch.ones(2), torch.tensor([3, 10]), 10, 4, *f)
    with pytest.raises(IndexError, match="must ascend strictly"):
        ops.packed_encode(torch.ones(2), torch.tensor([3, 3]), 10, 4, *f)
    with pytest.raises(ValueError, match=r"block must lie in \[1, 255\] entries"):
        ops.packed_encode(torch.ones(2), torch.tensor([1, 3]), 10, 256, *f)
    with pytest.raises(ValueError, match="must have one size and one device"):
        ops.packed_encode(torch.ones(3), torch.tensor([1, 3]), 10, 4, *f)
    with pytest.raises(TypeError, match="values must be float32, float16 or bfloat16"):
        ops.packed_encode(torch.ones(2, dtype=torch.float64), torch.tensor([1, 3]), 10, 4, *f)
    codes, scale, counts, offsets = ops.packed_encode(torch.ones(2), torch.tensor([1, 9]), 10, 4, *f)
    out = torch.zeros(10)
    with pytest.raises(IndexError, match="counts sum to 3 for 2 codes"):
        ops.packed_accumulate(out, [codes], [scale], [torch.tensor([1, 1, 1], dtype=torch.uint8)], [offsets], 4, *f,
                              1.0)
    with pytest.raises(IndexError, match="an offset points past its block"):  # the last block has entries 8 and 9
        ops.packed_accumulate(out, [codes], [scale], [counts], [torch.tensor([1, 2], dtype=torch.uint8)], 4, *f, 1.0)
    with pytest.raises(IndexError, match="an offset points past its block"):
        ops.packed_accumulate(out, [codes], [scale], [counts], [torch.tensor([4, 1], dtype=torch.uint8)], 4, *f, 1.0)
    with pytest.raises(ValueError, match="blocks of 5 has 1 scale, 2 counts and as many offsets as codes, got 1, 3"):
        ops.packed_accumulate(out, [codes], [scale], [counts], [offsets], 5, *f, 1.0)
    with pytest.raises(ValueError, match="1 codes, 2 scales, 1 counts and 1 offsets tensors"):
        ops.packed_accumulate(out, [codes], [scale, scale], [counts], [offsets], 4, *f, 1.0)
    with pytest.raises(TypeError, match="codes, counts, offsets uint8 and scale float32"):
        ops.packed_accumulate(out, [codes], [scale.double()], [counts], [offsets], 4, *f, 1.0)
    with pytest.raises(TypeError, match="out must be a contiguous float32 tensor"):
        ops.packed_accumulate(torch.zeros(20)[::2], [codes], [scale], [counts], [offsets], 4, *f, 1.0)
    assert torch.equal(out, torch.zeros(10)), "a rejected call must not touch out"
    ops.packed_accumulate(out, [codes, codes], [scale, scale], [counts, counts], [offsets, offsets], 4, *f, 0.5)
    assert out.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_the_packed_ops():
    values, indices = kernels.topk_abs(torch.randn(5000), 250)
    f = _args(FORMATS["fp8-143"])
    payload = torch.ops.threepc.packed_encode(values, indices, 5000, 255, *f)
    torch.library.opcheck(torch.ops.threepc.packed_encode.default, (values, indices, 5000, 255, *f))
    torch.library.opcheck(torch.ops.threepc.packed_accumulate.default,
                          (torch.zeros(5000), *[[t, t] for t in payload], 255, *f, 0.5))


@pytest.mark.parametrize("impl", ALL)
def test_the_scale_is_fp32_whatever_the_default_dtype(impl):
    """The scale's rounding up is an fp32 step even when torch's default dtype is float64 (a float64
    step rounded back to fp32 left s one ulp short: the largest value saturated)."""
    values, indices = torch.tensor([847.449, -3.0]), torch.tensor([0, 7])
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _, scale, _, _ = IMPLS[impl].packed_encode(values, indices, 8, 255, *_args(FORMATS["fp8-143"]))
    finally:
        torch.set_default_dtype(before)
    s = float(scale)
    assert s * FORMATS["fp8-143"].max_value >= 847.449 and scale.dtype == torch.float32
    assert torch.equal(scale, reference.packed_encode(values, indices, 8, 255, *_args(FORMATS["fp8-143"]))[1])


@pytest.mark.parametrize("impl", ALL)
def test_formats_beyond_fp32_are_refused_and_a_scale_beyond_it_is_nan(impl):
    ops = IMPLS[impl]
    with pytest.raises(ValueError, match=r"\[1, 7, 0\] with bias -1 has a largest value beyond fp32's"):
        ops.packed_encode(torch.ones(2), torch.tensor([0, 1]), 2, 1, 7, 0, -1)
    with pytest.raises(ValueError, match="beyond fp32's"):
        ops.packed_accumulate(torch.zeros(2), [], [], [], [], 1, 7, 0, -1, 1.0)
    codes, scale, _, _ = ops.packed_encode(torch.tensor([1e30, 1.0]), torch.tensor([0, 1]), 2, 1, 1, 0, 64)
    assert math.isnan(float(scale)) and not codes.any()  # the largest value is 2^-63: s would be 1e30 2^63
