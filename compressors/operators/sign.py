"""Scaled sign: one bit per entry and one scale per block (EF-SignSGD, Karimireddy, Rebjock,
Stich, Jaggi 2019, "Error Feedback Fixes SignSGD", Alg. 1; the compressor of 1-bit Adam, Tang et
al. 2021, applies it to Adam's momentum).

For a flat x cut into blocks b of ``block`` entries (the last one shorter),

    C(x)_j = s_b sign(x_j),   s_b = ||x_b||_1 / |b|,   sign(0) = +1,

and ||C(x) - x||^2 = ||x||^2 - sum_b ||x_b||_1^2 / |b|, so C is contractive with
alpha(x) = sum_b ||x_b||_1^2 / (|b| ||x||^2) >= 1/block (the worst case: one non-zero per block;
Karimireddy et al., Lemma 8); the bf16 scale s~_b adds |b| (s~_b - s_b)^2 <= 2^-16 ||x_b||^2 where
s_b is a bf16 normal number (>= 2^-126), and at most |b| 2^-268 (half bf16's least subnormal,
squared) below, where a scale under 2^-134 rounds to 0 and that block is not sent at all.

A payload is the signs packed eight to a byte (bit j % 8 of byte j // 8, 1 = negative) and the
block scales in bf16: d + 16 ceil(d / block) bits, about 1/32 of fp32 plus 1/(2 block). The
scales are rounded to bf16 (saturating) before use, so C(x) is exactly what the receiver decodes.
The kernels (``kernels.sign_encode``/``sign_residual``/``sign_decode``; the rounding is in
``kernels.reference``) encode and write the error-feedback residual in one pass.

``fraction`` f < 1 sends fewer than one bit per entry: round t applies C to a cyclic window W_t of w
= ceil(f d) entries, W_t = {(t w + i) mod d : i < w} (the window that starts where round t - 1's
ended), and sends nothing of the rest; a window that wraps past the end is two pieces, each in its
own blocks. Entries outside W_t are not compressed at all, so one round is not contractive (alpha =
0: an x supported outside W_t is not sent); for f >= 1/2 the windows of any two consecutive rounds
cover every entry, so error feedback (EF14) holds an entry at most one round before it goes out. No
indices travel: every rank derives W_t from t.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..kernels.checks import sign_blocks
from ..core.compressor import ROUND0, Compressor
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


class ScaledSign(Compressor):
    """C(x) = s_b sign(x) per block of ``block`` entries, on the round's window of a ``fraction`` of
    the entries (module docstring; fraction 1: every entry, every round)."""

    def __init__(self, block: int = 2048, fraction: float = 1.0) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"ScaledSign block must be an int of at least 1 entry, got {block!r}")
        if not 0.5 <= fraction <= 1.0:
            raise ValueError(f"ScaledSign fraction must be in [0.5, 1] (the share of entries whose signs a round "
                             f"sends; below 1/2 two rounds' windows leave entries out), got {fraction}")
        self.block, self.fraction = block, fraction

    def __repr__(self) -> str:
        return f"ScaledSign(block={self.block})" if self.fraction == 1.0 else \
            f"ScaledSign(block={self.block}, fraction={self.fraction})"

    def alpha(self, numel: int) -> float:
        """The worst case over x != 0, one non-zero entry in the longest block (1 / block), less
        what bf16's rounding of s_b can add: |b| (s~_b - s_b)^2 <= 2^-16 ||x_b||^2 (for blocks whose
        scale is a bf16 normal number; below 2^-126, up to |b| 2^-268 more: module docstring)."""
        if self.fraction < 1.0:
            raise ValueError(f"{self!r} is not contractive in one round (an x outside the round's window is not "
                             "sent): use it with EF14, or fraction=1 where alpha is needed (EF21, CLAG)")
        return 1.0 / min(self.block, max(numel, 1)) - 2.0 ** -16

    def pieces(self, numel: int, rnd: Round = ROUND0) -> list[slice]:
        """The round's window W_t as contiguous slices: one, or two where it wraps past the end."""
        if self.fraction == 1.0 or numel == 0:
            return [slice(0, numel)]
        width = min(numel, max(1, math.ceil(self.fraction * numel)))
        start = rnd.t * width % numel
        end = start + width
        return [slice(start, min(end, numel))] + ([slice(0, end - numel)] if end > numel else [])

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        sizes = [c.stop - c.start for c in self.pieces(numel, rnd)]
        return [PartSpec("signs", torch.uint8, sum((n + 7) // 8 for n in sizes)),
                PartSpec("scales", torch.bfloat16, sum(sign_blocks(n, self.block) for n in sizes))]

    def _payload(self, encoded: list[tuple[Tensor, Tensor]], numel: int) -> Payload:
        if len(encoded) == 1:
            return Payload({"signs": encoded[0][0], "scales": encoded[0][1]}, numel)
        return Payload({"signs": torch.cat([s for s, _ in encoded]), "scales": torch.cat([b for _, b in encoded])},
                       numel)

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(v), v - C(v)), written into the caller's temporary v (one pass, no dense C(v))."""
        if v.dtype != torch.float32 or not v.is_contiguous():
            v = v.float().contiguous()
        v = v.view(-1)
        return self._payload([kernels.sign_residual(v[c], self.block) for c in self.pieces(v.numel(), rnd)],
                             v.numel()), v

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        flat = x.reshape(-1)
        return self._payload([kernels.sign_encode(flat[c], self.block) for c in self.pieces(x.numel(), rnd)],
                             x.numel())

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """out += alpha * sum_r C_r in one pass over ``out``'s window (``kernels.sign_accumulate``, rank
        order; alpha scales each s_b); an empty payload adds nothing."""
        sent = [p for p in payloads if p.parts]
        if not sent:
            return
        signs, scales, out = 0, 0, out.view(-1)
        for c in self.pieces(out.numel(), rnd):
            n = c.stop - c.start
            nbytes, nblocks = (n + 7) // 8, sign_blocks(n, self.block)
            kernels.sign_accumulate(out[c], [p.parts["signs"][signs:signs + nbytes] for p in sent],
                                    [p.parts["scales"][scales:scales + nblocks] for p in sent], self.block, alpha)
            signs, scales = signs + nbytes, scales + nblocks

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        if self.fraction == 1.0:
            return kernels.sign_decode(payload.parts["signs"], payload.parts["scales"], payload.numel, self.block)
        out = torch.zeros(payload.numel, dtype=torch.float32, device=payload.parts["signs"].device)
        self.accumulate(out, [payload], 1.0, rnd)
        return out
