"""Speed of the selection kernels, PackedTopK's packing, the scaled-sign codec, Adam's
normalisation (and its momentum), the lazy triggers' squared distances and ef14_mc's momentum
step against torch and against a copy of the same buffer (``make bench``).

Per size (1M, 6.5M = one 25 MB DDP bucket, 64M fp32) and op, three timings in one run:
``threepc`` (the active backend, by default the C++ extension), ``torch`` (torch.topk on |x| +
indexing, the obvious implementation; for the sign and Adam ops the plain-torch reference) and
``copy`` (``dst.copy_(src)`` of one fp32 buffer of the same size: the memory-bandwidth
yardstick). Ratios are printed at the end of the run.
"""
from __future__ import annotations

import pytest
import torch

from compressors import ScaledSign, kernels
from compressors.kernels import reference
from compressors.operators.packed_topk import BLOCK, FORMAT

SIZES = {"1M": 1_000_000, "6.5M": 6_500_000, "64M": 64_000_000}
RATIO = 0.01
PACKED_RATIO = 0.05  # the SGD default's PackedTopK


def rounds(n: int) -> int:
    return 5 if n >= 50_000_000 else 20


def torch_topk_abs(x: torch.Tensor, k: int):
    indices = torch.topk(x.abs(), k, sorted=False).indices
    return x[indices], indices


def torch_ef21_step(grad: torch.Tensor, h: torch.Tensor, k: int):
    d = grad - h
    indices = torch.topk(d.abs(), k, sorted=False).indices
    values = d[indices]
    h[indices] += values
    return values, indices


@pytest.fixture(scope="module", params=list(SIZES))
def buffers(request):
    n = SIZES[request.param]
    g = torch.Generator().manual_seed(0)
    return request.param, torch.randn(n, generator=g), torch.randn(n, generator=g) * 0.5


def measure(benchmark, record, group, implementation, buffer, make_args, threepc_fn, torch_fn) -> None:
    """Time one implementation; ``make_args()`` builds fresh arguments per round (not timed)."""
    benchmark.group = group
    if implementation == "copy":
        dst = torch.empty_like(buffer)
        benchmark.pedantic(dst.copy_, args=(buffer,), rounds=rounds(buffer.numel()), warmup_rounds=1)
    else:
        fn = threepc_fn if implementation == "threepc" else torch_fn
        benchmark.pedantic(fn, setup=lambda: (make_args(), {}), rounds=rounds(buffer.numel()), warmup_rounds=1)
    record(benchmark, group, implementation)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
@pytest.mark.parametrize("ratio", [RATIO, PACKED_RATIO], ids=lambda r: f"{r:.0%}")
def test_topk_abs(benchmark, record, buffers, implementation, ratio):
    size, x, _ = buffers
    k = int(ratio * x.numel())
    group = f"topk_abs {size}" if ratio == RATIO else f"topk_abs {ratio:.0%} {size}"
    measure(benchmark, record, group, implementation, x, lambda: (x, k), kernels.topk_abs, torch_topk_abs)


