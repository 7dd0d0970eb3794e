"""The threepc operators ``torch.ops.threepc.*``: every schema, defined once, and its fake kernel.

The C++ extension registers CPU and CUDA kernels for these names (``TORCH_LIBRARY_IMPL`` in
csrc/); ``register`` serves a dispatch key with a Python implementation instead (``numba_cpu`` or
``reference``). The fake kernels give ``torch.compile`` the output shapes without running an op.
"""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from . import checks

LIB = torch.library.Library("threepc", "DEF")

SCHEMAS = (
    # The k largest |x| (ties: lowest index); indices ascending, values signed.
    "topk_abs(Tensor x, int k) -> (Tensor values, Tensor indices)",
    # d = grad - h; (values, indices) = topk_abs(d, k); h[indices] += values.
    "ef21_topk_step(Tensor grad, Tensor(a!) h, int k) -> (Tensor values, Tensor indices)",
    # out[indices[j]] += alpha * values[j] for j in order (row-major = rank order).
    "sparse_accumulate(Tensor(a!) out, Tensor values, Tensor indices, float alpha=1.0) -> ()",
    # The uint8 code of v / scale in the float format [1, exponent, mantissa] with bias; seed < 0:
    # round to nearest (ties to even), else stochastic rounding seeded per element.
    "float_encode(Tensor v, int exponent, int mantissa, int bias, float scale, int seed) -> Tensor",
    "float_encode.out(Tensor v, int exponent, int mantissa, int bias, float scale, int seed, *, Tensor(a!) out) -> ()",
    # The fp32 value of each code, times scale.
    "float_decode(Tensor codes, int exponent, int mantissa, int bias, float scale) -> Tensor",
    "float_decode.out(Tensor codes, int exponent, int mantissa, int bias, float scale, *, Tensor(a!) out) -> ()",
    # out += (value(codes) * scale) * alpha, both products rounded to fp32 (a table of the 256
    # codes), then one fp32 add: a decode and an add in one pass, no decoded tensor.
    "float_accumulate(Tensor(a!) out, Tensor codes, int exponent, int mantissa, int bias, float scale, "
    "float alpha) -> ()",
    # The uint8 symbols prefix-coded MSB-first with the table (codes int32[A], lengths uint8[A]).
    "huffman_encode(Tensor symbols, Tensor codes, Tensor lengths) -> Tensor",
    # The first n symbols of a stream coded with that table.
    "huffman_decode(Tensor stream, int n, Tensor codes, Tensor lengths) -> Tensor",
    # The uint8 symbols rANS-coded with the frequencies (int32[A], summing to a power of two).
    "rans_encode(Tensor symbols, Tensor freqs) -> Tensor",
    # The n symbols of a stream coded with those frequencies.
    "rans_decode(Tensor stream, int n, Tensor freqs) -> Tensor",
    # The scaled sign of x in blocks: signs packed eight to a byte (1 = negative), one bf16 scale
    # (mean |x|) per block.
    "sign_encode(Tensor x, int block) -> (Tensor signs, Tensor scales)",
    # sign_encode(v, block), and v -= the vector it decodes to, in place.
    "sign_residual(Tensor(a!) v, int block) -> (Tensor signs, Tensor scales)",
    # The fp32 vector sign_j * scale of j's block, for numel entries.
    "sign_decode(Tensor signs, Tensor scales, int numel, int block) -> Tensor",
    # out += sign_j * (scale_b * alpha) of every payload (signs[r], scales[r]), in list order.
    "sign_accumulate(Tensor(a!) out, Tensor[] signs, Tensor[] scales, int block, float alpha) -> ()",
    # ||x - o||^2 of each o in others (float64), summed in a fixed order: the same bits everywhere.
    "squared_distances(Tensor x, Tensor[] others) -> Tensor",
    # (the number of non-zero x_i, sum |x_i|, sum x_i^2) in float64, summed in the same order.
    "abs_moments(Tensor x) -> Tensor",
    # u_new = beta u + gain grad and v = carry e + u_new in fp32; returns (sum grad_i^2, sum u_i grad_i)
    # in float64, summed in the same order.
    "momentum_compensate(Tensor grad, Tensor u, Tensor e, float beta, float gain, float carry=1., *, "
    "Tensor(a!) u_new, Tensor(b!) v) -> Tensor",
    # A Top-K support (ascending indices < numel) and its values in 8-bit floats [1, exponent, mantissa]
    # of v / scale (scale: fp32[1], the least with scale * largest code >= max |v|, at least 2^-149; 1
    # for max |v| = 0; NaN for a non-finite v), one uint8 count per block of `block` entries and one
    # uint8 offset in its block per entry.
    "packed_encode(Tensor values, Tensor indices, int numel, int block, int exponent, int mantissa, int bias) "
    "-> (Tensor codes, Tensor scale, Tensor counts, Tensor offsets)",
    # out[b_j * block + offsets_j] += alpha * (value(codes_j) * scale) of every payload, in list order.
    "packed_accumulate(Tensor(a!) out, Tensor[] codes, Tensor[] scales, Tensor[] counts, Tensor[] offsets, int block, "
    "int exponent, int mantissa, int bias, float alpha) -> ()",
    # Adam's moments m', v' and the normalised gradient d = grad / (sqrt(w) + eps) in one pass.
    "adam_normalize(Tensor grad, Tensor m, Tensor v, Tensor c1, Tensor c2, float beta1, float beta2, float eps, "
    "float share) -> (Tensor m_new, Tensor v_new, Tensor d)",
    "adam_normalize.out(Tensor grad, Tensor m, Tensor v, Tensor c1, Tensor c2, float beta1, float beta2, float eps, "
    "float share, *, Tensor(a!) m_new, Tensor(b!) v_new, Tensor(c!) d) -> ()",
    # adam_normalize, then the momentum of d, u' = beta1 u + (1 - beta1) d, and u^ = u' sqrt(c1).
    "adam_momentum(Tensor grad, Tensor m, Tensor v, Tensor u, Tensor c1, Tensor c2, float beta1, float beta2, "
    "float eps, float share) -> (Tensor m_new, Tensor v_new, Tensor u_new, Tensor u_hat)",
    "adam_momentum.out(Tensor grad, Tensor m, Tensor v, Tensor u, Tensor c1, Tensor c2, float beta1, float beta2, "
    "float eps, float share, *, Tensor(a!) m_new, Tensor(b!) v_new, Tensor(c!) u_new, Tensor(d!) u_hat) -> ()",
)
for _schema in SCHEMAS:
    LIB.define(_schema)

