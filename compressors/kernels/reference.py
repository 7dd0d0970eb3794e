"""Plain-torch reference kernels: the executable specification.

Every backend (the C++ extension, numba) must return exactly what these return.

* ``topk_abs(x, k)``: the k entries of largest |x|, ties broken by the lowest index, returned
  as (values, indices) with indices ascending. Magnitudes are ordered by the bits of |x|
  (NaN above +inf, -0 equal to +0), the order of ``torch.sort`` on the IEEE bit pattern.
* ``ef21_topk_step(grad, h, k)``: d = grad - h in fp32; (values, indices) = topk_abs(d, k);
  h[indices] += values (EF21's update g_i <- g_i + TopK(grad - g_i)).
* ``sparse_accumulate(out, values, indices, alpha)``: out[indices[j]] += alpha * values[j], row
  after row of the (ranks, k) inputs, so every coordinate sums in rank order.
"""
from __future__ import annotations

import torch
from torch import Tensor

_ABS_MASK = 0x7FFFFFFF


def magnitude_key(x: Tensor) -> Tensor:
    """int32 key whose order is the order of |x| (the fp32 bit pattern without its sign)."""
    return x.reshape(-1).float().contiguous().view(torch.int32) & _ABS_MASK


def topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    flat = x.reshape(-1)
    order = torch.sort(magnitude_key(flat), descending=True, stable=True).indices[:k]
    indices = order.sort().values
    return flat[indices], indices


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    d = grad.reshape(-1).float() - h.view(-1)
    values, indices = topk_abs(d, k)
    h.view(-1)[indices] += values
    return values, indices


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    if values.numel() == 0:
        return
    rows = values.shape[0] if values.dim() > 1 else 1
    flat = out.view(-1)
    for v, i in zip(values.float().reshape(rows, -1), indices.long().reshape(rows, -1)):
        flat.index_add_(0, i, v, alpha=alpha)
