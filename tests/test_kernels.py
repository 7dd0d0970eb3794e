"""The top-k kernels. The reference is held to independent oracles (a stable float64 sort, a
sequential fp32 loop); every other implementation here (the C++ extension, numba) must return
exactly what the reference returns; every implementation raises the same argument errors. Also:
the ops' registration (opcheck, torch.compile) and how the extension is loaded or replaced."""
from __future__ import annotations

import importlib.machinery
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import kernels
from compressors.kernels import extension, reference

IMPLS = kernels.implementations()
OTHERS = [name for name in IMPLS if name != "torch"]  # compared with the reference
ALL = list(IMPLS)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KINDS = ["normal", "ties", "zeros", "scales", "constant", "specials"]
ROOT = Path(__file__).resolve().parent.parent


def make(kind: str, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs with the structure selection gets wrong: ties, zeros, huge ranges, specials."""
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(n, generator=g)
    elif kind == "ties":  # few distinct magnitudes, both signs
        x = torch.randint(-3, 4, (n,), generator=g).float()
    elif kind == "zeros":  # mostly exact zeros, +0 and -0
        x = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.01)
        x[torch.rand(n, generator=g) < 0.5] *= -1
    elif kind == "scales":  # magnitudes over many binades, subnormals included
        x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-140, 100, (n,), generator=g).float())
    elif kind == "constant":
        x = torch.full((n,), -0.5)
    elif kind == "specials":  # NaN, +-inf, +-0 among normals
        pool = torch.tensor([math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0])
        x = torch.where(torch.rand(n, generator=g) < 0.3, pool[torch.randint(0, 8, (n,), generator=g)],
                        torch.randn(n, generator=g))
    else:
        raise ValueError(kind)
    return x.to(dtype)


def assert_same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], *, nan_bits: bool = True) -> None:
    """Bitwise equality. ``nan_bits=False`` for values that arithmetic produced: the payload and
    sign of a NaN out of ``a - b`` differ between numpy and torch (IEEE leaves them open), so
    every NaN counts as one."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        if not nan_bits and g.is_floating_point():
            g, w = canonical_nan(g), canonical_nan(w)
        if g.is_floating_point() and g.numel():  # the bits: NaN equals NaN, -0.0 differs from 0.0
            g, w = g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)
        assert torch.equal(g, w), "bitwise mismatch"


def canonical_nan(t: torch.Tensor) -> torch.Tensor:
    return t.masked_fill(t.isnan(), float("nan"))


