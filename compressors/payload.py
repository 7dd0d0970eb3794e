"""What one worker sends for one tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Payload:
    """Named tensors that cross the wire, plus the length of the dense tensor they encode.

    Sizes are the tensors' own bytes: a payload costs exactly what is sent (fp32 values are 32
    bits each, int32 indices 32 bits each). The DDP hook adds its padding and headers on top.
    """

    parts: dict[str, Tensor]
    numel: int

    def bits(self) -> dict[str, int]:
        """Bits per part, e.g. ``{"values": 32 * k, "indices": 32 * k}``."""
        return {name: t.numel() * t.element_size() * 8 for name, t in self.parts.items()}

    def total_bits(self) -> int:
        return sum(self.bits().values())


@dataclass(frozen=True)
class PartSpec:
    """Shape of one payload part as the receiver expects it: name, dtype and element count."""

    name: str
    dtype: torch.dtype
    numel: int
