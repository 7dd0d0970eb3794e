"""The kernels behind the compressors: the ops ``torch.ops.threepc.*`` and one typed function per op.

Each op is defined once (``ops``) and has up to three implementations: ``ext`` (the C++ extension's
CPU and CUDA kernels), ``numba`` (``numba_cpu``) and ``torch`` (``reference``, the executable
specification). One is chosen at import and serves the op for CPU tensors: the extension when it
loads, else numba with one RuntimeWarning that names the cause, else the reference;
``THREEPC_BACKEND=ext|numba|torch`` forces one. CUDA tensors run the extension's CUDA kernels when
it was built with them, else the reference. ``backend_info()`` says what was chosen and why;
``implementations()`` gives each available implementation for running side by side (tests).
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from . import extension, ops, reference

BACKENDS = ("ext", "numba", "torch")


@functools.cache
def _numba() -> ModuleType | str:
    """The numba implementation, or why it cannot be imported."""
    try:
        return importlib.import_module(".numba_cpu", __name__)
    except ImportError as error:
        return f"{type(error).__name__}: {error}"


def _select() -> tuple[str, str]:
    """(backend, why): THREEPC_BACKEND if set, else the extension if it loads, else numba, else the reference."""
    forced = os.environ.get("THREEPC_BACKEND") or None
    if forced not in (None, *BACKENDS):
        raise ValueError(f"THREEPC_BACKEND={forced!r} is not a backend; use one of {', '.join(BACKENDS)}")
    if forced == "numba" and isinstance(_numba(), str):
        raise ImportError(f"THREEPC_BACKEND=numba but numba_cpu cannot be imported: {_numba()}")
    if forced in ("numba", "torch"):
        return forced, f"forced by THREEPC_BACKEND={forced}"
    problem = extension.load()
    if problem is None:
        return "ext", "forced by THREEPC_BACKEND=ext" if forced else f"{extension.MODULE} loaded"
    if forced:
        raise ImportError(f"THREEPC_BACKEND=ext but {problem}")
    numba_problem = _numba()
    fallback = "torch" if isinstance(numba_problem, str) else "numba"
    reason = problem if fallback == "numba" else f"{problem}; numba_cpu cannot be imported either: {numba_problem}"
    warnings.warn(f"threepc: {reason}. Using the {fallback} kernels.", RuntimeWarning, stacklevel=3)
    return fallback, reason


_backend, _reason = _select()
_build = extension.build_info()
_cuda_kernels = _backend == "ext" and bool(_build and _build["cuda"])
if _backend != "ext":
    ops.register(reference if _backend == "torch" else _numba(), "CPU")
if not _cuda_kernels:
    ops.register(reference, "CUDA")


def backend_info() -> dict[str, Any]:
    """Which implementation serves the ops (``backend`` for CPU tensors, ``cuda_backend`` for CUDA
    tensors) and why (``reason``), the torch running and the one the extension was built against."""
    return {"backend": _backend, "reason": _reason, "runtime_torch": torch.__version__,
            "extension_torch": _build["torch"] if _build else None, "extension_cuda": bool(_build and _build["cuda"]),
            "cuda_backend": "ext" if _cuda_kernels else "torch"}


def implementations() -> dict[str, Any]:
    """Every implementation available here, by backend name, each with one function per op
    (``ops.FUNCTIONAL``) taking the op's arguments: ``ext`` is ``torch.ops.threepc`` (present when
    the extension serves the ops), ``numba`` the numba_cpu module, ``torch`` the reference."""
    found: dict[str, Any] = {"ext": torch.ops.threepc} if _backend == "ext" else {}
    if not isinstance(numba := _numba(), str):
        found["numba"] = numba
    return found | {"torch": reference}


_ops = torch.ops.threepc


def topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k entries of largest |x| (ties: lowest index) as (values, indices), indices ascending."""
    return _ops.topk_abs(x, k)


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Fused EF21 step: d = grad - h; send TopK(d) as (values, indices); h[indices] += values.

    ``h`` is the worker's fp32 estimate g_i, updated in place (contiguous); ``grad`` may be
    fp32, fp16 or bf16 and any shape with h's number of elements.
    """
    return _ops.ef21_topk_step(grad, h, k)


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    """out[indices[j]] += alpha * values[j], in row-major (rank) order: deterministic.

    ``values``/``indices`` are (k,) or (ranks, k); ``out`` is a contiguous fp32 tensor.
    """
    _ops.sparse_accumulate(out, values, indices, alpha)


def float_encode(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float = 1.0,
                 seed: int | None = None, *, out: Tensor | None = None) -> Tensor:
    """uint8 codes of v / scale in the float format [1, exponent, mantissa] with ``bias``:
    round to nearest (ties to even) or, with ``seed``, stochastic rounding. Saturates; raises
    ValueError on NaN/Inf. ``out``: a contiguous uint8 tensor of v.numel() elements to write to
    (no allocation; what a hook that keeps its buffers wants)."""
    seed = -1 if seed is None else seed & ((1 << 63) - 1)
    if out is None:
        return _ops.float_encode(v, exponent, mantissa, bias, scale, seed)
    _ops.float_encode.out(v, exponent, mantissa, bias, scale, seed, out=out)
    return out


def float_decode(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float = 1.0, *,
                 out: Tensor | None = None) -> Tensor:
    """The fp32 values (times ``scale``) of uint8 codes in the float format [1, exponent, mantissa];
    ``out``: a contiguous float32 tensor of codes.numel() elements to write to."""
    if out is None:
        return _ops.float_decode(codes, exponent, mantissa, bias, scale)
    _ops.float_decode.out(codes, exponent, mantissa, bias, scale, out=out)
    return out


def float_accumulate(out: Tensor, codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float = 1.0,
                     alpha: float = 1.0) -> None:
    """out += alpha * (the fp32 values of ``codes`` times ``scale``), in place and in one pass (each
    code's value times scale, then times alpha, rounded to fp32; then one fp32 add). ``out``: a
    contiguous float32 tensor of codes.numel() elements. alpha = -1 leaves the residual v - Q(v)."""
    _ops.float_accumulate(out, codes, exponent, mantissa, bias, scale, alpha)


def huffman_encode(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    """The uint8 ``symbols`` prefix-coded MSB-first (symbol s: the ``lengths[s]`` low bits of
    ``codes[s]``), zero-padded to whole bytes."""
    return _ops.huffman_encode(symbols, codes, lengths)


def huffman_decode(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    """The first ``n`` symbols (uint8) of a ``huffman_encode`` stream."""
    return _ops.huffman_decode(stream, n, codes, lengths)


def rans_encode(symbols: Tensor, freqs: Tensor) -> Tensor:
    """The uint8 ``symbols`` rANS-coded with the frequencies ``freqs`` (int32, summing to a power of
    two <= 2^16): two 32-bit states, then the renormalisation bytes (``reference.rans_encode``)."""
    return _ops.rans_encode(symbols, freqs)


def rans_decode(stream: Tensor, n: int, freqs: Tensor) -> Tensor:
    """The ``n`` symbols (uint8) of a ``rans_encode`` stream."""
    return _ops.rans_decode(stream, n, freqs)


def sign_encode(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """The scaled sign of x (any shape, fp32/fp16/bf16) in blocks of ``block`` entries: (signs,
    scales), the signs packed eight to a byte (bit j % 8 of byte j // 8 set iff x_j < 0) and one
    bf16 scale per block, the block's mean |x_j| (``reference``'s docstring has the rounding)."""
    return _ops.sign_encode(x, block)


def sign_residual(v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """``sign_encode(v, block)``, writing v - C(v) into ``v`` (contiguous fp32): error feedback's
    residual without a dense decode."""
    return _ops.sign_residual(v, block)


def sign_decode(signs: Tensor, scales: Tensor, numel: int, block: int) -> Tensor:
    """The fp32 vector C(x)_j = s_b sign_j of ``numel`` entries from a ``sign_encode`` payload."""
    return _ops.sign_decode(signs, scales, numel, block)


def sign_accumulate(out: Tensor, signs: list[Tensor], scales: list[Tensor], block: int, alpha: float = 1.0) -> None:
    """out += alpha * sum_r C_r, C_r decoded from the payload (signs[r], scales[r]) of ``out.numel()``
    entries, in list (rank) order: one pass over ``out`` (contiguous fp32) for all n payloads,
    where n decodes would each write a dense vector; alpha is applied to each scale."""
    _ops.sign_accumulate(out, signs, scales, block, alpha)


def adam_normalize(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                   eps: float, share: float = 1.0, *,
                   out: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One pass of Adam's normalisation (``compressors.mechanisms.adam_normalized``): new tensors
    m' = beta1 m + (1 - beta1) g, v' = beta2 v + (1 - beta2) g^2 and d = g / (sqrt(w) + eps), with
    w = v' c2, mixed with min(m'^2 c1, v' c2) by ``share`` = 1/n when share < 1; c1, c2 (fp32, one
    value or one per entry) are the bias corrections. ``reference`` has the rounding. ``out``:
    three contiguous fp32 buffers (m', v', d) to write instead of allocating, none of them an input."""
    if out is None:
        return _ops.adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share)
    _ops.adam_normalize.out(grad, m, v, c1, c2, beta1, beta2, eps, share, m_new=out[0], v_new=out[1], d=out[2])
    return out