# -- oracles ----------------------------------------------------------------------------------
def oracle_topk_abs(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stable sort: |x| descending, every NaN one magnitude above +inf (whatever its sign and
    payload), -0 equal to +0, ties by index."""
    a = x.reshape(-1).double().numpy()
    nan = np.isnan(a)
    order = np.lexsort((np.arange(a.size), -np.where(nan, 0.0, np.abs(a)), -nan.astype(np.int64)))
    indices = torch.from_numpy(np.sort(order[:k]))
    return x.reshape(-1)[indices], indices


def oracle_ef21_topk_step(grad: torch.Tensor, h: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """(values, indices, new h) in numpy fp32 arithmetic."""
    d = grad.reshape(-1).float().numpy() - h.reshape(-1).numpy()
    values, indices = oracle_topk_abs(torch.from_numpy(d), k)
    new_h = h.reshape(-1).numpy().copy()
    new_h[indices.numpy()] += values.numpy()
    return values, indices, torch.from_numpy(new_h)


def oracle_sparse_accumulate(out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                             alpha: float) -> torch.Tensor:
    """One fp32 product and one fp32 sum per entry, in row-major order."""
    result = out.numpy().copy()
    a = np.float32(alpha)
    for v, i in zip(values.reshape(-1).float().tolist(), indices.reshape(-1).tolist()):
        result[i] = np.float32(result[i] + np.float32(a * np.float32(v)))
    return torch.from_numpy(result)


# -- the reference against the oracles ------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31))
def test_reference_topk_abs_is_a_stable_sort(n, k_frac, kind, dtype, seed):
    x = make(kind, n, seed, dtype)
    k = math.floor(k_frac * n)
    assert_same(reference.topk_abs(x, k), oracle_topk_abs(x, k))


@pytest.mark.parametrize("kind", KINDS)
def test_reference_topk_abs_is_a_stable_sort_on_large_and_strided_inputs(kind):
    x = make(kind, 2 * 50_003, 1)[::2]
    for k in (0, 1, 2000, x.numel()):
        assert_same(reference.topk_abs(x, k), oracle_topk_abs(x, k))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3000), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31))
def test_reference_ef21_topk_step_matches_the_oracle(n, k_frac, kind, dtype, seed):
    grad, h = make(kind, n, seed, dtype), make("normal", n, seed + 1)
    k = math.floor(k_frac * n)
    *want, want_h = oracle_ef21_topk_step(grad, h, k)
    assert_same(reference.ef21_topk_step(grad, h, k), tuple(want), nan_bits=False)
    assert_same((h,), (want_h,), nan_bits=False)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), ranks=st.integers(1, 4), k=st.integers(0, 40), duplicates=st.booleans(),
       alpha=st.sampled_from([1.0, 0.25, 1 / 3]), seed=st.integers(0, 2**31))
def test_reference_sparse_accumulate_is_a_sequential_fp32_loop(n, ranks, k, duplicates, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(k, n)
    if duplicates:  # one index for the whole row: every rank adds to the same coordinates
        indices = torch.randint(0, n, (1, k), generator=g).expand(ranks, k)
    else:
        indices = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(ranks)])
    values = torch.randn(ranks, k, generator=g) * torch.exp2(torch.randint(-20, 20, (ranks, k), generator=g).float())
    out = torch.randn(n, generator=g)
    want = oracle_sparse_accumulate(out, values, indices, alpha)
    reference.sparse_accumulate(out, values, indices, alpha)
    assert_same((out,), (want,))


# -- every other implementation against the reference ---------------------------------------
@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10**6), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31))
def test_topk_abs_matches_reference(impl, n, k_frac, kind, seed):
    x = make(kind, n, seed)
    k = min(n, math.floor(k_frac * n))
    assert_same(IMPLS[impl].topk_abs(x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("n,k", [(0, 0), (1, 0), (1, 1), (2, 1), (7, 7), (50_000, 1), (50_000, 50_000),
                                 (300_000, 3000)])
def test_topk_abs_extremes_of_k(impl, n, k):
    x = make("normal", n, n + k)
    assert_same(IMPLS[impl].topk_abs(x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("impl", OTHERS)
def test_topk_abs_when_the_sample_overstates_the_largest_keys(impl):
    # The extension bounds the k-th key from runs of 32 keys at r * n / 512: make exactly those
    # keys large, so fewer than k survive its filter and it must fall back to a full select.
    n, k = 2**20, 20_000
    x = torch.ones(n)
    starts = torch.arange(512) * (n // 512)
    x[(starts[:, None] + torch.arange(32)).reshape(-1)] = 2.0
    assert_same(IMPLS[impl].topk_abs(x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "scales", "specials"])
def test_topk_abs_low_precision_and_special_inputs(impl, dtype, kind):
    x = make(kind, 40_000, 3, dtype)  # above the extension's small-input threshold: the sampled path
    assert_same(IMPLS[impl].topk_abs(x, 400), reference.topk_abs(x, 400))


@pytest.mark.parametrize("impl", OTHERS)
def test_topk_abs_non_contiguous_and_multidimensional(impl):
    base = make("normal", 2 * 300 * 200, 5).view(2 * 300, 200)
    for x in (base[::2], base.t(), base[:, 3:150]):
        assert not x.is_contiguous()
        assert_same(IMPLS[impl].topk_abs(x, 777), reference.topk_abs(x, 777))


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 300_000), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_ef21_topk_step_matches_reference(impl, n, k_frac, kind, dtype, seed):
    # NaNs included: a NaN out of d = grad - h has the payload and sign each implementation's
    # arithmetic gives it (IEEE leaves both open), hence nan_bits=False; all NaNs rank as one
    # magnitude, so the selection is the same
    grad = make(kind, n, seed, dtype)
    h = make("normal", n, seed + 1)
    k = min(n, math.floor(k_frac * n))
    h_ref = h.clone()
    want = reference.ef21_topk_step(grad, h_ref, k)
    assert_same(IMPLS[impl].ef21_topk_step(grad, h, k), want, nan_bits=False)
    assert_same((h,), (h_ref,), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 200_000), ranks=st.integers(1, 5), k_frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_sparse_accumulate_matches_reference(impl, index_dtype, n, ranks, k_frac, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(n, math.floor(k_frac * n))
    indices = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(ranks)]).to(index_dtype)
    values = torch.randn(ranks, k, generator=g).to(torch.bfloat16 if seed % 3 == 0 else torch.float32)
    out = torch.randn(n, generator=g)
    alpha = 1.0 / ranks
    want = out.clone()
    reference.sparse_accumulate(want, values, indices, alpha)
    IMPLS[impl].sparse_accumulate(out, values, indices, alpha)
    assert_same((out,), (want,))


# -- properties every implementation has ----------------------------------------------------
@pytest.mark.parametrize("impl", ALL)
def test_topk_abs_ties_go_to_the_lowest_index(impl):
    values, indices = IMPLS[impl].topk_abs(torch.tensor([1.0, -2.0, 2.0, -2.0, 1.0, 2.0]), 2)
    assert indices.tolist() == [1, 2] and values.tolist() == [-2.0, 2.0]


@pytest.mark.parametrize("impl", ALL)
def test_topk_abs_orders_nan_above_inf_and_signed_zeros_equal(impl):
    x = torch.tensor([0.0, -0.0, float("inf"), 1.0, float("nan"), -float("inf"), 0.0])
    values, indices = IMPLS[impl].topk_abs(x, 3)
    assert indices.tolist() == [2, 4, 5]
    assert math.isnan(values[1]) and values[0] == math.inf and values[2] == -math.inf
    _, zero_idx = IMPLS[impl].topk_abs(torch.tensor([-0.0, 0.0, -0.0]), 2)
    assert zero_idx.tolist() == [0, 1]
    half = torch.tensor([0x7E01, 0xFE00 - 0x10000, 0x3C00], dtype=torch.int16).view(torch.float16)  # +-NaN, 1
    values, _ = IMPLS[impl].topk_abs(half, 2)
    assert values.view(torch.int16).tolist() == half[:2].view(torch.int16).tolist(), "a NaN's sign and payload"
    nans = torch.tensor([0x7FC00001, 0xFFBFFFFF - 2**32, 0x7FFFFFFF, 0x7F800000], dtype=torch.int32)  # sNaN, inf
    for order in ([0, 1, 2, 3], [2, 1, 0, 3], [3, 1, 2, 0]):  # every NaN one magnitude: ties by index
        x = nans[order].view(torch.float32)
        values, indices = IMPLS[impl].topk_abs(x, 2)
        assert indices.tolist() == [i for i, code in enumerate(nans[order].tolist()) if code != 0x7F800000][:2]
        assert torch.equal(values.view(torch.int32), x[indices].view(torch.int32)), "the NaNs' own bits"


@pytest.mark.parametrize("impl", ALL)
def test_ef21_topk_step_moves_the_estimate_onto_the_gradient_where_sent(impl):
    grad, h = torch.randn(10_000), torch.randn(10_000)
    before = h.clone()
    values, indices = IMPLS[impl].ef21_topk_step(grad, h, 100)
    assert torch.allclose(h[indices], grad[indices])
    untouched = torch.ones(10_000, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(h[untouched], before[untouched])
    assert torch.equal(values, (grad - before)[indices])


@pytest.mark.parametrize("impl", ALL)
def test_sparse_accumulate_sums_each_coordinate_in_rank_order(impl):
    # 1e8 + 1 - 1e8 is 0 in fp32 left to right but 1 in other orders: the order is observable.
    out = torch.zeros(3)
    values = torch.tensor([[1e8, 5.0], [1.0, 6.0], [-1e8, 7.0]])
    IMPLS[impl].sparse_accumulate(out, values, torch.tensor([[0, 2], [0, 2], [0, 2]]), 1.0)
    assert out.tolist() == [0.0, 0.0, 18.0]


@pytest.mark.parametrize("impl", ALL)
def test_kernels_reject_bad_arguments_with_the_fix(impl):
    ops = IMPLS[impl]
    with pytest.raises(ValueError, match=r"topk_abs: k must lie in \[0, numel\] = \[0, 10\], got k = 11"):
        ops.topk_abs(torch.randn(10), 11)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, .*cast it with \.float\(\)"):
        ops.topk_abs(torch.randn(10, dtype=torch.float64), 1)
    with pytest.raises(TypeError, match="h must be a contiguous float32 tensor"):
        ops.ef21_topk_step(torch.randn(10), torch.randn(20)[::2], 1)
    with pytest.raises(TypeError, match="h must be a contiguous float32 tensor"):
        ops.ef21_topk_step(torch.randn(10), torch.randn(10).half(), 1)
    with pytest.raises(ValueError, match="grad has 10 elements but h has 11"):
        ops.ef21_topk_step(torch.randn(10), torch.randn(11), 1)
    with pytest.raises(ValueError, match="ef21_topk_step: k must lie in"):
        ops.ef21_topk_step(torch.randn(10), torch.randn(10), -1)
    out = torch.zeros(5)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 5\), got \[1, 5\]"):
        ops.sparse_accumulate(out, torch.ones(2), torch.tensor([1, 5]), 1.0)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 5\), got \[-1, 1\]"):
        ops.sparse_accumulate(out, torch.ones(2), torch.tensor([1, -1], dtype=torch.int32), 1.0)
    with pytest.raises(TypeError, match="indices must be int64 or int32"):
        ops.sparse_accumulate(out, torch.ones(2), torch.tensor([1.0, 2.0]), 1.0)
    with pytest.raises(ValueError, match="values has 3 elements but indices has 2"):
        ops.sparse_accumulate(out, torch.ones(3), torch.tensor([1, 2]), 1.0)
    with pytest.raises(TypeError, match="out must be a contiguous float32 tensor"):
        ops.sparse_accumulate(out.double(), torch.ones(2), torch.tensor([1, 2]), 1.0)
    assert torch.equal(out, torch.zeros(5)), "a rejected call must not touch out"


@pytest.mark.parametrize("impl", ALL)
def test_an_output_that_shares_memory_with_an_input_is_refused_by_every_backend(impl):
    """A kernel that writes ``out`` while it reads an input may write an entry before it reads the
    input bytes stored there (the C++ float_decode writes 32 floats at a time: a review found 31 of
    64 entries wrong, numba's float_accumulate 46 of 64). Every backend refuses such a call with
    the same ValueError and leaves ``out`` as it was; views of one buffer that do not meet pass."""
    ops = IMPLS[impl]
    out = torch.arange(64, dtype=torch.float32)
    before = out.clone()
    raw = out.view(torch.uint8)  # out's own bytes
    with pytest.raises(ValueError, match=r"float_accumulate: out shares memory with codes, .*\(codes.clone\(\)\)"):
        ops.float_accumulate(out, raw[:64], 4, 3, 7, 1.0, 1.0)
    with pytest.raises(ValueError, match="sparse_accumulate: out shares memory with values"):
        ops.sparse_accumulate(out, out[1:4], torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="sparse_accumulate: out shares memory with indices"):
        ops.sparse_accumulate(out, torch.ones(2), out.view(torch.int32)[:2], 1.0)
    with pytest.raises(ValueError, match="ef21_topk_step: h shares memory with grad"):
        ops.ef21_topk_step(out.view(8, 8), out, 3)
    signs, scales = reference.sign_encode(torch.randn(64), 16)
    raw[:8] = signs
    with pytest.raises(ValueError, match="sign_accumulate: out shares memory with signs"):
        ops.sign_accumulate(out, [signs, raw[:8]], [scales, scales], 16, 1.0)
    codes, scale, counts, offsets = reference.packed_encode(torch.ones(4), torch.tensor([1, 5, 9, 60]), 64, 8, 4, 3, 7)
    with pytest.raises(ValueError, match="packed_accumulate: out shares memory with offsets"):
        ops.packed_accumulate(out, [codes], [scale], [counts], [raw[-4:]], 8, 4, 3, 7, 1.0)
    shared = np.zeros(64, dtype=np.float32)  # two storages over one memory
    with pytest.raises(ValueError, match="float_accumulate: out shares memory with codes"):
        ops.float_accumulate(torch.from_numpy(shared), torch.from_numpy(shared.view(np.uint8)[:64]), 4, 3, 7, 1.0, 1.0)
    raw[:8] = before.view(torch.uint8)[:8]
    assert torch.equal(out, before), "a refused call must not touch out"
    buffer = torch.zeros(64)  # one storage, disjoint views: accepted
    ops.sparse_accumulate(buffer[:32], buffer[32:35] + 1, torch.tensor([0, 1, 2]), 1.0)
    ops.sparse_accumulate(buffer[:32], buffer[40:46:2], torch.tensor([3, 4, 5]), 1.0)
    assert buffer[:6].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_the_out_variants_refuse_an_out_that_shares_memory_with_their_input():
    """``float_decode(out=)`` and ``float_encode(out=)`` through the served backend."""
    out = torch.zeros(64)
    with pytest.raises(ValueError, match="float_decode: out shares memory with codes"):
        kernels.float_decode(out.view(torch.uint8)[:64], 4, 3, 7, out=out)
    v = torch.randn(64)
    with pytest.raises(ValueError, match="float_encode: out shares memory with v"):
        kernels.float_encode(v, 4, 3, 7, out=v.view(torch.uint8)[:64])


# -- the registered ops -----------------------------------------------------------------------
def test_the_built_extension_serves_the_ops():
    info, built = kernels.backend_info(), extension.build_info()
    assert info["runtime_torch"] == torch.__version__ and info["backend"] in kernels.BACKENDS
    if built is not None and built["torch"] == torch.__version__ and not os.environ.get("THREEPC_BACKEND"):
        assert info["backend"] == "ext" and "ext" in IMPLS, info
        assert info["extension_torch"] == torch.__version__ and info["extension_cuda"] == built["cuda"]


pytestmark_ext = pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")


@pytestmark_ext
def test_opcheck_passes_for_the_topk_ops():
    x = torch.randn(5000)
    torch.library.opcheck(torch.ops.threepc.topk_abs.default, (x, 50))
    torch.library.opcheck(torch.ops.threepc.ef21_topk_step.default, (x, torch.randn(5000), 50))
    torch.library.opcheck(torch.ops.threepc.sparse_accumulate.default,
                          (torch.zeros(5000), torch.randn(2, 50), torch.randint(0, 5000, (2, 50)), 0.5))


@pytestmark_ext
def test_ops_trace_under_torch_compile():
    def step(grad, h):
        values, indices = torch.ops.threepc.ef21_topk_step(grad, h, 64)
        out = torch.zeros_like(h)
        torch.ops.threepc.sparse_accumulate(out, values, indices, 1.0)
        return out

    grad = torch.randn(4096)
    h_eager, h_compiled = torch.zeros(4096), torch.zeros(4096)
    want = step(grad, h_eager)
    got = torch.compile(step, backend="aot_eager", fullgraph=True)(grad, h_compiled)
    assert torch.equal(got, want) and torch.equal(h_compiled, h_eager)


# -- loading: the extension, or one warning naming why not and a fallback ------------------------
# Run in a fresh interpreter: the public functions against the reference, out= included, and the
# errors the checks raise. Prints backend_info() as JSON on its last line.
SMOKE = """
import json, sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from compressors import kernels
from compressors.kernels import reference as ref
x, h = torch.randn(3000), torch.randn(3000)
h_ref = h.clone()
assert all(torch.equal(a, b) for a, b in zip(kernels.topk_abs(x, 30), ref.topk_abs(x, 30)))
assert all(torch.equal(a, b) for a, b in zip(kernels.ef21_topk_step(x, h, 30), ref.ef21_topk_step(x, h_ref, 30)))
assert torch.equal(h, h_ref)
out, want = torch.zeros(3000), torch.zeros(3000)
kernels.sparse_accumulate(out, x[:50], torch.arange(50) * 7, 0.5)
ref.sparse_accumulate(want, x[:50], torch.arange(50) * 7, 0.5)
assert torch.equal(out, want)
codes = torch.empty(3000, dtype=torch.uint8)
assert kernels.float_encode(x, 4, 3, 7, 0.5, 3, out=codes) is codes
assert torch.equal(codes, ref.float_encode(x, 4, 3, 7, 0.5, 3))
values = torch.empty(3000)
assert kernels.float_decode(codes, 4, 3, 7, 0.5, out=values) is values
assert torch.equal(values, ref.float_decode(codes, 4, 3, 7, 0.5))
out, want = x.clone(), x.clone()
kernels.float_accumulate(out, codes, 4, 3, 7, 0.5, -0.3)
ref.float_accumulate(want, codes, 4, 3, 7, 0.5, -0.3)
assert torch.equal(out, want)
table = (torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor([1, 2, 2], dtype=torch.uint8))
stream = kernels.huffman_encode(codes % 3, *table)
assert torch.equal(stream, ref.huffman_encode(codes % 3, *table))
assert torch.equal(kernels.huffman_decode(stream, 3000, *table), codes % 3)
freqs = torch.tensor([2, 1, 0, 1], dtype=torch.int32)
rans = kernels.rans_encode(codes % 2, freqs)
assert torch.equal(rans, ref.rans_encode(codes % 2, freqs))
assert torch.equal(kernels.rans_decode(rans, 3000, freqs), codes % 2)
for call, error in ((lambda: kernels.topk_abs(x, 3001), ValueError),
                    (lambda: kernels.float_encode(x, 4, 3, 7, out=codes[:5]), ValueError),
                    (lambda: kernels.float_encode(x / 0, 4, 3, 7), ValueError),
                    (lambda: kernels.float_accumulate(out[:5], codes, 4, 3, 7), ValueError),
                    (lambda: kernels.sparse_accumulate(out, x[:1], torch.tensor([3000])), IndexError),
                    (lambda: kernels.huffman_decode(stream[:5], 3000, *table), ValueError),
                    (lambda: kernels.rans_decode(rans[1:], 3000, freqs), ValueError)):
    try:
        call()
        sys.exit(f"no {error.__name__}")
    except error:
        pass
print(len(caught), *(str(w.message) for w in caught), sep="\\n")
print(json.dumps({**kernels.backend_info(), "_C_loaded": "compressors._C" in sys.modules}))
"""


def not_a_library(package: Path, torch_version: str) -> None:
    """Make ``package`` a package whose _C is not a shared library, recorded as built against torch_version."""
    (package / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")
    (package / "_C_build.json").write_text(json.dumps({"torch": torch_version, "cuda": True}))


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable package ``threepc_fake`` (empty but for what the test puts there)."""
    (tmp_path / "threepc_fake").mkdir()
    (tmp_path / "threepc_fake" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "threepc_fake"
    sys.modules.pop("threepc_fake", None)


def test_the_extension_is_checked_before_loading_and_a_failure_names_its_cause(fake_package):
    assert extension.load("threepc_fake._C") == \
        "threepc_fake._C is not built; build it with `pip install --no-build-isolation .` " \
        "(or `python setup.py build_ext --inplace`)"
    not_a_library(fake_package, "1.0.0")
    problem = extension.load("threepc_fake._C")
    assert f"threepc_fake._C was built against torch 1.0.0 but torch {torch.__version__} is running" in problem
    assert "rebuild it with" in problem and "threepc_fake._C" not in sys.modules, "loaded despite the mismatch"
    assert extension.build_info("threepc_fake._C") == {"torch": "1.0.0", "cuda": True}
    not_a_library(fake_package, torch.__version__)
    assert "threepc_fake._C failed to load: ImportError: " in extension.load("threepc_fake._C")
    (fake_package / "_C_build.json").unlink()
    assert "has no readable _C_build.json" in extension.load("threepc_fake._C")


def test_threepc_backend_must_name_a_backend(monkeypatch):
    monkeypatch.setenv("THREEPC_BACKEND", "cuda")
    with pytest.raises(ValueError, match="THREEPC_BACKEND='cuda' is not a backend; use one of ext, numba, torch"):
        kernels._select()


def run_smoke(root: Path, **env: str) -> tuple[list[str], dict]:
    """SMOKE in a fresh interpreter that imports compressors from ``root``: (warnings, backend_info())."""
    result = subprocess.run([sys.executable, "-c", SMOKE], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(root), "THREEPC_BACKEND": "", **env})
    assert result.returncode == 0, result.stderr[-3000:]
    *lines, info = result.stdout.strip().splitlines()
    return lines[1:1 + int(lines[0])], json.loads(info)


@pytest.mark.skipif("numba" not in IMPLS, reason="numba is not installed")
def test_when_the_extension_fails_to_load_numba_runs_after_one_warning_naming_the_cause(tmp_path):
    shutil.copytree(ROOT / "compressors", tmp_path / "compressors", ignore=shutil.ignore_patterns("*.so"))
    not_a_library(tmp_path / "compressors", torch.__version__)
    warned, info = run_smoke(tmp_path)
    assert len(warned) == 1, warned
    assert "compressors._C failed to load: ImportError: " in warned[0] and "Using the numba kernels" in warned[0]
    assert "rebuild it with `pip install --no-build-isolation .`" in warned[0]
    assert info["backend"] == "numba" and "ImportError" in info["reason"] and not info["_C_loaded"]
    assert info["extension_torch"] == torch.__version__ and info["cuda_backend"] == "torch"


def test_threepc_backend_forces_a_backend():
    warned, info = run_smoke(ROOT, THREEPC_BACKEND="torch")
    assert warned == [] and info["backend"] == "torch" and info["reason"] == "forced by THREEPC_BACKEND=torch"
    assert not info["_C_loaded"]


BAD_DTYPES = {  # op -> a call with a tensor of a dtype the op refuses
    "topk_abs": lambda ops: ops.topk_abs(torch.arange(5), 2),
    "float_decode": lambda ops: ops.float_decode(torch.zeros(3, dtype=torch.int8), 4, 3, 7, 1.0),
    "sparse_accumulate": lambda ops: ops.sparse_accumulate(torch.zeros(3, dtype=torch.float64), torch.ones(1),
                                                           torch.tensor([0])),
    "sparse_accumulate indices": lambda ops: ops.sparse_accumulate(torch.zeros(3), torch.ones(1),
                                                                   torch.tensor([0], dtype=torch.int16)),
    "rans_decode": lambda ops: ops.rans_decode(torch.zeros(8, dtype=torch.int8), 1,
                                               torch.tensor([1, 1], dtype=torch.int32)),
    "sign_residual": lambda ops: ops.sign_residual(torch.zeros(8, dtype=torch.float16), 4),
}


@pytest.mark.parametrize("call", list(BAD_DTYPES))
def test_every_backend_names_a_refused_dtype_in_the_same_words(call):
    """torch.float64 and torch.int8, as Python prints them (the extension said Double, Char)."""
    messages = {}
    for impl in ALL:
        with pytest.raises(TypeError) as caught:
            BAD_DTYPES[call](IMPLS[impl])
        messages[impl] = str(caught.value)
    assert len(set(messages.values())) == 1 and "torch." in messages[ALL[0]], messages