# The ops a Python implementation provides as functions of the same name and signature.
FUNCTIONAL = ("topk_abs", "ef21_topk_step", "sparse_accumulate", "float_encode", "float_decode", "float_accumulate",
              "huffman_encode", "huffman_decode", "rans_encode", "rans_decode", "sign_encode", "sign_residual",
              "sign_decode", "sign_accumulate", "adam_normalize", "adam_momentum", "packed_encode",
              "packed_accumulate", "squared_distances", "abs_moments", "momentum_compensate")


def _into(functional: Callable[..., Tensor], op: str, dtype: torch.dtype) -> Callable[..., None]:
    """The ``.out`` kernel of a functional Python kernel: check ``out``, compute, copy."""
    def out_kernel(first: Tensor, *args: object, out: Tensor) -> None:
        checks.out(op, out, first, dtype)
        out.copy_(functional(first, *args))
    return out_kernel


def register(implementation: ModuleType, key: str) -> None:
    """Serve every op for dispatch key ``key`` ("CPU", "CUDA") with a Python implementation."""
    for name in FUNCTIONAL:
        LIB.impl(name, getattr(implementation, name), key)
    LIB.impl("float_encode.out", _into(implementation.float_encode, "float_encode", torch.uint8), key)
    LIB.impl("float_decode.out", _into(implementation.float_decode, "float_decode", torch.float32), key)
    LIB.impl("adam_normalize.out", _adam_into(implementation.adam_normalize, "adam_normalize", 2,
                                              ("m_new", "v_new", "d")), key)
    LIB.impl("adam_momentum.out", _adam_into(implementation.adam_momentum, "adam_momentum", 3,
                                             ("m_new", "v_new", "u_new", "u_hat")), key)


def _adam_into(functional: Callable[..., tuple[Tensor, ...]], op: str, states: int,
               names: tuple[str, ...]) -> Callable[..., None]:
    """The ``.out`` kernel of a Python adam_normalize or adam_momentum (whose first ``states``
    arguments after grad are the states; outputs ``names`` in the order it returns them): check
    the outputs, compute, copy."""
    def out_kernel(grad: Tensor, *args: object, **outputs: Tensor) -> None:
        ordered = {name: outputs[name] for name in names}
        checks.new_outputs(op, grad, args[:states], ordered)
        for out, value in zip(ordered.values(), functional(grad, *args)):
            out.copy_(value)
    return out_kernel


