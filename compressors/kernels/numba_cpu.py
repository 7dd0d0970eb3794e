"""numba implementations of the kernels: the CPU fallback when the C++ extension is absent.

Same algorithm family as csrc/topk.cpp without the sampling front end: an exact radix
select on the magnitude keys (three digits of 11, 11 and 10 bits), ties to the lowest
index. Inputs are converted to contiguous fp32 numpy arrays by the caller.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _digit_threshold(keys: np.ndarray, k: int) -> tuple[np.uint32, np.int64]:
    """The k-th largest key T and how many keys equal to T are taken."""
    threshold = np.uint32(0)
    prefix_mask = np.uint32(0)
    needed = np.int64(k)
    for shift, bits in ((21, 11), (10, 11), (0, 10)):
        digit_mask = np.uint32((1 << bits) - 1)
        hist = np.zeros(1 << bits, np.int64)
        for key in keys:
            if (key & prefix_mask) == threshold:
                hist[(key >> np.uint32(shift)) & digit_mask] += 1
        digit = (1 << bits) - 1
        while hist[digit] < needed:
            needed -= hist[digit]
            digit -= 1
        threshold |= np.uint32(digit) << np.uint32(shift)
        prefix_mask |= digit_mask << np.uint32(shift)
    return threshold, needed


@numba.njit(cache=True)
def topk_abs(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.size
    indices = np.empty(k, np.int64)
    if k == 0:
        return x[:0].copy(), indices
    keys = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    threshold, ties = _digit_threshold(keys, k)
    j = 0
    for i in range(n):
        key = keys[i]
        if key > threshold or (key == threshold and ties > 0):
            if key == threshold:
                ties -= 1
            indices[j] = i
            j += 1
    return x[indices], indices


@numba.njit(cache=True)
def ef21_topk_step(grad: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, indices = topk_abs(grad - h, k)
    for j in range(k):
        h[indices[j]] += values[j]
    return values, indices


@numba.njit(cache=True)
def sparse_accumulate(out: np.ndarray, values: np.ndarray, indices: np.ndarray, alpha: np.float32) -> None:
    n = out.size
    for j in range(indices.size):
        if indices[j] < 0 or indices[j] >= n:
            raise IndexError("sparse_accumulate: index out of range for out")
    for j in range(indices.size):
        out[indices[j]] += alpha * values[j]
