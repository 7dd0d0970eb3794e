"""The kernels behind the compressors, with one typed entry point per op.

Backends: ``ext`` (the C++ ops ``torch.ops.threepc.*``, the default), ``numba`` (used when the
extension cannot be imported, with one warning) and ``torch`` (``reference.py``, the
specification). ``THREEPC_BACKEND=ext|numba|torch`` forces one; ``use_backend`` switches
temporarily. Arguments are checked here, identically for every backend. Tensors on a device
that a backend has no kernel for (CUDA, until the CUDA kernels land) run the reference.
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
    return _backend if t.device.type == "cpu" else "torch"


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
