"""Speed of the CUDA kernels (``make bench`` on a GPU machine; skipped without one).

Per size (6.5M = one 25 MB DDP bucket, 64M fp32) and op, in one run: ``threepc`` (the CUDA
kernel), ``torch`` (torch.topk on |x| + indexing), ``kthvalue`` (the k-th largest |x| by
torch.kthvalue, then the entries at or above it) and ``copy`` (a device-to-device copy of the same
fp32 buffer). Every timed call ends with torch.cuda.synchronize().
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.test_kernel_speed import RATIO, rounds, torch_ef21_step, torch_topk_abs
from compressors import FloatFormat, kernels

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
