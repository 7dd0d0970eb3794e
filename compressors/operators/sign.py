"""Scaled sign: one bit per entry and one scale per block (EF-SignSGD, Karimireddy, Rebjock,
Stich, Jaggi 2019, "Error Feedback Fixes SignSGD", Alg. 1; the compressor of 1-bit Adam, Tang et
al. 2021, applies it to Adam's momentum).

For a flat x cut into blocks b of ``block`` entries (the last one shorter),

    C(x)_j = s_b sign(x_j),   s_b = ||x_b||_1 / |b|,   sign(0) = +1,

and ||C(x) - x||^2 = ||x||^2 - sum_b ||x_b||_1^2 / |b|, so C is contractive with
alpha(x) = sum_b ||x_b||_1^2 / (|b| ||x||^2) >= 1/block (the worst case: one non-zero per block;
Karimireddy et al., Lemma 8); the bf16 scale s~_b adds |b| (s~_b - s_b)^2 <= 2^-16 ||x_b||^2.

A payload is the signs packed eight to a byte (bit j % 8 of byte j // 8, 1 = negative) and the
block scales in bf16: d + 16 ceil(d / block) bits, about 1/32 of fp32 plus 1/(2 block). The
scales are rounded to bf16 (saturating) before use, so C(x) is exactly what the receiver decodes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.compressor import ROUND0, Compressor
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round

_BF16_MAX = torch.finfo(torch.bfloat16).max
_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_SIGNS = 1.0 - 2.0 * (torch.arange(256).unsqueeze(1) & _BIT).ne(0).float()  # byte -> its 8 signs (+-1)


class ScaledSign(Compressor):
    """C(x) = s_b sign(x) per block of ``block`` entries (module docstring)."""

    def __init__(self, block: int = 2048) -> None:
        if block < 1:
            raise ValueError(f"ScaledSign block must be at least 1 entry, got {block}")
        self.block = block

    def __repr__(self) -> str:
        return f"ScaledSign(block={self.block})"

    def blocks(self, numel: int) -> int:
        return max(1, math.ceil(numel / self.block))

    def alpha(self, numel: int) -> float:
        """The worst case over x != 0, one non-zero entry in the longest block (1 / block), less
        what bf16's rounding of s_b can add: |b| (s~_b - s_b)^2 <= 2^-16 ||x_b||^2."""
        return 1.0 / min(self.block, max(numel, 1)) - 2.0 ** -16

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("signs", torch.uint8, (numel + 7) // 8), PartSpec("scales", torch.bfloat16, self.blocks(numel))]

    def _scales(self, x: Tensor) -> Tensor:
        """s_b = sum_j |x_j| / |b| in fp32 (each term divided first: no overflow near the fp32
        maximum), saturated to bf16's largest finite value and rounded to bf16 (what travels);
        a non-finite block stays non-finite."""
        d, blocks = x.numel(), self.blocks(x.numel())
        counts = torch.full((blocks, 1), float(self.block), device=x.device)
        counts[-1] = max(1, d - self.block * (blocks - 1))  # an empty tensor: one zero scale
        padded = torch.nn.functional.pad(x.abs(), (0, blocks * self.block - d)).view(blocks, -1)
        sums = padded.div_(counts).sum(1)
        return torch.where(sums.isfinite(), sums.clamp(max=_BF16_MAX), sums).to(torch.bfloat16)

    def _signed(self, signs: Tensor, scales: Tensor, numel: int) -> Tensor:
        """s_b sign_j for the first ``numel`` entries: each byte's 8 signs by table lookup."""
        out = _SIGNS.to(signs.device).index_select(0, signs.long()).view(-1)[:numel]
        return out.mul_(scales.float().repeat_interleave(self.block)[:numel])

    def encode(self, x: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        v = x.reshape(-1).float()
        d = v.numel()
        padded = torch.zeros((d + 7) // 8 * 8, dtype=torch.uint8, device=v.device)
        padded[:d] = v < 0
        signs = (padded.view(-1, 8) * _BIT.to(v.device)).sum(1, dtype=torch.uint8)
        scales = self._scales(v)
        return Payload({"signs": signs, "scales": scales}, d), self._signed(signs, scales, d)

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(v), v - C(v)), written into the caller's temporary v."""
        payload, decoded = self.encode(v, rnd)
        return payload, v.sub_(decoded)

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        return self.encode(x, rnd)[0]

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        return self._signed(payload.parts["signs"], payload.parts["scales"], payload.numel)
