"""Top-K sparsification: keep the K entries of largest magnitude."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import kernels
from .compressor import Compressor
from .payload import PartSpec, Payload


class TopK(Compressor):
    """Top-K: C(x)_i = x_i if |x_i| is among the K largest magnitudes (ties: lowest index), else 0.

    Contractive with alpha = K/d. Give either ``ratio`` (K = max(1, ceil(ratio * d)) per
    tensor) or a fixed ``k`` (clipped to d). Sends K fp32 values and K int32 indices (int64
    when d >= 2^31), 64 bits per kept entry.
    """

    def __init__(self, ratio: float | None = None, *, k: int | None = None) -> None:
        if (ratio is None) == (k is None):
            raise ValueError("TopK needs exactly one of ratio= (fraction of entries kept) or k= (entries kept)")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"TopK ratio must lie in (0, 1], got {ratio}")
        if k is not None and k < 1:
            raise ValueError(f"TopK k must be at least 1, got {k}")
        self.ratio, self.k = ratio, k

    def __repr__(self) -> str:
        return f"TopK(ratio={self.ratio})" if self.k is None else f"TopK(k={self.k})"

    def k_for(self, numel: int) -> int:
        """Entries kept of a tensor with ``numel`` elements."""
        if self.k is not None:
            return min(self.k, numel)
        return min(numel, max(1, math.ceil(self.ratio * numel)))

    def alpha(self, numel: int) -> float:
        return self.k_for(numel) / numel

    @staticmethod
    def index_dtype(numel: int) -> torch.dtype:
        return torch.int32 if numel < 2**31 else torch.int64

    def spec(self, numel: int) -> list[PartSpec]:
        k = self.k_for(numel)
        return [PartSpec("values", torch.float32, k), PartSpec("indices", self.index_dtype(numel), k)]

    def payload(self, values: Tensor, indices: Tensor, numel: int) -> Payload:
        """Wrap selected (values, indices) as this compressor's payload."""
        return Payload({"values": values.float(), "indices": indices.to(self.index_dtype(numel))}, numel)

    def compress(self, x: Tensor) -> Payload:
        values, indices = kernels.topk_abs(x, self.k_for(x.numel()))
        return self.payload(values, indices, x.numel())

    def decompress(self, payload: Payload) -> Tensor:
        out = torch.zeros(payload.numel, dtype=torch.float32, device=payload.parts["values"].device)
        kernels.sparse_accumulate(out, payload.parts["values"], payload.parts["indices"])
        return out

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float) -> None:
        """One deterministic sparse_accumulate of every payload's entries, in rank order."""
        values = torch.cat([p.parts["values"] for p in payloads])
        indices = torch.cat([p.parts["indices"] for p in payloads])
        kernels.sparse_accumulate(out, values, indices, alpha)