def adam_momentum(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                  eps: float, share: float = 1.0, *,
                  out: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``adam_normalize``, then in the same pass the momentum of d, u' = beta1 u + (1 - beta1) d,
    and u^ = u' sqrt(c1), its bias correction (c1 = 1 / (1 - beta1^k)^2): new tensors
    (m', v', u', u^), or written into ``out``, four contiguous fp32 buffers, none of them an input."""
    if out is None:
        return _ops.adam_momentum(grad, m, v, u, c1, c2, beta1, beta2, eps, share)
    _ops.adam_momentum.out(grad, m, v, u, c1, c2, beta1, beta2, eps, share, m_new=out[0], v_new=out[1], u_new=out[2],
                           u_hat=out[3])
    return out


def squared_distances(x: Tensor, others: list[Tensor]) -> Tensor:
    """||x - o||^2 for each tensor o in ``others`` (same number of elements as x; fp32, fp16 or
    bf16), as float64[len(others)] on x's device: differences in fp32, exact squares, float64 sums
    in a fixed order (``reference``), so every implementation and device gives the same bits. One
    pass per o and no temporaries, where ``(x - o).square().sum()`` writes two tensors of x's size."""
    return _ops.squared_distances(x, others)


def abs_moments(x: Tensor) -> Tensor:
    """(the number of non-zero entries, sum |x_i|, sum x_i^2) of x (fp32, fp16 or bf16) as
    float64[3] on x's device, summed in ``squared_distances``' order (the same bits everywhere;
    a NaN counts as non-zero). One pass over x, where masking out the zeros copies them."""
    return _ops.abs_moments(x)


def momentum_compensate(grad: Tensor, u: Tensor, e: Tensor, beta: float, gain: float, carry: float = 1.0, *,
                        u_new: Tensor, v: Tensor) -> Tensor:
    """One pass of error feedback on a momentum (``MomentumCorrectedEF14.step``): writes
    u_new = beta u + gain grad and v = carry e + u_new (fp32; each product and sum rounded once;
    carry: the error's rescaling by a learning-rate change, 1 leaves e exact) into
    ``u_new`` and ``v``, contiguous fp32 buffers of grad's size that overlap no input, and returns
    (sum grad_i^2, sum u_i grad_i) as float64[2] on grad's device, summed in ``squared_distances``'
    order (``ef14_momentum.mean_norm2`` reads them). ``grad``: fp32, fp16 or bf16; u, e contiguous fp32."""
    return _ops.momentum_compensate(grad, u, e, beta, gain, carry, u_new=u_new, v=v)


def packed_encode(values: Tensor, indices: Tensor, numel: int, block: int, exponent: int, mantissa: int,
                  bias: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A Top-K support (``indices`` ascending, of a tensor of ``numel`` entries) and its ``values``
    in about 16 bits an entry: (codes, scale, counts, offsets) with codes the 8-bit floats
    [1, exponent, mantissa] of values / scale, scale (fp32[1]) the least fp32 whose product with
    the format's largest value reaches max |values| (at least 2^-149; 1 if max |values| is 0; NaN
    if a value is not finite), counts the indices in each block of ``block`` entries and offsets
    each index's place in its block (uint8). ``reference`` has the rounding."""
    return _ops.packed_encode(values, indices, numel, block, exponent, mantissa, bias)


def packed_accumulate(out: Tensor, codes: list[Tensor], scales: list[Tensor], counts: list[Tensor],
                      offsets: list[Tensor], block: int, exponent: int, mantissa: int, bias: int,
                      alpha: float = 1.0) -> None:
    """out[entry] += alpha * its decoded value, for every entry of every ``packed_encode`` payload
    (codes[r], scales[r], counts[r], offsets[r]), in list order: deterministic for payloads whose
    entries are distinct coordinates (``packed_encode``'s; on CUDA the adds of a corrupt payload
    that repeats an entry meet in any order)."""
    _ops.packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias, alpha)
