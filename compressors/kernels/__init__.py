"""The kernels behind the compressors, with one typed entry point per op.

Backends: ``ext`` (the C++ ops ``torch.ops.threepc.*``, the default), ``numba`` (used when the
extension cannot be imported, with one warning) and ``torch`` (``reference.py``, the
specification). ``THREEPC_BACKEND=ext|numba|torch`` forces one; ``use_backend`` switches
temporarily. Arguments are checked here, identically for every backend. CUDA tensors run the
``ext`` ops' CUDA kernels when the extension was built with them (setup.py), else the reference.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from . import reference

BACKENDS = ("ext", "numba", "torch")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _try_import(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module, __name__)
    except ImportError:
        return None


_modules: dict[str, ModuleType | None] = {
    "ext": _try_import(".extension"),
    "numba": _try_import(".numba_cpu"),
    "torch": reference,
}


def available_backends() -> list[str]:
    """Backends that can run here, in order of preference."""
    return [name for name in BACKENDS if _modules[name] is not None]


def _initial_backend() -> str:
    forced = os.environ.get("THREEPC_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"THREEPC_BACKEND={forced!r} is not a backend; use one of {', '.join(BACKENDS)}")
        if _modules[forced] is None:
            raise ImportError(f"THREEPC_BACKEND={forced} but that backend cannot be imported here "
                              f"(available: {', '.join(available_backends())}); "
                              "build the extension with `pip install --no-build-isolation .` or install numba")
        return forced
    if _modules["ext"] is None:
        fallback = "numba" if _modules["numba"] is not None else "torch"
        warnings.warn(f"threepc: the compiled extension compressors._C is not importable; using the {fallback} "
                      "kernels. Build it with `pip install --no-build-isolation .`", RuntimeWarning, stacklevel=2)
        return fallback
    return "ext"


_backend = _initial_backend()


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the kernels on backend ``name`` inside the block."""
    global _backend
    if name not in available_backends():
        raise ValueError(f"backend {name!r} is not available here; available: {', '.join(available_backends())}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def _backend_for(t: Tensor) -> str:
    if t.device.type == "cpu":
        return _backend
    return "ext" if _backend == "ext" and _modules["ext"].has_kernels_for(t.device.type) else "torch"


def _check_float(name: str, t: Tensor) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}; cast it with .float()")


def _check_k(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, numel] = [0, {n}], got k = {k}")


def _numpy_f32(t: Tensor) -> np.ndarray:
    return t.detach().reshape(-1).float().contiguous().numpy()


def topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k entries of largest |x| (ties: lowest index) as (values, indices), indices ascending."""
    _check_float("x", x)
    _check_k(k, x.numel())
    backend = _backend_for(x)
    if backend == "ext":
        return _modules["ext"].ops.topk_abs(x, k)
    if backend == "numba":
        values, indices = _modules["numba"].topk_abs(_numpy_f32(x), k)
        return torch.from_numpy(values).to(x.dtype), torch.from_numpy(indices)
    return reference.topk_abs(x, k)


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Fused EF21 step: d = grad - h; send TopK(d) as (values, indices); h[indices] += values.

    ``h`` is the worker's fp32 estimate g_i, updated in place (contiguous); ``grad`` may be
    fp32, fp16 or bf16 and any shape with h's number of elements.
    """
    _check_float("grad", grad)
    if h.dtype != torch.float32 or not h.is_contiguous():
        raise TypeError(f"h must be a contiguous float32 tensor (the fp32 estimate g_i), got {h.dtype}"
                        f"{'' if h.is_contiguous() else ', non-contiguous'}")
    if grad.numel() != h.numel():
        raise ValueError(f"grad has {grad.numel()} elements but h has {h.numel()}")
    _check_k(k, h.numel())
    backend = _backend_for(h)
    if backend == "ext":
        return _modules["ext"].ops.ef21_topk_step(grad, h, k)
    if backend == "numba":
        values, indices = _modules["numba"].ef21_topk_step(_numpy_f32(grad), h.view(-1).numpy(), k)
        return torch.from_numpy(values), torch.from_numpy(indices)
    return reference.ef21_topk_step(grad, h, k)


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    """out[indices[j]] += alpha * values[j], in row-major (rank) order: deterministic.

    ``values``/``indices`` are (k,) or (ranks, k); ``out`` is a contiguous fp32 tensor.
    """
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"out must be a contiguous float32 tensor, got {out.dtype}"
                        f"{'' if out.is_contiguous() else ', non-contiguous'}")
    if values.numel() != indices.numel():
        raise ValueError(f"values has {values.numel()} elements but indices has {indices.numel()}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be int64 or int32, got {indices.dtype}")
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < out.numel()):
        raise IndexError(f"indices must lie in [0, {out.numel()}), got [{int(indices.min())}, {int(indices.max())}]")
    backend = _backend_for(out)
    if backend == "ext":
        _modules["ext"].ops.sparse_accumulate(out, values, indices, alpha)
    elif backend == "numba":
        _modules["numba"].sparse_accumulate(out.view(-1).numpy(), _numpy_f32(values),
                                            indices.reshape(-1).long().numpy(), np.float32(alpha))
    else:
        reference.sparse_accumulate(out, values, indices, alpha)