def _packed(values: torch.Tensor, indices: torch.Tensor, numel: int, encode=kernels.packed_encode):
    return encode(values, indices, numel, BLOCK, FORMAT.exponent, FORMAT.mantissa, FORMAT.bias)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_packed_encode(benchmark, record, buffers, implementation):
    """PackedTopK's payload from Top-K 5%'s (values, indices): threepc's one pass against the
    reference's torch ops (what PackedTopK ran before the kernel)."""
    size, x, _ = buffers
    selected = kernels.topk_abs(x, int(PACKED_RATIO * x.numel()))
    measure(benchmark, record, f"packed_encode 5% {size}", implementation, x, lambda: selected,
            lambda v, i: _packed(v, i, x.numel()), lambda v, i: _packed(v, i, x.numel(), reference.packed_encode))


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_packed_accumulate(benchmark, record, buffers, implementation):
    """out += (1/2) of 2 PackedTopK 5% payloads (a rank's decode of an all_gather of 2)."""
    size, x, y = buffers
    payloads = [_packed(*kernels.topk_abs(t, int(PACKED_RATIO * t.numel())), t.numel()) for t in (x, y)]
    parts = [[p[j] for p in payloads] for j in range(4)]
    out = torch.zeros_like(x)
    args = (BLOCK, FORMAT.exponent, FORMAT.mantissa, FORMAT.bias, 0.5)
    measure(benchmark, record, f"packed_accumulate n=2 5% {size}", implementation, x, lambda: (out,),
            lambda o: kernels.packed_accumulate(o, *parts, *args), lambda o: reference.packed_accumulate(o, *parts, *args))


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_ef21_topk_step(benchmark, record, buffers, implementation):
    size, grad, h = buffers
    k = int(RATIO * grad.numel())
    # every round starts from the same estimate h
    measure(benchmark, record, f"ef21_topk_step {size}", implementation, grad, lambda: (grad, h.clone(), k),
            kernels.ef21_topk_step, torch_ef21_step)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_sign_encode(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    block = ScaledSign().block
    measure(benchmark, record, f"sign_encode {size}", implementation, x, lambda: (x, block), kernels.sign_encode,
            reference.sign_encode)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_sign_residual(benchmark, record, buffers, implementation):
    """Encode plus v -= C(v) in place: error feedback's step (each round on a fresh copy)."""
    size, x, _ = buffers
    block = ScaledSign().block
    measure(benchmark, record, f"sign_residual {size}", implementation, x, lambda: (x.clone(), block),
            kernels.sign_residual, reference.sign_residual)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_sign_decode(benchmark, record, buffers, implementation):
    size, x, _ = buffers
    block = ScaledSign().block
    args = (*kernels.sign_encode(x, block), x.numel(), block)
    measure(benchmark, record, f"sign_decode {size}", implementation, x, lambda: args, kernels.sign_decode,
            reference.sign_decode)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_adam_normalize(benchmark, record, buffers, implementation):
    """AdamW's normalisation before compression (the Adam mode's worker step) with the mean-of-ranks
    mix of 2 ranks: threepc writes into kept buffers (``out=``, as the hook does), torch is the
    reference's dozen elementwise ops."""
    size, grad, m = buffers
    v, c1, c2 = m.square(), torch.tensor([1.5]), torch.tensor([2.5])
    out = tuple(torch.empty_like(grad) for _ in range(3))
    measure(benchmark, record, f"adam_normalize {size}", implementation, grad, lambda: (grad,),
            lambda g: kernels.adam_normalize(g, m, v, c1, c2, 0.9, 0.999, 1e-8, 0.5, out=out),
            lambda g: reference.adam_normalize(g, m, v, c1, c2, 0.9, 0.999, 1e-8, 0.5))


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_adam_momentum(benchmark, record, buffers, implementation):
    """The Adam default's worker step: the moments, d and its bias-corrected momentum u^. threepc
    is one pass (``out=``); torch is what the mode ran before it: adam_normalize's kernel, then
    torch.lerp for u' and torch.mul for u^ (two more passes)."""
    size, grad, m = buffers
    v, u, c1, c2 = m.square(), grad * 0.1, torch.tensor([1.5]), torch.tensor([2.5])
    out = tuple(torch.empty_like(grad) for _ in range(4))

    def before(g: torch.Tensor) -> None:
        kernels.adam_normalize(g, m, v, c1, c2, 0.9, 0.999, 1e-8, 0.5, out=(out[0], out[1], out[3]))
        torch.lerp(u, out[3], 0.1, out=out[2])
        torch.mul(out[2], c1.sqrt(), out=out[3])

    measure(benchmark, record, f"adam_momentum {size}", implementation, grad, lambda: (grad,),
            lambda g: kernels.adam_momentum(g, m, v, u, c1, c2, 0.9, 0.999, 1e-8, 0.5, out=out), before)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_sign_accumulate(benchmark, record, buffers, implementation):
    """out += (1/4) sum of 4 sign payloads (what a rank does with an all_gather of 4). Here
    ``torch`` is the unfused path the generic ``Compressor.accumulate`` takes: 4 decodes (this
    project's kernel) and 4 torch adds."""
    size, x, y = buffers
    block = ScaledSign().block
    payloads = [kernels.sign_encode(t, block) for t in (x, y, -x, -y)]
    signs, scales = [p[0] for p in payloads], [p[1] for p in payloads]
    out = torch.zeros_like(x)

    def unfused(out: torch.Tensor) -> None:
        for s, c in zip(signs, scales):
            out.add_(kernels.sign_decode(s, c, out.numel(), block), alpha=0.25)

    measure(benchmark, record, f"sign_accumulate n=4 {size}", implementation, x, lambda: (out,),
            lambda o: kernels.sign_accumulate(o, signs, scales, block, 0.25), unfused)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_squared_distances(benchmark, record, buffers, implementation):
    """CLAG's trigger: ||x - h||^2 and ||x - y||^2. threepc is one call (float64 sums in a fixed
    order, no temporaries); torch is what the trigger ran before it, ``(x - h).square().sum()``
    twice (four temporaries of x's size)."""
    size, x, h = buffers
    y = h.flip(0)

    def before(x: torch.Tensor) -> tuple[float, float]:
        return float((x - h).square().sum()), float((x - y).square().sum())

    measure(benchmark, record, f"squared_distances 2 others {size}", implementation, x, lambda: (x,),
            lambda x: kernels.squared_distances(x, [h, y]), before)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_momentum_compensate(benchmark, record, buffers, implementation):
    """``ef14_mc``'s worker step before its compressor: u' = beta u + gain grad, v = e + u' and
    the clipping estimate's sums ||grad||^2 and <u, grad>. threepc is one pass; torch is what
    the step ran before it: two torch.dot and two torch.add into the same buffers."""
    size, grad, u = buffers
    e, u_new, v = grad.flip(0) * 0.1, torch.empty_like(grad), torch.empty_like(grad)

    def before(g: torch.Tensor) -> tuple[float, float]:
        sums = float(torch.dot(g, g)), float(torch.dot(u, g))
        torch.add(g, u, alpha=0.9, out=u_new)
        torch.add(u_new, e, out=v)
        return sums

    measure(benchmark, record, f"momentum_compensate {size}", implementation, grad, lambda: (grad,),
            lambda g: kernels.momentum_compensate(g, u, e, 0.9, 1.0, u_new=u_new, v=v).tolist(), before)


@pytest.mark.parametrize("implementation", ["threepc", "torch", "copy"])
def test_abs_moments(benchmark, record, buffers, implementation):
    """The step's norms of told optimizers (``ddp_hooks.adam.rescaling``), EF21+'s distances and
    CO3's GenNorm fit: (non-zeros, sum |x_i|, sum x_i^2) in float64. threepc is one pass; torch
    is the float64 expressions, each a pass and a temporary."""
    size, x, _ = buffers

    def moments(x: torch.Tensor) -> tuple[float, float, float]:
        return float(x.count_nonzero()), float(x.abs().sum(dtype=torch.float64)), \
            float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)

    measure(benchmark, record, f"abs_moments {size}", implementation, x, lambda: (x,),
            lambda x: kernels.abs_moments(x).tolist(), moments)
