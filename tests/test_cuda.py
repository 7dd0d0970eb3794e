"""The CUDA kernels (csrc/cuda/). Everywhere nvcc is installed: every .cu compiles for sm_90 (so
CUDA code cannot rot on CPU-only CI). On a GPU with the extension built for it: every op gives the
reference's result (on CPU copies) bit for bit, on the inputs the CPU kernel tests use, passes
opcheck, and DDP trains with CUDA tensors on gloo."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from test_kernels import DTYPES, KINDS, assert_same, make
from torch.utils.cpp_extension import CUDA_HOME, include_paths

from compressors import FloatFormat, kernels
from compressors.codecs.huffman import HuffmanTable
from compressors.kernels import reference

ROOT = Path(__file__).resolve().parent.parent
CU_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc") or (str(Path(CUDA_HOME, "bin", "nvcc")) if CUDA_HOME else None)
ON_GPU = torch.cuda.is_available() and kernels.backend_info()["cuda_backend"] == "ext"
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU and the extension built with CUDA (setup.py)")


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", CU_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    # A CPU torch ships the c10/cuda headers but not the generated cuda_cmake_macros.h, which
    # only matters on Windows; the define skips it.
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    command = [NVCC, "-c", "-std=c++20", "-O3", "-arch=sm_90", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
               "-diag-suppress=3306", *includes, str(source), "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-6000:]


def on_both(fn: str, *args):
    """``reference.fn`` on CPU copies and ``kernels.fn`` (the CUDA kernel) on CUDA copies of the tensor arguments."""
    cpu = getattr(reference, fn)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    cuda = getattr(kernels, fn)(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    return cpu, cuda


def to_cpu(result):
    return tuple(t.cpu() for t in result) if isinstance(result, tuple) else result.cpu()


@gpu
@pytest.mark.parametrize("n", [0, 1, 2, 1000, 4097, 1_000_003])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_abs_and_ef21_step_match_the_reference(n, kind, dtype):
    x = make(kind, n, seed=n, dtype=dtype)
    for k in sorted({0, min(n, 1), n // 100, n}):
        cpu, cuda = on_both("topk_abs", x, k)
        assert_same(to_cpu(cuda), cpu)
        h = make("normal", n, seed=n + 1)
        h_cuda = h.cuda()
        want = reference.ef21_topk_step(x, h, k)
        assert_same(to_cpu(kernels.ef21_topk_step(x.cuda(), h_cuda, k)), want)
        assert_same((h_cuda.cpu(),), (h,))


@gpu
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_topk_abs_matches_the_reference_on_a_bucket(kind):
    x = make(kind, 6_500_000, seed=1)  # one 25 MB DDP bucket
    cpu, cuda = on_both("topk_abs", x, 65_000)
    assert_same(to_cpu(cuda), cpu)


@gpu
def test_topk_abs_ties_nan_and_non_contiguous_inputs_match_the_reference():
    x = torch.tensor([1.0, -3.0, 3.0, float("nan"), float("inf"), -0.0, 0.0, 3.0] * 1000)
    for k in (1, 2, 3, 999, 2500, 8000):
        cpu, cuda = on_both("topk_abs", x, k)
        assert_same(to_cpu(cuda), cpu)
    grid = torch.randn(300, 301)[:, ::3]
    assert_same(to_cpu(kernels.topk_abs(grid.cuda(), 77)), reference.topk_abs(grid, 77))


@gpu
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_sparse_accumulate_matches_the_reference_in_rank_order(index_dtype):
    g = torch.Generator().manual_seed(0)
    for n, m in ((10, 1000), (1_000_000, 40_000), (5, 0)):
        out = torch.randn(n, generator=g)
        values = torch.randn(m, generator=g) * torch.exp2(torch.randint(-30, 30, (m,), generator=g).float())
        indices = torch.randint(0, n, (m,), generator=g, dtype=index_dtype)  # many duplicates
        out_cuda = out.cuda()
        reference.sparse_accumulate(out, values, indices, 0.25)
        kernels.sparse_accumulate(out_cuda, values.cuda(), indices.cuda(), 0.25)
        assert_same((out_cuda.cpu(),), (out,))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 5\), got \[0, 5\]"):  # checked on the host
        kernels.sparse_accumulate(torch.zeros(5, device="cuda"), torch.ones(2, device="cuda"),
                                  torch.tensor([0, 5], device="cuda", dtype=index_dtype))


@gpu
@pytest.mark.parametrize("fmt", ["fp8-152", "fp8-143-b10", "fp8-143", "fp4-121"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_float_conversion_matches_the_reference(fmt, dtype):
    f = FloatFormat.parse(fmt)
    for kind in (k for k in KINDS if k != "specials"):  # finite inputs
        v = make(kind, 100_003, seed=3, dtype=dtype)
        for seed in (None, 12345):
            want = reference.float_encode(v, f.exponent, f.mantissa, f.bias, 0.37, -1 if seed is None else seed)
            assert torch.equal(kernels.float_encode(v.cuda(), f.exponent, f.mantissa, f.bias, 0.37, seed).cpu(), want)
    codes = torch.arange(256, dtype=torch.uint8).repeat(50)
    cpu, cuda = on_both("float_decode", codes, f.exponent, f.mantissa, f.bias, 0.37)
    assert_same((cuda.cpu(),), (cpu,))
    out = torch.empty(codes.numel(), device="cuda")
    assert kernels.float_decode(codes.cuda(), f.exponent, f.mantissa, f.bias, 0.37, out=out) is out
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.float_encode(torch.tensor([1.0, float("nan")], device="cuda"), f.exponent, f.mantissa, f.bias)


@gpu
def test_huffman_on_cuda_tensors_gives_the_reference_stream():
    symbols = (torch.randn(1_000_000) * 20).round().clamp(-128, 127).to(torch.int16).add(128).to(torch.uint8)
    table = HuffmanTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0)
    cpu, cuda = on_both("huffman_encode", symbols, table.codes, table.lengths)
    assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu)
    decoded = kernels.huffman_decode(cuda, symbols.numel(), table.codes.cuda(), table.lengths.cuda())
    assert decoded.is_cuda and torch.equal(decoded.cpu(), symbols)


@gpu
def test_opcheck_passes_for_the_cuda_ops():
    ops = torch.ops.threepc
    x, codes = torch.randn(5000, device="cuda"), torch.randint(0, 256, (5000,), dtype=torch.uint8, device="cuda")
    torch.library.opcheck(ops.topk_abs.default, (x, 50))
    torch.library.opcheck(ops.ef21_topk_step.default, (x, torch.randn(5000, device="cuda"), 50))
    torch.library.opcheck(ops.sparse_accumulate.default, (torch.zeros(5000, device="cuda"), x[:100],
                                                          torch.randint(0, 5000, (100,), device="cuda"), 0.5))
    torch.library.opcheck(ops.float_encode.default, (x, 5, 2, 15, 0.5, 3))
    torch.library.opcheck(ops.float_decode.out, (codes, 5, 2, 15, 0.5), {"out": torch.empty(5000, device="cuda")})


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("hook", ["ef21", "co3", "clag"])
def test_ddp_trains_with_cuda_tensors_on_gloo(hook):
    from ddp_hooks.testbed import TrainConfig, train  # the ranks share the one GPU

    options = {"co3": {"fmt": "fp8-152", "coder": "huffman", "scale": "gennorm"}, "clag": {"ratio": 0.01}}
    results = train(TrainConfig(hook=hook, epochs=1, device="cuda", options=options.get(hook)))
    cpu = train(TrainConfig(hook=hook, epochs=1, options=options.get(hook)))
    for r in results:
        assert r["params_identical"] and r["estimate_replica_max_diff"] == 0.0
    assert abs(results[0]["final_accuracy"] - cpu[0]["final_accuracy"]) < 0.01
