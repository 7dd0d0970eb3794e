"""The adam_normalize and adam_momentum kernels (Adam's normalisation before compression, and
the momentum of the normalised gradient, in one pass). The reference
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

from compressors.kernels import checks, reference

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


def momentum_inputs(kind: str, n: int, seed: int, dtype: torch.dtype, per_entry: bool):
    g, m, v, c1, c2 = inputs(kind, n, seed, dtype, per_entry)
    return g, m, v, make("normal", n, seed + 3), c1, c2


def oracle(g, m, v, c1, c2, beta1, beta2, eps, share, u=None):
    """numpy float32 scalars: each product, sum, square root and quotient rounded once; with the
    momentum u: (m', v', u', u^)."""
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
    if u is None:
        return tuple(torch.from_numpy(o) for o in out)
    u_new = np.array([f(f(f(u[j].item()) * f(beta1)) + f(out[2][j] * f(1.0 - beta1))) for j in range(gs.size)],
                     dtype=np.float32)
    root = np.sqrt(c1.numpy().astype(np.float32))
    u_hat = np.array([f(u_new[j] * root[j if c1.numel() > 1 else 0]) for j in range(gs.size)], dtype=np.float32)
    return tuple(torch.from_numpy(o) for o in (out[0], out[1], u_new, u_hat))


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


@pytest.mark.parametrize("op", ["adam_normalize", "adam_momentum"])
@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 300_000), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       setting=st.sampled_from(SETTINGS), per_entry=st.booleans(), seed=st.integers(0, 2**31))
def test_the_kernels_match_reference(op, impl, n, kind, dtype, setting, per_entry, seed):
    args = (inputs if op == "adam_normalize" else momentum_inputs)(kind, n, seed, dtype, per_entry)
    before = [a.clone() for a in args]
    assert_same(getattr(IMPLS[impl], op)(*args, *setting), getattr(reference, op)(*args, *setting), nan_bits=False)
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


# -- adam_momentum: adam_normalize, then u' = beta1 u + (1 - beta1) d and u^ = u' sqrt(c1) -----------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       setting=st.sampled_from(SETTINGS), per_entry=st.booleans(), seed=st.integers(0, 2**31))
def test_reference_adam_momentum_matches_the_fp32_oracle(n, kind, dtype, setting, per_entry, seed):
    g, m, v, u, c1, c2 = momentum_inputs(kind, n, seed, dtype, per_entry)
    with np.errstate(all="ignore"):
        want = oracle(g, m, v, c1, c2, *setting, u=u)
    assert_same(reference.adam_momentum(g, m, v, u, c1, c2, *setting), want, nan_bits=False)


def test_reference_adam_momentum_is_the_docstring_formula_in_float64():
    """Away from rounding: u^ = (beta1 u + (1 - beta1) d) / (1 - beta1^k), with d adam_normalize's."""
    g, m, v, u = torch.randn(1000), torch.randn(1000), torch.rand(1000), torch.randn(1000)
    beta1, beta2, eps, k = 0.9, 0.99, 1e-8, 3
    c1, c2 = torch.tensor([1 / (1 - beta1 ** k) ** 2]), torch.tensor([1 / (1 - beta2 ** k)])
    _, _, d = reference.adam_normalize(g, m, v, c1, c2, beta1, beta2, eps, 0.25)
    u_new = beta1 * u.double() + (1 - beta1) * d.double()
    m_new, v_new, got_u, got_hat = reference.adam_momentum(g, m, v, u, c1, c2, beta1, beta2, eps, 0.25)
    torch.testing.assert_close(got_u.double(), u_new, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_hat.double(), u_new / (1 - beta1 ** k), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip((m_new, v_new), reference.adam_normalize(
        g, m, v, c1, c2, beta1, beta2, eps, 0.25)[:2]))


@pytest.mark.parametrize("impl", ALL)
def test_adam_momentum_rejects_bad_arguments_with_the_fix(impl):
    op, g, one = IMPLS[impl].adam_momentum, torch.randn(10), torch.ones(1)
    with pytest.raises(TypeError, match="adam_momentum: u must be a contiguous float32 tensor of grad's 10 elements"):
        op(g, g, g, torch.randn(20)[::2], one, one, 0.9, 0.999, 1e-8, 1.0)
    with pytest.raises(TypeError, match="adam_momentum: c1 must be a contiguous float32 tensor of 1 or 10 elements"):
        op(g, g, g, g, torch.ones(2), one, 0.9, 0.999, 1e-8, 1.0)
    with pytest.raises(ValueError, match="adam_momentum needs 0 <= beta1, beta2 < 1, eps >= 0 and 0 < share <= 1"):
        op(g, g, g, g, one, one, 0.9, 1.0, 1e-8, 1.0)


def test_the_out_variants_refuse_an_output_that_is_an_input_or_another_output():
    """Through the op (whichever backend serves it): the old states stay the round's rollback."""
    g, m, v, u, one = torch.randn(10), torch.randn(10), torch.rand(10), torch.randn(10), torch.ones(1)
    fresh, spare = [torch.empty(10) for _ in range(4)], torch.empty(11)
    for outs in ((u, *fresh[1:]), (fresh[0], fresh[0], *fresh[2:]), (*fresh[:3], g),
                 (*fresh[:2], spare[:10], spare[1:])):  # the last two overlap in 9 entries
        before = [t.clone() for t in (g, m, v, u)]
        with pytest.raises(ValueError, match="adam_momentum: the outputs must be new buffers that overlap neither"):
            torch.ops.threepc.adam_momentum.out(g, m, v, u, one, one, 0.9, 0.999, 1e-8, 1.0, m_new=outs[0],
                                                v_new=outs[1], u_new=outs[2], u_hat=outs[3])
        assert all(torch.equal(a, b) for a, b in zip((g, m, v, u), before))
        with pytest.raises(ValueError, match="adam_momentum: the outputs must be new buffers that overlap neither"):
            checks.new_outputs("adam_momentum", g, (m, v, u), dict(zip(("m_new", "v_new", "u_new", "u_hat"), outs)))
    with pytest.raises(ValueError, match="adam_normalize: the outputs must be new buffers that overlap neither"):
        torch.ops.threepc.adam_normalize.out(g, m, v, one, one, 0.9, 0.999, 1e-8, 1.0, m_new=m, v_new=fresh[1],
                                             d=fresh[2])
    with pytest.raises(ValueError, match="adam_momentum: u_hat must be a contiguous float32 tensor of 10 elements"):
        torch.ops.threepc.adam_momentum.out(g, m, v, u, one, one, 0.9, 0.999, 1e-8, 1.0, m_new=fresh[0],
                                            v_new=fresh[1], u_new=fresh[2], u_hat=torch.empty(20)[::2])


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_adam_momentum():
    g, m, v, u = torch.randn(5000), torch.randn(5000), torch.rand(5000), torch.randn(5000)
    torch.library.opcheck(torch.ops.threepc.adam_momentum.default,
                          (g, m, v, u, torch.rand(5000) + 1, torch.ones(1), 0.9, 0.999, 1e-8, 0.5))
