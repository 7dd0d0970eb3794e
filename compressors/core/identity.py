"""The identity compressor: send the dense tensor."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .compressor import ROUND0, Compressor
from .payload import PartSpec, Payload
from .rounds import Round


class Identity(Compressor):
    """C(x) = x: contractive with alpha = 1 and unbiased with omega = 0; d fp32 values, aligned
    across workers (a linear aggregate needs only their mean: one allreduce in DDP)."""

    def __repr__(self) -> str:
        return "Identity()"

    def alpha(self, numel: int) -> float:
        return 1.0

    def omega(self, numel: int, workers: int = 1) -> float:
        return 0.0

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("dense", torch.float32, numel, aligned=True)]

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        """x's fp32 entries: a view of x when it is a contiguous fp32 tensor (no copy; the
        caller sends or reads the payload before it changes x, as DDP's hook, which packs it
        into the collective's buffer at once, and the simulation do), else a converted copy."""
        return Payload({"dense": x.reshape(-1).to(torch.float32)}, x.numel())

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        return payload.parts["dense"]

    def mean(self, out: Tensor, payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """One payload (the mean an averaging allreduce delivers) is copied, not added to zeros."""
        if len(payloads) == 1 and payloads[0].parts:
            out.view(-1).copy_(payloads[0].parts["dense"])
        else:
            super().mean(out, payloads, rnd)
