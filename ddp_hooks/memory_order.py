"""A parameter's slice of a DDP bucket in the parameter's memory order, and back.

DDP lays each parameter's gradient out in the parameter's own memory order (e.g. channels_last)
when that order is dense, so a slice of a bucket (or of a memory shaped like one) is read with
the parameter's strides. Checkpoints hold slices in the logical (row-major) order, so that they
load into a model whose parameters have another memory format."""
from __future__ import annotations

import torch
from torch import Tensor


def permuted(p: Tensor) -> bool:
    """Whether DDP's bucket holds ``p`` in an order other than row-major (dense, not contiguous)."""
    return not p.is_contiguous() and dense(p)


def shaped(flat: Tensor, p: Tensor) -> Tensor:
    """``flat``, a parameter's slice of a bucket, as a tensor like ``p`` (a view)."""
    return flat.as_strided(p.size(), p.stride()) if permuted(p) else flat.view_as(p)


def logical(flat: Tensor, p: Tensor) -> Tensor:
    """A bucket slice of ``p`` in row-major order (``flat`` itself when ``p`` is contiguous)."""
    return shaped(flat, p).contiguous().view(-1) if permuted(p) else flat


def bucket_order(flat: Tensor, p: Tensor) -> Tensor:
    """A row-major slice of ``p`` in the order DDP's bucket holds ``p`` (inverse of ``logical``)."""
    if not permuted(p):
        return flat
    out = torch.empty_strided(p.size(), p.stride(), dtype=flat.dtype, device=flat.device)
    out.copy_(flat.view(p.size()))
    return out.as_strided((p.numel(),), (1,))


def dense(p: Tensor) -> bool:
    """Whether ``p``'s strides are a permutation of a contiguous layout (no gaps, no overlaps)."""
    expected = 1
    for size, stride in sorted(zip(p.size(), p.stride()), key=lambda d: (d[1], d[0])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True