# -- CO3's codecs ---------------------------------------------------------------------------
def _check_format(exponent: int, mantissa: int, bias: int, scale: float) -> None:
    if not (exponent >= 1 and mantissa >= 0 and exponent + mantissa <= 7):
        raise ValueError(f"float format [1, {exponent}, {mantissa}] needs exponent >= 1, mantissa >= 0 and "
                         "exponent + mantissa <= 7 (codes fit in one byte)")
    if not -64 <= bias <= 64:
        raise ValueError(f"float format bias must lie in [-64, 64], got {bias}")
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"float format scale must be positive and finite, got {scale}")


def float_encode(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float = 1.0,
                 seed: int | None = None, *, out: Tensor | None = None) -> Tensor:
    """uint8 codes of v / scale in the float format [1, exponent, mantissa] with ``bias``:
    round to nearest (ties to even) or, with ``seed``, stochastic rounding. Saturates; raises
    ValueError on NaN/Inf. ``out``: a contiguous uint8 tensor of v.numel() elements to write to
    (no allocation; what a hook that keeps its buffers wants)."""
    _check_float("v", v)
    _check_format(exponent, mantissa, bias, scale)
    _check_out("float_encode", out, v, torch.uint8)
    seed = -1 if seed is None else seed & ((1 << 63) - 1)
    backend = _backend_for(v)
    if backend == "ext":
        if out is not None:
            _modules["ext"].ops.float_encode.out(v, exponent, mantissa, bias, scale, seed, out=out)
            return out
        return _modules["ext"].ops.float_encode(v, exponent, mantissa, bias, scale, seed)
    if backend == "numba":
        x = _numpy_f32(v) / np.float32(scale)
        codes = torch.from_numpy(_modules["numba"].float_encode(x, exponent, mantissa, bias, seed))
    else:
        codes = reference.float_encode(v, exponent, mantissa, bias, scale, seed)
    return codes if out is None else out.copy_(codes)


def float_decode(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float = 1.0, *,
                 out: Tensor | None = None) -> Tensor:
    """The fp32 values (times ``scale``) of uint8 codes in the float format [1, exponent, mantissa];
    ``out``: a contiguous float32 tensor of codes.numel() elements to write to."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    _check_format(exponent, mantissa, bias, scale)
    _check_out("float_decode", out, codes, torch.float32)
    backend = _backend_for(codes)
    if backend == "ext":
        if out is not None:
            _modules["ext"].ops.float_decode.out(codes, exponent, mantissa, bias, scale, out=out)
            return out
        return _modules["ext"].ops.float_decode(codes, exponent, mantissa, bias, scale)
    if backend == "numba":
        flat_codes = codes.reshape(-1).contiguous().numpy()
        values = torch.from_numpy(_modules["numba"].float_decode(flat_codes, exponent, mantissa, bias,
                                                                 np.float32(scale)))
    else:
        values = reference.float_decode(codes, exponent, mantissa, bias, scale)
    return values if out is None else out.copy_(values)


def _check_out(op: str, out: Tensor | None, like: Tensor, dtype: torch.dtype) -> None:
    if out is not None and (out.dtype != dtype or not out.is_contiguous() or out.numel() != like.numel()
                            or out.device != like.device):
        raise ValueError(f"{op}: out must be a contiguous {dtype} tensor of {like.numel()} elements on "
                         f"{like.device}, got {out.dtype} of {out.numel()} elements; allocate it with "
                         f"torch.empty({like.numel()}, dtype={dtype})")


def _check_table(codes: Tensor, lengths: Tensor) -> None:
    if codes.dtype != torch.int32 or lengths.dtype != torch.uint8 or codes.shape != lengths.shape \
            or codes.dim() != 1 or codes.numel() > 256:
        raise TypeError("a Huffman table is (codes int32[A], lengths uint8[A]) with A <= 256 symbols; "
                        "build one with compressors.codecs.huffman.HuffmanTable")


def huffman_encode(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    """The uint8 ``symbols`` prefix-coded MSB-first (symbol s: the ``lengths[s]`` low bits of
    ``codes[s]``), zero-padded to whole bytes."""
    _check_table(codes, lengths)
    if symbols.dtype != torch.uint8:
        raise TypeError(f"symbols must be uint8, got {symbols.dtype}")
    if symbols.numel() and int(symbols.max()) >= codes.numel():
        raise ValueError(f"symbol {int(symbols.max())} is outside the table's {codes.numel()} symbols")
    backend = _backend_for(symbols)
    if backend == "ext":  # a CUDA tensor's stream is coded on the CPU and comes back to its device
        return _modules["ext"].ops.huffman_encode(symbols, codes, lengths)
    flat = symbols.reshape(-1).contiguous().cpu()
    if backend == "numba":
        stream = torch.from_numpy(_modules["numba"].huffman_encode(flat.numpy(), codes.cpu().numpy(),
                                                                   lengths.cpu().numpy()))
    else:
        stream = reference.huffman_encode(flat, codes.cpu(), lengths.cpu())
    return stream.to(symbols.device)


def huffman_decode(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    """The first ``n`` symbols (uint8) of a ``huffman_encode`` stream."""
    _check_table(codes, lengths)
    if stream.dtype != torch.uint8:
        raise TypeError(f"stream must be uint8, got {stream.dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    backend = _backend_for(stream)
    if backend == "ext":
        return _modules["ext"].ops.huffman_decode(stream, n, codes, lengths)
    flat = stream.reshape(-1).contiguous().cpu()
    if backend == "numba":
        symbols = torch.from_numpy(_modules["numba"].huffman_decode(flat.numpy(), n, codes.cpu().numpy(),
                                                                    lengths.cpu().numpy()))
    else:
        symbols = reference.huffman_decode(flat, n, codes.cpu(), lengths.cpu())
    return symbols.to(stream.device)
