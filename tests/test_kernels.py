"""Every kernel backend returns exactly what the plain-torch reference returns."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import kernels
from compressors.kernels import reference

BACKENDS = kernels.available_backends()
COMPILED = [b for b in BACKENDS if b != "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


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
    else:
        raise ValueError(kind)
    return x.to(dtype)


def assert_same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.view(torch.uint8) if g.is_floating_point() else g,
                           w.view(torch.uint8) if w.is_floating_point() else w), "bitwise mismatch"


def run(backend: str, fn, *args):
    with kernels.use_backend(backend):
        return getattr(kernels, fn)(*args)


KINDS = ["normal", "ties", "zeros", "scales", "constant"]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 10**6), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31))
def test_topk_abs_matches_reference(backend, n, k_frac, kind, seed):
    x = make(kind, n, seed)
    k = min(n, math.floor(k_frac * n))
    assert_same(run(backend, "topk_abs", x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (7, 7), (50_000, 1), (50_000, 50_000), (300_000, 3000)])
def test_topk_abs_extremes_of_k(backend, n, k):
    x = make("normal", n, n + k)
    assert_same(run(backend, "topk_abs", x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_abs_ties_go_to_the_lowest_index(backend):
    x = torch.tensor([1.0, -2.0, 2.0, -2.0, 1.0, 2.0])
    values, indices = run(backend, "topk_abs", x, 2)
    assert indices.tolist() == [1, 2] and values.tolist() == [-2.0, 2.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_abs_orders_nan_above_inf_and_signed_zeros_equal(backend):
    x = torch.tensor([0.0, -0.0, float("inf"), 1.0, float("nan"), -float("inf"), 0.0])
    values, indices = run(backend, "topk_abs", x, 3)
    assert indices.tolist() == [2, 4, 5]
    assert math.isnan(values[1]) and values[0] == math.inf and values[2] == -math.inf
    _, zero_idx = run(backend, "topk_abs", torch.tensor([-0.0, 0.0, -0.0]), 2)
    assert zero_idx.tolist() == [0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_abs_when_the_sample_overstates_the_largest_keys(backend):
    # The extension bounds the k-th key from runs of 32 keys at r * n / 512: make exactly those
    # keys large, so fewer than k survive its filter and it must fall back to a full select.
    n, k = 2**20, 20_000
    x = torch.ones(n)
    starts = torch.arange(512) * (n // 512)
    x[(starts[:, None] + torch.arange(32)).reshape(-1)] = 2.0
    assert_same(run(backend, "topk_abs", x, k), reference.topk_abs(x, k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "scales"])
def test_topk_abs_low_precision_inputs(backend, dtype, kind):
    x = make(kind, 40_000, 3, dtype)
    assert_same(run(backend, "topk_abs", x, 400), reference.topk_abs(x, 400))


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_abs_non_contiguous_and_multidimensional(backend):
    base = make("normal", 2 * 300 * 200, 5).view(2 * 300, 200)
    for x in (base[::2], base.t(), base[:, 3:150]):
        assert not x.is_contiguous()
        assert_same(run(backend, "topk_abs", x, 777), reference.topk_abs(x, 777))


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_abs_empty_input(backend):
    values, indices = run(backend, "topk_abs", torch.empty(0), 0)
    assert values.numel() == 0 and indices.numel() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300_000), k_frac=st.floats(0, 1), kind=st.sampled_from(KINDS),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_ef21_topk_step_matches_reference(backend, n, k_frac, kind, dtype, seed):
    grad = make(kind, n, seed, dtype)
    h = make("normal", n, seed + 1)
    k = min(n, math.floor(k_frac * n))
    h_ref = h.clone()
    want = reference.ef21_topk_step(grad, h_ref, k)
    got = run(backend, "ef21_topk_step", grad, h, k)
    assert_same(got, want)
    assert_same((h,), (h_ref,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ef21_topk_step_moves_the_estimate_onto_the_gradient_where_sent(backend):
    grad, h = torch.randn(10_000), torch.randn(10_000)
    before = h.clone()
    values, indices = run(backend, "ef21_topk_step", grad, h, 100)
    assert torch.allclose(h[indices], grad[indices])
    untouched = torch.ones(10_000, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(h[untouched], before[untouched])
    assert torch.equal(values, (grad - before)[indices])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 200_000), ranks=st.integers(1, 5), k_frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_sparse_accumulate_matches_reference(backend, index_dtype, n, ranks, k_frac, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(n, math.floor(k_frac * n))
    indices = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(ranks)]).to(index_dtype)
    values = torch.randn(ranks, k, generator=g)
    out = torch.randn(n, generator=g)
    alpha = 1.0 / ranks
    want = out.clone()
    reference.sparse_accumulate(want, values, indices, alpha)
    run(backend, "sparse_accumulate", out, values, indices, alpha)
    assert_same((out,), (want,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_accumulate_sums_each_coordinate_in_rank_order(backend):
    # 1e8 + 1 - 1e8 is 0 in fp32 left to right but 1 in other orders: the order is observable.
    out = torch.zeros(3)
    values = torch.tensor([[1e8, 5.0], [1.0, 6.0], [-1e8, 7.0]])
    indices = torch.tensor([[0, 2], [0, 2], [0, 2]])
    run(backend, "sparse_accumulate", out, values, indices, 1.0)
    assert out.tolist() == [0.0, 0.0, 18.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_reject_bad_arguments_with_the_fix(backend):
    with pytest.raises(ValueError, match=r"k must lie in \[0, numel\]"):
        run(backend, "topk_abs", torch.randn(10), 11)
    with pytest.raises(TypeError, match=r"cast it with \.float\(\)"):
        run(backend, "topk_abs", torch.randn(10, dtype=torch.float64), 1)
    with pytest.raises(TypeError, match="contiguous float32"):
        run(backend, "ef21_topk_step", torch.randn(10), torch.randn(20)[::2], 1)
    with pytest.raises(ValueError, match="grad has 10 elements but h has 11"):
        run(backend, "ef21_topk_step", torch.randn(10), torch.randn(11), 1)
    out = torch.zeros(5)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 5\)"):
        run(backend, "sparse_accumulate", out, torch.ones(2), torch.tensor([1, 5]))
    assert torch.equal(out, torch.zeros(5)), "a rejected call must not touch out"


pytestmark_ext = pytest.mark.skipif("ext" not in BACKENDS, reason="the C++ extension is not built")


@pytestmark_ext
def test_compiled_ops_check_their_arguments_too():
    with pytest.raises(RuntimeError, match="k must lie in"):
        torch.ops.threepc.topk_abs(torch.randn(4), 5)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.threepc.sparse_accumulate(torch.zeros(3), torch.ones(1), torch.tensor([3]), 1.0)


@pytestmark_ext
def test_opcheck_passes_for_every_op():
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


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), **env})


def test_without_the_extension_numba_runs_after_one_clear_warning():
    code = ("import sys, warnings; sys.modules['compressors._C'] = None\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from compressors import kernels\n"
            "print(kernels.get_backend(), len(caught), caught[0].message if caught else '')")
    result = _python(code, THREEPC_BACKEND="")
    assert result.returncode == 0, result.stderr
    backend, count, message = result.stdout.split(" ", 2)
    assert (backend, count) == ("numba", "1")
    assert "compressors._C is not importable" in message and "--no-build-isolation" in message


def test_threepc_backend_forces_a_backend_and_rejects_unknown_names():
    forced = _python("from compressors import kernels; print(kernels.get_backend())", THREEPC_BACKEND="torch")
    assert forced.stdout.strip() == "torch", forced.stderr
    bad = _python("import compressors.kernels", THREEPC_BACKEND="cuda")
    assert bad.returncode != 0 and "use one of ext, numba, torch" in bad.stderr