@torch.library.register_fake("threepc::topk_abs", lib=LIB)
def _topk_abs_fake(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return x.new_empty(k), x.new_empty(k, dtype=torch.long)


@torch.library.register_fake("threepc::ef21_topk_step", lib=LIB)
def _ef21_topk_step_fake(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return h.new_empty(k), h.new_empty(k, dtype=torch.long)


@torch.library.register_fake("threepc::sparse_accumulate", lib=LIB)
def _sparse_accumulate_fake(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    return None


@torch.library.register_fake("threepc::float_accumulate", lib=LIB)
def _float_accumulate_fake(out: Tensor, codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float,
                           alpha: float) -> None:
    return None


@torch.library.register_fake("threepc::float_encode", lib=LIB)
def _float_encode_fake(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int) -> Tensor:
    return v.new_empty(v.numel(), dtype=torch.uint8)


@torch.library.register_fake("threepc::float_encode.out", lib=LIB)
def _float_encode_out_fake(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int, *,
                           out: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::float_decode", lib=LIB)
def _float_decode_fake(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> Tensor:
    return codes.new_empty(codes.numel(), dtype=torch.float32)


@torch.library.register_fake("threepc::float_decode.out", lib=LIB)
def _float_decode_out_fake(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float, *,
                           out: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::huffman_encode", lib=LIB)
def _huffman_encode_fake(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    return symbols.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.uint8)  # depends on the data


@torch.library.register_fake("threepc::huffman_decode", lib=LIB)
def _huffman_decode_fake(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    return stream.new_empty(n, dtype=torch.uint8)


@torch.library.register_fake("threepc::rans_encode", lib=LIB)
def _rans_encode_fake(symbols: Tensor, freqs: Tensor) -> Tensor:
    return symbols.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.uint8)  # depends on the data


@torch.library.register_fake("threepc::rans_decode", lib=LIB)
def _rans_decode_fake(stream: Tensor, n: int, freqs: Tensor) -> Tensor:
    return stream.new_empty(n, dtype=torch.uint8)


def _sign_payload_fake(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    return (x.new_empty((x.numel() + 7) // 8, dtype=torch.uint8),
            x.new_empty(checks.sign_blocks(x.numel(), block), dtype=torch.bfloat16))


torch.library.register_fake("threepc::sign_encode", _sign_payload_fake, lib=LIB)
torch.library.register_fake("threepc::sign_residual", _sign_payload_fake, lib=LIB)


@torch.library.register_fake("threepc::sign_decode", lib=LIB)
def _sign_decode_fake(signs: Tensor, scales: Tensor, numel: int, block: int) -> Tensor:
    return signs.new_empty(numel, dtype=torch.float32)


@torch.library.register_fake("threepc::sign_accumulate", lib=LIB)
def _sign_accumulate_fake(out: Tensor, signs: list[Tensor], scales: list[Tensor], block: int, alpha: float) -> None:
    return None


@torch.library.register_fake("threepc::squared_distances", lib=LIB)
def _squared_distances_fake(x: Tensor, others: list[Tensor]) -> Tensor:
    return x.new_empty(len(others), dtype=torch.float64)


@torch.library.register_fake("threepc::abs_moments", lib=LIB)
def _abs_moments_fake(x: Tensor) -> Tensor:
    return x.new_empty(3, dtype=torch.float64)


@torch.library.register_fake("threepc::momentum_compensate", lib=LIB)
def _momentum_compensate_fake(grad: Tensor, u: Tensor, e: Tensor, beta: float, gain: float, carry: float = 1.0, *,
                              u_new: Tensor, v: Tensor) -> Tensor:
    return grad.new_empty(2, dtype=torch.float64)


@torch.library.register_fake("threepc::packed_encode", lib=LIB)
def _packed_encode_fake(values: Tensor, indices: Tensor, numel: int, block: int, exponent: int, mantissa: int,
                        bias: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (values.new_empty(values.numel(), dtype=torch.uint8), values.new_empty(1, dtype=torch.float32),
            values.new_empty(checks.packed_blocks(numel, block), dtype=torch.uint8),
            values.new_empty(values.numel(), dtype=torch.uint8))


@torch.library.register_fake("threepc::packed_accumulate", lib=LIB)
def _packed_accumulate_fake(out: Tensor, codes: list[Tensor], scales: list[Tensor], counts: list[Tensor],
                            offsets: list[Tensor], block: int, exponent: int, mantissa: int, bias: int,
                            alpha: float) -> None:
    return None


@torch.library.register_fake("threepc::adam_normalize.out", lib=LIB)
def _adam_normalize_out_fake(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                             eps: float, share: float, *, m_new: Tensor, v_new: Tensor, d: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::adam_momentum.out", lib=LIB)
def _adam_momentum_out_fake(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float,
                            beta2: float, eps: float, share: float, *, m_new: Tensor, v_new: Tensor, u_new: Tensor,
                            u_hat: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::adam_momentum", lib=LIB)
def _adam_momentum_fake(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float,
                        beta2: float, eps: float, share: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(m.new_empty(grad.numel()) for _ in range(4))


@torch.library.register_fake("threepc::adam_normalize", lib=LIB)
def _adam_normalize_fake(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                         eps: float, share: float) -> tuple[Tensor, Tensor, Tensor]:
    return m.new_empty(m.numel()), m.new_empty(m.numel()), m.new_empty(m.numel())
