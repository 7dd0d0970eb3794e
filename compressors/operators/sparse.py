"""Sparsifiers: keep K coordinates, send their values and, unless the receiver can regenerate
them from shared randomness, their indices."""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


def index_dtype(numel: int) -> torch.dtype:
    """int32 indices, int64 for tensors of 2^31 elements or more."""
    return torch.int32 if numel < 2**31 else torch.int64


class Sparsifier(Compressor):
    """C(x) = sum over kept j of scale_j x_j e_j. Give ``ratio`` (K = max(1, ceil(ratio d)) per
    tensor) or a fixed ``k`` (clipped to d). Values are fp32 (32 bits each), indices int32."""

    sends_indices = True  # False: the receiver regenerates the support (shared seed)
    aligned = False  # True: all workers share the support, so value j means the same coordinate everywhere

    def __init__(self, ratio: float | None = None, *, k: int | None = None) -> None:
        name = type(self).__name__
        if (ratio is None) == (k is None):
            raise ValueError(f"{name} needs exactly one of ratio= (fraction of entries kept) or k= (entries kept)")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"{name} ratio must lie in (0, 1], got {ratio}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"{name} k must be an int of at least 1 (entries kept), got {k!r}")
        self.ratio, self.k = ratio, k

    def _size(self) -> str:
        return f"ratio={self.ratio}" if self.k is None else f"k={self.k}"

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        """Entries kept of a tensor with ``numel`` elements."""
        if self.k is not None:
            return min(self.k, numel)
        return min(numel, max(1, math.ceil(self.ratio * numel)))

    @abstractmethod
    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        """(scaled values, ascending indices) kept from the flat tensor x."""

    def support(self, numel: int, rnd: Round) -> Tensor:
        """The indices the receiver regenerates when ``sends_indices`` is False."""
        raise NotImplementedError(f"{self!r} sends its indices")

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        k = self.k_for(numel, rnd)
        parts = [PartSpec("values", torch.float32, k, self.aligned)]
        if self.sends_indices:
            parts.append(PartSpec("indices", index_dtype(numel), k))
        return parts

    def payload(self, values: Tensor, indices: Tensor, numel: int) -> Payload:
        """Wrap selected (values, indices) as this compressor's payload."""
        parts = {"values": values.float()}
        if self.sends_indices:
            parts["indices"] = indices.to(index_dtype(numel))
        return Payload(parts, numel)

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        values, indices = self.select(x.reshape(-1), rnd)
        return self.payload(values, indices, x.numel())

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """v - C(v) in place: v minus its kept (scaled) entries, O(K)."""
        payload = self.compress(v, rnd)
        kernels.sparse_accumulate(v, *self.located(payload, rnd), -1.0)
        return payload, v

    def located(self, payload: Payload, rnd: Round) -> tuple[Tensor, Tensor]:
        """(values, indices) of a payload, regenerating a shared support."""
        values = payload.parts["values"]
        if self.sends_indices:
            return values, payload.parts["indices"]
        indices = self.support(payload.numel, rnd)
        return values[:indices.numel()], indices

    def sent(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        """The indices of the entries a payload holds."""
        return self.located(payload, rnd)[1]

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        out = torch.zeros(payload.numel, dtype=torch.float32, device=payload.parts["values"].device)
        kernels.sparse_accumulate(out, *self.located(payload, rnd))
        return out

    def add_to(self, out: Tensor, payload: Payload, rnd: Round = ROUND0) -> None:
        """out += C(x) in O(K), no dense decode."""
        kernels.sparse_accumulate(out.view(-1), *self.located(payload, rnd))

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """One deterministic sparse_accumulate of every payload's entries, in rank order."""
        located = [self.located(p, rnd.of(r)) for r, p in enumerate(payloads) if p.parts]
        if not located:
            return  # every worker stayed silent
        kernels.sparse_accumulate(out, torch.cat([v for v, _ in located]),
                                  torch.cat([i for _, i in located]), alpha)  # cat promotes mixed index dtypes


class SupportFirst(Sparsifier):
    """A sparsifier whose support does not depend on the values (Rand-K, Perm-K): ``support``
    draws it, ``scale`` turns the fp32 entries gathered there into the payload's values."""

    @abstractmethod
    def support(self, numel: int, rnd: Round) -> Tensor:
        """The ascending indices kept in this round (the receiver regenerates them when shared)."""

    @abstractmethod
    def scale(self, gathered: Tensor, numel: int, rnd: Round) -> Tensor:
        """The payload's values from the fp32 entries at the support (a new tensor the caller
        owns, which ``scale`` may overwrite)."""

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        indices = self.support(x.numel(), rnd).to(x.device)
        return self.scale(x[indices].float(), x.numel(), rnd), indices

    def compress_difference(self, x: Tensor, y: Tensor, rnd: Round = ROUND0) -> Payload:
        """C(x - y) from x and y gathered at the support, O(K): the same bits as forming x - y
        (one subtraction per kept entry in the inputs' dtype, then fp32)."""
        x, y = x.reshape(-1), y.reshape(-1)
        indices = self.support(x.numel(), rnd).to(x.device)
        gathered = (x[indices] - y[indices]).float()
        return self.payload(self.scale(gathered, x.numel(), rnd), indices, x.numel())
