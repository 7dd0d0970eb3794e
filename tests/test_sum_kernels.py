"""The float64 sums in a fixed order: ``squared_distances`` (||x - o||^2 for the lazy triggers),
``abs_moments`` (CO3's GenNorm fit) and ``momentum_compensate`` (ef14_mc's update, written while
it sums). The reference against an independent numpy oracle of the order it specifies and against
the exactly rounded sum; ext and numba bit for bit against the reference on random and
adversarial inputs; bad arguments; opcheck."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import ALL, DTYPES, IMPLS, KINDS, OTHERS, assert_same, make

from compressors.kernels import checks, reference

BLOCK, LANES = checks.SUM_BLOCK, checks.SUM_LANES
EDGES = [0, 1, LANES - 1, LANES, LANES + 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17]


def oracle(x: torch.Tensor, o: torch.Tensor) -> float:
    """||x - o||^2 in the docstring's order: fp32 differences, float64 squares, ``ordered``."""
    d = (x.reshape(-1).float().numpy() - o.reshape(-1).float().numpy()).astype(np.float64)
    return ordered(d * d)


def moments_oracle(x: torch.Tensor) -> list[float]:
    v = x.reshape(-1).float().numpy().astype(np.float64)
    return [ordered((v != 0).astype(np.float64)), ordered(np.abs(v)), ordered(v * v)]


