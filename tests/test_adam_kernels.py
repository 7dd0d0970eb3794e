"""The adam_normalize kernel (Adam's normalisation before compression in one pass). The reference
is held to a float64 oracle that rounds each operation to fp32 (numpy), and to the formulas of
``AdamNormalized``'s docstring; every other implementation here (the C++ extension, numba) must
return exactly what the reference returns (any NaN counts as one); every implementation raises
the same argument errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import ALL, DTYPES, IMPLS, KINDS, OTHERS, assert_same, make

from compressors.kernels import reference

SETTINGS = [(0.9, 0.999, 1e-8, 1.0), (0.9, 0.95, 0.0, 0.25), (0.0, 0.99, 1e-6, 1 / 3), (0.5, 0.0, 1e-3, 0.5)]


def inputs(kind: str, n: int, seed: int, dtype: torch.dtype, per_entry: bool):
    g = make(kind, n, seed, dtype)
    m = make("normal", n, seed + 1)
    v = make("scales", n, seed + 2).abs().nan_to_num(0.0, 1e30, 0.0)
    if per_entry and n > 1:
        c1, c2 = torch.rand(n) * 100 + 1, torch.rand(n) * 10 + 1
    else:
        c1, c2 = torch.tensor([1.0 / 0.19 ** 2]), torch.tensor([1.0 / 0.0199])
    return g, m, v, c1, c2


def oracle(g, m, v, c1, c2, beta1, beta2, eps, share):
    """numpy float32 scalars: each product, sum, square root and quotient rounded once."""
    f = np.float32
    gs = g.float().numpy()
    out = [np.empty(gs.size, np.float32) for _ in range(3)]
    for j in range(gs.size):
        x = gs[j]
        mj = f(f(m[j].item()) * f(beta1)) + f(x * f(1.0 - beta1))
        vj = f(f(v[j].item()) * f(beta2)) + f(f(x * x) * f(1.0 - beta2))
        w = f(vj * f(c2[j if c2.numel() > 1 else 0].item()))
        if share < 1.0:
            s = f(f(mj * mj) * f(c1[j if c1.numel() > 1 else 0].item()))
            s = w if (np.isnan(w) or w < s) else s
            w = f(f(w * f(share)) + f(s * f(1.0 - share)))
        den = f(np.sqrt(w) + f(eps))
        out[0][j], out[1][j], out[2][j] = mj, vj, f(0.0) if den == 0 else f(x / den)
    return tuple(torch.from_numpy(o) for o in out)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       setting=st.sampled_from(SETTINGS), per_entry=st.booleans(), seed=st.integers(0, 2**31))
def test_reference_adam_normalize_matches_the_fp32_oracle(n, kind, dtype, setting, per_entry, seed):
    args = inputs(kind, n, seed, dtype, per_entry)
    with np.errstate(all="ignore"):
        want = oracle(*args, *setting)
    assert_same(reference.adam_normalize(*args, *setting), want, nan_bits=False)


def test_reference_adam_normalize_is_the_docstring_formula_in_float64():
    """Away from rounding: m', v', the mean-of-ranks mix and d as AdamNormalized documents them."""
    g, m, v = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64), torch.rand(1000).double()
    beta1, beta2, eps, n = 0.9, 0.99, 1e-8, 4
    c1, c2 = 1 / (1 - beta1 ** 3) ** 2, 1 / (1 - beta2 ** 3)
    m_new, v_new = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
    s = torch.minimum(m_new ** 2 * c1, v_new * c2)
    d = g / ((s + (v_new * c2 - s) / n).sqrt() + eps)
    got = reference.adam_normalize(g.float(), m.float(), v.float(), torch.tensor([c1], dtype=torch.float32),
                                   torch.tensor([c2], dtype=torch.float32), beta1, beta2, eps, 1 / n)
    for a, b in zip(got, (m_new, v_new, d)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_a_zero_denominator_gives_a_zero_step_not_a_nan():
    zero = torch.zeros(3)
    m_new, v_new, d = reference.adam_normalize(zero, zero, zero, torch.ones(1), torch.ones(1), 0.9, 0.999, 0.0, 1.0)
    assert torch.equal(d, zero) and torch.equal(m_new, zero) and torch.equal(v_new, zero)


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300_000), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       setting=st.sampled_from(SETTINGS), per_entry=st.booleans(), seed=st.integers(0, 2**31))
def test_adam_normalize_matches_reference(impl, n, kind, dtype, setting, per_entry, seed):
    args = inputs(kind, n, seed, dtype, per_entry)
    before = [a.clone() for a in args]
    assert_same(IMPLS[impl].adam_normalize(*args, *setting), reference.adam_normalize(*args, *setting),
                nan_bits=False)
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(args, before)), "inputs are not written"


@pytest.mark.parametrize("impl", ALL)
def test_adam_normalize_rejects_bad_arguments_with_the_fix(impl):
    op, g, one = IMPLS[impl].adam_normalize, torch.randn(10), torch.ones(1)
    with pytest.raises(TypeError, match="grad must be float32, float16 or bfloat16"):
        op(g.double(), g, g, one, one, 0.9, 0.999, 1e-8, 1.0)
    with pytest.raises(TypeError, match="v must be a contiguous float32 tensor of grad's 10 elements"):
        op(g, g, torch.randn(20)[::2], one, one, 0.9, 0.999, 1e-8, 1.0)
    with pytest.raises(TypeError, match="c2 must be a contiguous float32 tensor of 1 or 10 elements"):
        op(g, g, g, one, torch.ones(3), 0.9, 0.999, 1e-8, 1.0)
    with pytest.raises(ValueError, match="needs 0 <= beta1, beta2 < 1, eps >= 0 and 0 < share <= 1"):
        op(g, g, g, one, one, 1.0, 0.999, 1e-8, 1.0)
    with pytest.raises(ValueError, match="needs 0 <= beta1, beta2 < 1, eps >= 0 and 0 < share <= 1"):
        op(g, g, g, one, one, 0.9, 0.999, 1e-8, 0.0)


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_adam_normalize():
    g, m, v = torch.randn(5000), torch.randn(5000), torch.rand(5000)
    torch.library.opcheck(torch.ops.threepc.adam_normalize.default,
                          (g, m, v, torch.ones(1), torch.rand(5000) + 1, 0.9, 0.999, 1e-8, 0.5))
