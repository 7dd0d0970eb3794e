"""The CUDA kernels (csrc/cuda/). Everywhere nvcc is installed: every .cu compiles for sm_90 (so
CUDA code cannot rot on CPU-only CI). On a GPU with the extension built for it: every op gives the
reference's result (on CPU copies) bit for bit, on the inputs the CPU kernel tests use, passes
opcheck, and DDP trains with CUDA tensors on gloo. The tests parametrized by ``device`` also run
on the CPU (the CPU kernels), so their inputs and checks are exercised without a GPU."""
from __future__ import annotations

import math
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from test_codecs import every_16bit_value, finite
from test_kernels import DTYPES, KINDS, assert_same, make
from torch.utils.cpp_extension import CUDA_HOME, include_paths

from compressors import FloatFormat, kernels
from compressors.codecs.huffman import HuffmanTable
from compressors.codecs.rans import RansTable
from compressors.kernels import reference

ROOT = Path(__file__).resolve().parent.parent
CU_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc") or (str(Path(CUDA_HOME, "bin", "nvcc")) if CUDA_HOME else None)
ON_GPU = torch.cuda.is_available() and kernels.backend_info()["cuda_backend"] == "ext"
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU and the extension built with CUDA (setup.py)")
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", CU_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    # A CPU torch ships the c10/cuda headers but not the generated cuda_cmake_macros.h, which
    # only matters on Windows; the define skips it. -O0 is the host compiler's level (its compile
    # took 30 s of 81 at -O3, 21 s at -O0: ``nvcc --time``; it rejects nothing more); the device code still goes through cicc and ptxas.
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    command = [NVCC, "-c", "-std=c++20", "-O0", "-arch=sm_90", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
               "-diag-suppress=3306", *includes, str(source), "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-6000:]


def on_both(fn: str, *args, device: str = "cuda"):
    """``reference.fn`` on CPU copies and ``kernels.fn`` (the kernel) on ``device`` copies of the tensor arguments."""
    cpu = getattr(reference, fn)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    other = getattr(kernels, fn)(*(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))
    return cpu, other


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
        # a GPU's arithmetic returns one canonical NaN (a CPU's keeps the operand's sign and payload)
        assert_same(to_cpu(kernels.ef21_topk_step(x.cuda(), h_cuda, k)), want, nan_bits=False)
        assert_same((h_cuda.cpu(),), (h,), nan_bits=False)


@gpu
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_topk_abs_matches_the_reference_on_a_bucket(kind):
    x = make(kind, 6_500_000, seed=1)  # one 25 MB DDP bucket
    cpu, cuda = on_both("topk_abs", x, 65_000)
    assert_same(to_cpu(cuda), cpu)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_abs_and_ef21_step_on_every_16bit_value_match_the_reference(device, dtype):
    """Every bit pattern, NaN payloads included: the widening to fp32 must match the CPU's."""
    x = every_16bit_value(dtype)[torch.randperm(2**16, generator=torch.Generator().manual_seed(0))]
    h = make("normal", x.numel(), seed=1)
    for k in (1, 100, 2000, 40_000):
        cpu, other = on_both("topk_abs", x, k, device=device)
        assert_same(to_cpu(other), cpu)
        h_other = h.to(device, copy=True)  # updated in place
        got = kernels.ef21_topk_step(x.to(device), h_other, k)  # NaNs out of arithmetic: see above
        assert_same(to_cpu(got), reference.ef21_topk_step(x, h, k), nan_bits=False)
        assert_same((h_other.cpu(),), (h,), nan_bits=False)


@gpu
def test_topk_abs_ties_nan_and_non_contiguous_inputs_match_the_reference():
    x = torch.tensor([1.0, -3.0, 3.0, float("nan"), float("inf"), -0.0, 0.0, 3.0] * 1000)
    for k in (1, 2, 3, 999, 2500, 8000):
        cpu, cuda = on_both("topk_abs", x, k)
        assert_same(to_cpu(cuda), cpu)
    grid = torch.randn(300, 301)[:, ::3]
    assert_same(to_cpu(kernels.topk_abs(grid.cuda(), 77)), reference.topk_abs(grid, 77))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_sparse_accumulate_matches_the_reference_in_rank_order(index_dtype, device):
    g = torch.Generator().manual_seed(0)
    for n, m in ((10, 1000), (1_000_000, 40_000), (5, 0)):
        out = torch.randn(n, generator=g)
        values = torch.randn(m, generator=g) * torch.exp2(torch.randint(-30, 30, (m,), generator=g).float())
        indices = torch.randint(0, n, (m,), generator=g, dtype=index_dtype)  # many duplicates
        out_other = out.to(device, copy=True)  # updated in place
        reference.sparse_accumulate(out, values, indices, 0.25)
        kernels.sparse_accumulate(out_other, values.to(device), indices.to(device), 0.25)
        assert_same((out_other.cpu(),), (out,))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 5\), got \[0, 5\]"):  # checked on the host
        kernels.sparse_accumulate(torch.zeros(5, device=device), torch.ones(2, device=device),
                                  torch.tensor([0, 5], device=device, dtype=index_dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["fp8-152", "fp8-143-b10", "fp8-143", "fp4-121"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_float_conversion_matches_the_reference(fmt, dtype, device):
    f = FloatFormat.parse(fmt)
    inputs = [finite(make(kind, 100_003, seed=3, dtype=dtype)) for kind in KINDS]  # "scales" overflows fp16
    if dtype != torch.float32:  # every value v / 0.37 keeps finite in fp32 (it leaves fp16's range)
        inputs.append(every_16bit_value(dtype, below=1e38))
    for v in inputs:
        for seed in (None, 12345):
            want = reference.float_encode(v, f.exponent, f.mantissa, f.bias, 0.37, -1 if seed is None else seed)
            assert torch.equal(kernels.float_encode(v.to(device), f.exponent, f.mantissa, f.bias, 0.37, seed).cpu(),
                               want)
    codes = torch.arange(256, dtype=torch.uint8).repeat(50)
    cpu, other = on_both("float_decode", codes, f.exponent, f.mantissa, f.bias, 0.37, device=device)
    assert_same((other.cpu(),), (cpu,))
    out = torch.empty(codes.numel(), device=device)
    assert kernels.float_decode(codes.to(device), f.exponent, f.mantissa, f.bias, 0.37, out=out) is out
    base = torch.randn(codes.numel(), generator=torch.Generator().manual_seed(5))
    for alpha in (1.0, -1.0, 1 / 3):
        want, got = base.clone(), base.to(device)
        reference.float_accumulate(want, codes, f.exponent, f.mantissa, f.bias, 0.37, alpha)
        kernels.float_accumulate(got, codes.to(device), f.exponent, f.mantissa, f.bias, 0.37, alpha)
        assert torch.equal(got.cpu(), want), alpha
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            kernels.float_encode(torch.tensor([1.0, bad], dtype=dtype, device=device), f.exponent, f.mantissa, f.bias)


@pytest.mark.parametrize("device", DEVICES)
def test_huffman_on_device_tensors_gives_the_reference_stream(device):
    symbols = (torch.randn(1_000_000) * 20).round().clamp(-128, 127).to(torch.int16).add(128).to(torch.uint8)
    table = HuffmanTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0)
    cpu, other = on_both("huffman_encode", symbols, table.codes, table.lengths, device=device)
    assert other.device.type == device and torch.equal(other.cpu(), cpu)
    decoded = kernels.huffman_decode(other, symbols.numel(), table.codes.to(device), table.lengths.to(device))
    assert decoded.device.type == device and torch.equal(decoded.cpu(), symbols)


@pytest.mark.parametrize("device", DEVICES)
def test_rans_on_device_tensors_gives_the_reference_stream(device):
    symbols = (torch.randn(100_000) * 20).round().clamp(-128, 127).to(torch.int16).add(128).to(torch.uint8)
    table = RansTable.from_weights(np.bincount(symbols.numpy(), minlength=256) + 1.0)
    cpu, other = on_both("rans_encode", symbols, table.freqs, device=device)
    assert other.device.type == device and torch.equal(other.cpu(), cpu)
    decoded = kernels.rans_decode(other, symbols.numel(), table.freqs.to(device))
    assert decoded.device.type == device and torch.equal(decoded.cpu(), symbols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block", [1, 13, 2048])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_signs_match_the_reference(block, dtype, device):
    for kind in KINDS:
        for n in (0, 1, 4097, 1_000_003):
            x = make(kind, n, seed=5, dtype=dtype)
            cpu, other = on_both("sign_encode", x, block, device=device)
            assert other[0].device.type == device
            assert_same(to_cpu(other), cpu, nan_bits=False)
            cpu_decoded, decoded = on_both("sign_decode", *cpu, n, block, device=device)
            assert_same((decoded.cpu(),), (cpu_decoded,), nan_bits=False)
            v, w = x.float().to(device, copy=True), x.float().clone()
            assert_same(to_cpu(kernels.sign_residual(v, block)), reference.sign_residual(w, block), nan_bits=False)
            assert_same((v.cpu(),), (w,), nan_bits=False)
            payloads = [cpu, reference.sign_encode(make("normal", n, seed=6), block)]
            got, want = torch.ones(n, device=device), torch.ones(n)
            kernels.sign_accumulate(got, [p[0].to(device) for p in payloads], [p[1].to(device) for p in payloads],
                                    block, 1 / 3)
            reference.sign_accumulate(want, [p[0] for p in payloads], [p[1] for p in payloads], block, 1 / 3)
            assert_same((got.cpu(),), (want,), nan_bits=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_normalize_matches_the_reference(dtype, device):
    for kind in KINDS:
        for n in (0, 1, 1_000_003):
            g, m, v = make(kind, n, seed=7, dtype=dtype), make("normal", n, seed=8), make("normal", n, seed=9).abs()
            u = make("normal", n, seed=10)
            for c1, c2 in ((torch.tensor([27.7]), torch.tensor([50.3])), (torch.rand(n) + 1, torch.rand(n) + 1)):
                for setting in ((0.9, 0.999, 1e-8, 1.0), (0.9, 0.95, 0.0, 0.25)):
                    cpu, other = on_both("adam_normalize", g, m, v, c1, c2, *setting, device=device)
                    assert other[2].device.type == device
                    assert_same(to_cpu(other), cpu, nan_bits=False)
                    cpu, other = on_both("adam_momentum", g, m, v, u, c1, c2, *setting, device=device)
                    assert other[3].device.type == device
                    assert_same(to_cpu(other), cpu, nan_bits=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_top_k_matches_the_reference(dtype, device):
    for kind in KINDS:
        for n in (0, 1, 255, 4097, 1_000_003):
            x = make(kind, n, seed=11, dtype=dtype)
            values, indices = reference.topk_abs(x, min(n, math.ceil(0.05 * n)))
            cpu, other = on_both("packed_encode", values, indices, n, 255, 4, 3, 7, device=device)
            assert other[0].device.type == device
            assert_same(to_cpu(other), cpu)
            payloads = [cpu, reference.packed_encode(*reference.topk_abs(make("normal", n, seed=12), n // 2), n, 255,
                                                     4, 3, 7)]
            got, want = torch.ones(n, device=device), torch.ones(n)
            kernels.packed_accumulate(got, *[[p[j].to(device) for p in payloads] for j in range(4)], 255, 4, 3, 7,
                                      -1 / 3)
            reference.packed_accumulate(want, *[[p[j] for p in payloads] for j in range(4)], 255, 4, 3, 7, -1 / 3)
            assert_same((got.cpu(),), (want,), nan_bits=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_ordered_sums_match_the_reference(dtype, device):
    for kind in KINDS:
        for n in (0, 1, 33, 65_537, 1_000_003):
            x, o = make(kind, n, seed=13, dtype=dtype), make("normal", n, seed=14)
            others = [o, make(kind, n, seed=15, dtype=torch.bfloat16), x]
            want = reference.squared_distances(x, others)
            got = kernels.squared_distances(x.to(device), [t.to(device) for t in others])
            assert got.device.type == device
            assert_same((got.cpu(),), (want,), nan_bits=False)
            moments = kernels.abs_moments(x.to(device))
            assert_same((moments.cpu(),), (reference.abs_moments(x),), nan_bits=False)
            u, e = o * 5, make("scales", n, seed=16)
            want = [torch.empty(n), torch.empty(n)]
            want.append(reference.momentum_compensate(x, u, e, 0.9, 0.7, 1.3, u_new=want[0], v=want[1]))
            got = [torch.empty(n, device=device), torch.empty(n, device=device)]
            got.append(kernels.momentum_compensate(x.to(device), u.to(device), e.to(device), 0.9, 0.7, 1.3,
                                                   u_new=got[0], v=got[1]))
            assert_same(tuple(t.cpu() for t in got), tuple(want), nan_bits=False)


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
    torch.library.opcheck(ops.float_accumulate.default, (x.clone(), codes, 5, 2, 15, 0.5, -1.0))
    signs, scales = ops.sign_encode(x, 64)
    torch.library.opcheck(ops.sign_encode.default, (x, 64))
    torch.library.opcheck(ops.sign_residual.default, (x.clone(), 64))
    torch.library.opcheck(ops.sign_decode.default, (signs, scales, 5000, 64))
    torch.library.opcheck(ops.sign_accumulate.default, (x.clone(), [signs, signs], [scales, scales], 64, 0.5))
    torch.library.opcheck(ops.adam_normalize.default, (x, x.clone(), x.abs(), torch.ones(1, device="cuda"),
                                                       torch.ones(1, device="cuda"), 0.9, 0.999, 1e-8, 0.5))
    torch.library.opcheck(ops.adam_momentum.default, (x, x.clone(), x.abs(), x.clone(), torch.ones(1, device="cuda"),
                                                      torch.ones(1, device="cuda"), 0.9, 0.999, 1e-8, 0.5))
    values, indices = ops.topk_abs(x, 250)
    payload = ops.packed_encode(values, indices, 5000, 255, 4, 3, 7)
    torch.library.opcheck(ops.packed_encode.default, (values, indices, 5000, 255, 4, 3, 7))
    torch.library.opcheck(ops.packed_accumulate.default, (x.clone(), *[[t, t] for t in payload], 255, 4, 3, 7, 0.5))
    torch.library.opcheck(ops.squared_distances.default, (x, [x.flip(0), x.half()]))
    torch.library.opcheck(ops.abs_moments.default, (x,))
    torch.library.opcheck(ops.momentum_compensate.default, (x.half(), x.clone(), x.flip(0), 0.9, 0.5, 1.25),
                          {"u_new": torch.empty_like(x), "v": torch.empty_like(x)})


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("hook", ["ef21", "co3", "clag", "ef14"])
def test_ddp_trains_with_cuda_tensors_on_gloo(hook):
    from ddp_hooks.testbed import TrainConfig, train  # the ranks share the one GPU

    options = {"co3": {"fmt": "fp8-152", "coder": "huffman", "scale": "gennorm"}, "clag": {"ratio": 0.01},
               "ef14": {"compressor": "topk8", "ratio": 0.05}}  # the SGD default
    results = train(TrainConfig(hook=hook, epochs=1, device="cuda", options=options.get(hook)))
    cpu = train(TrainConfig(hook=hook, epochs=1, options=options.get(hook)))
    for r in results:
        assert r["params_identical"] and r["estimate_replica_max_diff"] == 0.0
    assert abs(results[0]["final_accuracy"] - cpu[0]["final_accuracy"]) < 0.01
