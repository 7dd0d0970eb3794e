"""Speed of the CUDA kernels (``make bench`` on a GPU machine; skipped without one).

Per size (6.5M = one 25 MB DDP bucket, 64M fp32) and op, in one run: ``threepc`` (the CUDA
kernel), ``torch`` (torch.topk on |x| + indexing), ``kthvalue`` (the k-th largest |x| by
torch.kthvalue, then the entries at or above it) and ``copy`` (a device-to-device copy of the same
fp32 buffer). Also float_decode, sparse_accumulate (the k = 1% entries of 4 ranks into one
buffer) and the Huffman path (CUDA codes -> CPU coder -> CUDA stream, and back). Every timed call
ends with torch.cuda.synchronize().
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.test_kernel_speed import RATIO, rounds, torch_ef21_step, torch_topk_abs
from compressors import FloatFormat, kernels
from compressors.codecs.huffman import HuffmanTable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SIZES = {"6.5M": 6_500_000, "64M": 64_000_000}
FMT = FloatFormat.parse("fp8-152")


def kthvalue_topk_abs(x: torch.Tensor, k: int):
    magnitude = x.abs()
    threshold = torch.kthvalue(magnitude, x.numel() - k + 1).values
    indices = torch.nonzero(magnitude >= threshold).reshape(-1)[:k]
    return x[indices], indices


def synced(fn):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(scope="module", params=list(SIZES))
def buffers(request):
    n = SIZES[request.param]
    g = torch.Generator(device="cuda").manual_seed(0)
    return request.param, torch.randn(n, generator=g, device="cuda"), torch.randn(n, generator=g, device="cuda")


def measure(benchmark, record, group: str, implementation: str, buffer: torch.Tensor, make_args, fns: dict) -> None:
    benchmark.group = group
    if implementation == "copy":
        dst = torch.empty_like(buffer)
        benchmark.pedantic(synced(dst.copy_), args=(buffer,), rounds=rounds(buffer.numel()), warmup_rounds=2)
    else:
        benchmark.pedantic(synced(fns[implementation]), setup=lambda: (make_args(), {}),
                           rounds=rounds(buffer.numel()), warmup_rounds=2)
    record(benchmark, group, implementation)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "kthvalue", "copy"])
def test_topk_abs_cuda(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    k = int(RATIO * x.numel())
    measure(benchmark, record, f"cuda topk_abs {size}", implementation, x, lambda: (x, k),
            {"threepc": kernels.topk_abs, "torch": torch_topk_abs, "kthvalue": kthvalue_topk_abs})


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_ef21_topk_step_cuda(benchmark, record, buffers, implementation):
    size, grad, h = buffers
    k = int(RATIO * grad.numel())
    measure(benchmark, record, f"cuda ef21_topk_step {size}", implementation, grad, lambda: (grad, h.clone(), k),
            {"threepc": kernels.ef21_topk_step, "torch": torch_ef21_step})


@pytest.mark.parametrize("implementation", ["threepc", "copy"])
def test_float_encode_cuda(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    out = torch.empty(x.numel(), dtype=torch.uint8, device="cuda")
    measure(benchmark, record, f"cuda float_encode {size}", implementation, x, lambda: (x, 1e-3),
            {"threepc": lambda v, s: FMT.encode(v, s, out=out)})


@pytest.mark.parametrize("implementation", ["threepc", "copy"])
def test_float_decode_cuda(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    codes, out = FMT.encode(x, 1e-3), torch.empty_like(x)
    measure(benchmark, record, f"cuda float_decode {size}", implementation, x, lambda: (codes, 1e-3),
            {"threepc": lambda c, s: FMT.decode(c, s, out=out)})


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_sparse_accumulate_cuda(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    k, ranks = int(RATIO * x.numel()), 4
    g = torch.Generator(device="cuda").manual_seed(1)
    indices = torch.randint(0, x.numel(), (ranks * k,), generator=g, device="cuda")  # duplicates across ranks
    values, out = torch.randn(ranks * k, generator=g, device="cuda"), torch.zeros_like(x)
    measure(benchmark, record, f"cuda sparse_accumulate {ranks}x1% {size}", implementation, x,
            lambda: (out, values, indices, 0.25),
            {"threepc": kernels.sparse_accumulate, "torch": lambda o, v, i, a: o.index_add_(0, i, v, alpha=a)})


@pytest.fixture(scope="module")
def coded(buffers):
    size, x, _ = buffers
    codes = FMT.encode(x, 1e-3)
    table = HuffmanTable.from_weights(np.bincount(codes.cpu().numpy(), minlength=256) + 1.0)
    table_cuda = HuffmanTable(table.codes.cuda(), table.lengths.cuda())
    return size, codes, table_cuda, table_cuda.encode(codes)


@pytest.mark.parametrize("op", ["encode", "decode"])
def test_huffman_cuda(benchmark, record, coded, op):
    size, codes, table, stream = coded
    benchmark.group = f"cuda huffman_{op} {size} (CPU coder)"
    run = {"encode": lambda: table.encode(codes), "decode": lambda: table.decode(stream, codes.numel())}[op]
    benchmark.pedantic(synced(run), rounds=5, warmup_rounds=1)
    record(benchmark, benchmark.group, "threepc", processed=codes.numel())
