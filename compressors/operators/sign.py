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
The kernels (``kernels.sign_encode``/``sign_residual``/``sign_decode``; the rounding is in
``kernels.reference``) encode and write the error-feedback residual in one pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..kernels.checks import sign_blocks
from ..core.compressor import ROUND0, Compressor
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


class ScaledSign(Compressor):
    """C(x) = s_b sign(x) per block of ``block`` entries (module docstring)."""

    def __init__(self, block: int = 2048) -> None:
        if block < 1:
            raise ValueError(f"ScaledSign block must be at least 1 entry, got {block}")
        self.block = block

    def __repr__(self) -> str:
        return f"ScaledSign(block={self.block})"

    def alpha(self, numel: int) -> float:
        """The worst case over x != 0, one non-zero entry in the longest block (1 / block), less
        what bf16's rounding of s_b can add: |b| (s~_b - s_b)^2 <= 2^-16 ||x_b||^2."""
        return 1.0 / min(self.block, max(numel, 1)) - 2.0 ** -16

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("signs", torch.uint8, (numel + 7) // 8),
                PartSpec("scales", torch.bfloat16, sign_blocks(numel, self.block))]

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(v), v - C(v)), written into the caller's temporary v (one pass, no dense C(v))."""
        if v.dtype != torch.float32 or not v.is_contiguous():
            v = v.float().contiguous()
        signs, scales = kernels.sign_residual(v, self.block)
        return Payload({"signs": signs, "scales": scales}, v.numel()), v

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        signs, scales = kernels.sign_encode(x, self.block)
        return Payload({"signs": signs, "scales": scales}, x.numel())

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """out += alpha * sum_r C_r in one pass over ``out`` (``kernels.sign_accumulate``, rank order;
        alpha scales each s_b); an empty payload adds nothing."""
        sent = [p for p in payloads if p.parts]
        if sent:
            kernels.sign_accumulate(out, [p.parts["signs"] for p in sent], [p.parts["scales"] for p in sent],
                                    self.block, alpha)

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        return kernels.sign_decode(payload.parts["signs"], payload.parts["scales"], payload.numel, self.block)