def ordered(terms: np.ndarray) -> float:
    """The docstring's order in numpy, one explicit loop per level: lanes row by row, lanes left
    to right, blocks left to right."""
    blocks = max(1, -(-terms.size // BLOCK))
    rows = np.zeros(blocks * BLOCK)
    rows[:terms.size] = terms
    rows = rows.reshape(blocks, BLOCK // LANES, LANES)
    lanes = np.zeros((blocks, LANES))
    for r in range(rows.shape[1]):
        lanes += rows[:, r, :]
    sums = lanes[:, 0].copy()
    for j in range(1, LANES):
        sums += lanes[:, j]
    total = 0.0
    for s in sums:
        total += s
    return total


def pair(kind: str, n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return make(kind, n, seed, dtype), make("normal", n, seed + 1) * 3


@pytest.mark.parametrize("n", EDGES)
@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_the_oracle_of_its_order(n, kind):
    x, o = pair(kind, n, n, torch.float32)
    got = reference.squared_distances(x, [o])
    want = oracle(x, o)
    assert got.dtype == torch.float64 and got.shape == (1,)
    assert got.item() == want or (math.isnan(want) and math.isnan(got.item()))
    moments = reference.abs_moments(x)
    assert moments.dtype == torch.float64 and moments.shape == (3,)
    assert_same((moments,), (torch.tensor(moments_oracle(x), dtype=torch.float64),), nan_bits=False)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 4 * BLOCK), seed=st.integers(0, 2**31), scale=st.sampled_from([1e-30, 1.0, 1e30]))
def test_reference_is_within_the_float64_bound_of_the_exact_sum(n, seed, scale):
    x, o = pair("normal", n, seed, torch.float32)
    x, o = x * scale, o * scale
    d = (x - o).double()  # the fp32 difference, exactly widened
    exact = math.fsum((d * d).tolist())  # squares exact in float64, sum correctly rounded
    got = reference.squared_distances(x, [o]).item()
    assert abs(got - exact) <= max(n, 1) * 2.0 ** -52 * exact
    count, magnitudes, squares = reference.abs_moments(x).tolist()
    v = x.double()
    assert count == int(torch.count_nonzero(x))
    for got, exact in ((magnitudes, math.fsum(v.abs().tolist())), (squares, math.fsum((v * v).tolist()))):
        assert abs(got - exact) <= max(n, 1) * 2.0 ** -52 * exact


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("n", EDGES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_match_the_reference_bit_for_bit(impl, n, dtype):
    for kind in KINDS:
        x, o = pair(kind, n, n + 7, dtype)
        others = [o, make(kind, n, n + 9, torch.bfloat16), x, torch.zeros(n)]  # mixed dtypes, itself, zeros
        want = reference.squared_distances(x, others)
        assert_same((IMPLS[impl].squared_distances(x, others),), (want,), nan_bits=False)
        assert_same((IMPLS[impl].abs_moments(x),), (reference.abs_moments(x),), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 300_000), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31))
def test_the_kernels_match_the_reference_on_random_sizes(impl, n, kind, seed):
    x, o = pair(kind, n, seed, torch.float32)
    assert_same((IMPLS[impl].squared_distances(x, [o, x.flip(0)]),), (reference.squared_distances(x, [o, x.flip(0)]),),
                nan_bits=False)
    assert_same((IMPLS[impl].abs_moments(o),), (reference.abs_moments(o),))


@pytest.mark.parametrize("impl", ALL)
def test_non_contiguous_and_shaped_inputs_read_as_flat(impl):
    x, o = torch.randn(300, 400), torch.randn(400, 300).t()  # o non-contiguous
    got = IMPLS[impl].squared_distances(x, [o, x[:, ::2].repeat(1, 2)])
    want = reference.squared_distances(x.reshape(-1), [o.contiguous().reshape(-1), x[:, ::2].repeat(1, 2).reshape(-1)])
    assert_same((got,), (want,))
    assert_same((IMPLS[impl].abs_moments(o),), (reference.abs_moments(o.contiguous().reshape(-1)),))


@pytest.mark.parametrize("impl", ALL)
def test_nan_gives_nan_and_an_overflowing_difference_gives_inf(impl):
    x = torch.zeros(BLOCK + 5)
    nan, big = x.clone(), x.clone()
    nan[BLOCK + 3] = math.nan
    big[7] = 3e38
    got = IMPLS[impl].squared_distances(x, [nan, big, -big, x])
    assert math.isnan(got[0]) and got[1].item() == big[7].item() ** 2 == got[2].item() and got[3].item() == 0.0
    inf = IMPLS[impl].squared_distances(big, [-big])  # 6e38 overflows fp32: the difference is inf
    assert inf.item() == math.inf
    count, magnitudes, squares = IMPLS[impl].abs_moments(nan).tolist()  # a NaN counts as non-zero
    assert count == 1 and math.isnan(magnitudes) and math.isnan(squares)
    assert IMPLS[impl].abs_moments(big).tolist() == [1.0, big[7].item(), big[7].item() ** 2]
    assert IMPLS[impl].abs_moments(torch.tensor([-0.0, 0.0])).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("impl", ALL)
def test_the_ordered_sums_reject_bad_arguments_with_the_fix(impl):
    op, x = IMPLS[impl].squared_distances, torch.randn(10)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        op(x.double(), [x])
    with pytest.raises(TypeError, match=r"others\[1\] must be float32, float16 or bfloat16"):
        op(x, [x, x.long()])
    with pytest.raises(ValueError, match=r"x has 10 elements but others\[0\] has 11"):
        op(x, [torch.randn(11)])
    assert op(x, []).shape == (0,)
    with pytest.raises(TypeError, match="abs_moments: x must be float32, float16 or bfloat16"):
        IMPLS[impl].abs_moments(x.long())


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_the_ordered_sums():
    x = torch.randn(70_000)
    torch.library.opcheck(torch.ops.threepc.squared_distances.default, (x, [torch.randn(70_000), x.half()]))
    torch.library.opcheck(torch.ops.threepc.abs_moments.default, (x,))


# -- momentum_compensate: ef14_mc's update and the two sums its clipping estimate reads -----------
def compensate_inputs(kind: str, n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """grad of ``kind`` in ``dtype``, the momentum u and the error e (fp32)."""
    return make(kind, n, seed, dtype), make("normal", n, seed + 1) * 5, make("scales", n, seed + 2)


def compensated_by(impl, grad, u, e, beta, gain, carry=1.0):  # noqa: ANN001, ANN201 - any implementation's module
    u_new, v = torch.full_like(u, math.nan), torch.full_like(e, math.nan)
    sums = impl.momentum_compensate(grad, u, e, beta, gain, carry, u_new=u_new, v=v)
    return u_new, v, sums


@pytest.mark.parametrize("n", EDGES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta, gain, carry", [(0.9, 1.0, 1.0), (0.0, 0.37, 1.7), (0.99, 3.0, 0.3)])
def test_momentum_compensate_reference_matches_the_numpy_oracle(n, kind, beta, gain, carry):
    grad, u, e = compensate_inputs(kind, n, n + 3, torch.float32)
    u_new, v, sums = compensated_by(reference, grad, u, e, beta, gain, carry)
    g, un = grad.numpy(), u.numpy()
    gd = g.astype(np.float64)
    with np.errstate(all="ignore"):  # the specials' inf - inf
        momentum = np.float32(beta) * un + np.float32(gain) * g  # fp32 products, then their fp32 sum
        want_v = np.float32(carry) * e.numpy() + momentum
        want = torch.tensor([ordered(gd * gd), ordered(un.astype(np.float64) * gd)], dtype=torch.float64)
    assert_same((u_new, v), (torch.from_numpy(momentum), torch.from_numpy(want_v)), nan_bits=False)
    assert_same((sums,), (want,), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@pytest.mark.parametrize("n", EDGES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_compensate_matches_the_reference_bit_for_bit(impl, n, dtype):
    for kind in KINDS:
        for beta, gain, carry in ((0.9, 1.0, 1.0), (0.5, 0.123, 1.31)):
            grad, u, e = compensate_inputs(kind, n, n + 11, dtype)
            assert_same(compensated_by(IMPLS[impl], grad, u, e, beta, gain, carry),
                        compensated_by(reference, grad, u, e, beta, gain, carry), nan_bits=False)


@pytest.mark.parametrize("impl", OTHERS)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 300_000), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31),
       beta=st.floats(0.0, 0.999), gain=st.floats(0.0, 10.0), carry=st.floats(0.0, 100.0))
def test_momentum_compensate_matches_the_reference_on_random_sizes(impl, n, kind, seed, beta, gain, carry):
    grad, u, e = compensate_inputs(kind, n, seed, torch.float32)
    assert_same(compensated_by(IMPLS[impl], grad, u, e, beta, gain, carry),
                compensated_by(reference, grad, u, e, beta, gain, carry), nan_bits=False)


@pytest.mark.parametrize("impl", ALL)
def test_momentum_compensate_with_carry_one_leaves_the_error_exact(impl):
    """carry = 1 (no learning-rate change) writes the bits of v = e + u', the step before carry existed."""
    grad, u, e = compensate_inputs("specials", 70_001, 5, torch.float32)
    u_new, v, _ = compensated_by(IMPLS[impl], grad, u, e, 0.9, 0.7)
    with np.errstate(all="ignore"):
        want = e.numpy() + u_new.numpy()
    assert_same((v,), (torch.from_numpy(want),), nan_bits=False)


@pytest.mark.parametrize("impl", ALL)
def test_momentum_compensate_reads_a_shaped_non_contiguous_grad_as_flat(impl):
    grad, u, e = torch.randn(400, 300).t(), torch.randn(120_000), torch.randn(120_000)
    assert_same(compensated_by(IMPLS[impl], grad, u, e, 0.9, 0.7),
                compensated_by(reference, grad.contiguous().reshape(-1), u, e, 0.9, 0.7))


@pytest.mark.parametrize("impl", ALL)
def test_momentum_compensate_rejects_bad_arguments_with_the_fix_and_writes_nothing(impl):
    op, grad, u, e = IMPLS[impl].momentum_compensate, torch.randn(10), torch.randn(10), torch.randn(10)
    u_new, v = torch.zeros(10), torch.zeros(10)
    cases = [
        (TypeError, "grad must be float32, float16 or bfloat16", (grad.double(), u, e, 0.9, 1.0), {}),
        (TypeError, "u must be a contiguous float32 tensor of grad's 10 elements", (grad, u.half(), e, 0.9, 1.0), {}),
        (TypeError, "e must be a contiguous float32 tensor of grad's 10 elements", (grad, u, torch.zeros(11), 0.9, 1.0),
         {}),
        (ValueError, r"0 <= beta < 1, a finite gain >= 0 and a finite carry >= 0, got beta=1(\.0)?,",
         (grad, u, e, 1.0, 1.0), {}),
        (ValueError, "gain=nan", (grad, u, e, 0.9, math.nan), {}),
        (ValueError, r"gain=-1(\.0)?,", (grad, u, e, 0.9, -1.0), {}),
        (ValueError, "carry=inf", (grad, u, e, 0.9, 1.0, math.inf), {}),
        (ValueError, r"carry=-0\.5", (grad, u, e, 0.9, 1.0, -0.5), {}),
        (ValueError, "u_new must be a contiguous float32 tensor of 10 elements", (grad, u, e, 0.9, 1.0),
         {"u_new": torch.zeros(9)}),
        (ValueError, "overlap neither each other nor grad or a state", (grad, u, e, 0.9, 1.0), {"v": e}),
        (ValueError, "overlap neither each other nor grad or a state", (grad, u, e, 0.9, 1.0), {"v": u_new}),
    ]
    for error, message, args, outputs in cases:
        with pytest.raises(error, match=message):
            op(*args, **({"u_new": u_new, "v": v} | outputs))
        assert not u_new.any() and not v.any()


@pytest.mark.skipif("ext" not in IMPLS, reason="the C++ extension does not serve the ops")
def test_opcheck_passes_for_momentum_compensate():
    grad, u, e = torch.randn(70_000), torch.randn(70_000), torch.randn(70_000)
    torch.library.opcheck(torch.ops.threepc.momentum_compensate.default, (grad.half(), u, e, 0.9, 0.5, 1.25),
                          {"u_new": torch.empty(70_000), "v": torch.empty(70_000)})
