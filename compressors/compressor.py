"""Stateless compressors: a tensor to a Payload and back (GRACE's "Compressor" role)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor

from .payload import PartSpec, Payload


class Compressor(ABC):
    """C: R^d -> R^d, applied as ``decompress(compress(x))``.

    A *contractive* compressor satisfies E||C(x) - x||^2 <= (1 - alpha)||x||^2 (Top-K: alpha = K/d).
    """

    @abstractmethod
    def compress(self, x: Tensor) -> Payload:
        """Encode x (any shape, fp32/fp16/bf16) into what is sent."""

    @abstractmethod
    def decompress(self, payload: Payload) -> Tensor:
        """The dense fp32 tensor (1-D, ``payload.numel`` elements) that the payload encodes."""

    @abstractmethod
    def spec(self, numel: int) -> list[PartSpec]:
        """The parts of a payload for a tensor of ``numel`` elements, in wire order."""

    @abstractmethod
    def alpha(self, numel: int) -> float:
        """Contraction parameter alpha of this compressor on R^numel."""

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float) -> None:
        """out += alpha * sum_r decompress(payloads[r]), in order r = 0, 1, ... (deterministic)."""
        for payload in payloads:
            out.view(-1).add_(self.decompress(payload), alpha=alpha)
