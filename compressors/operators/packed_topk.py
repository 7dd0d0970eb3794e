"""Top-K at about 16 bits per kept entry: 8-bit float values and block-relative 8-bit indices."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round
from .float_format import FloatFormat
from .sparse import Sparsifier

BLOCK = 255  # entries per index block: a block's count (0..255) and an offset in it (0..254) each fit a byte
FORMAT = FloatFormat.parse("fp8-143")  # [1, 4, 3], bias 7: round to nearest, relative error <= 2^-4


class PackedTopK(Sparsifier):
    """Top-K that sends its K entries in about 16 bits each instead of 64 (fp32 value + int32
    index), so that the same bytes carry about four times as many entries:

        C(x)_j = s q(x_j / s)  for the K entries of largest |x_j|, else 0,   s = max_j |x_j| / 480,

    q rounding to the 8-bit float [1, 4, 3] (bias 7, largest value 480, so the largest entry is
    sent to fp32's rounding of s; s is at least fp32's least subnormal, 1 if x is 0). The support is the Top-K support, sent without loss as, for each block of
    255 entries, how many of the K it holds (one uint8 per block, part ``block_indices``), and
    each kept entry's offset in its block (uint8, ``indices``, blocks ascending). The payload is
    2K + ceil(d/255) + 4 bytes against 4d dense (K = 5% of d: 2.6% of the dense bytes).

    Contractive: a normal code's rounding error is at most 2^-4 |x_j|, a subnormal one's
    s 2^-10 = max|x_j| 2^-10 / 480, so ||C(x) - x||^2 <= ||x||^2 - (1 - 2^-8 - K 2^-20 / 480^2)
    ||TopK(x)||^2 and alpha = (K/d)(1 - 2^-8 - K 2^-20 / 480^2). Error feedback keeps the rounding
    error with the unsent mass (EF14's e <- v - C(v) subtracts the decoded values).
    """

    def __repr__(self) -> str:
        return f"PackedTopK({self._size()})"

    def alpha(self, numel: int) -> float:
        k = self.k_for(numel)
        return k / numel * (1.0 - 2.0 ** -8 - k * 2.0 ** -20 / FORMAT.max_value ** 2)

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        return kernels.topk_abs(x, self.k_for(x.numel()))

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        k = self.k_for(numel, rnd)
        return [PartSpec("values", torch.uint8, k), PartSpec("scale", torch.float32, 1),
                PartSpec("block_indices", torch.uint8, math.ceil(numel / BLOCK)), PartSpec("indices", torch.uint8, k)]

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        return self._encode(x.reshape(-1), rnd)[0]

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """v - C(v) in place, from the support and decoded values at hand (no index rebuild)."""
        payload, values, indices = self._encode(v, rnd)
        kernels.sparse_accumulate(v, values, indices, -1.0)
        return payload, v

    def _encode(self, x: Tensor, rnd: Round) -> tuple[Payload, Tensor, Tensor]:
        """The payload of flat ``x``, and the (fp32 values, int64 indices) it decodes to."""
        values, indices = self.select(x, rnd)
        indices = indices.long()
        top = float(values.abs().max())
        if not math.isfinite(top):
            raise ValueError("PackedTopK got NaN or Inf values, which 8-bit floats cannot code. Check the gradients "
                             "(loss scaling, a diverged step) before compressing")
        s = max(top / FORMAT.max_value, 2.0 ** -149) if top > 0.0 else 1.0  # fp32's least subnormal at least
        scale = torch.tensor([s], device=x.device)  # fp32, as sent
        codes = FORMAT.encode(values, float(scale))
        blocks = indices.div(BLOCK, rounding_mode="floor")
        counts = torch.bincount(blocks, minlength=math.ceil(x.numel() / BLOCK))
        payload = Payload({"values": codes, "scale": scale, "block_indices": counts.to(torch.uint8),
                           "indices": (indices - blocks * BLOCK).to(torch.uint8)}, x.numel())
        return payload, FORMAT.decode(codes, float(scale)), indices

    def located(self, payload: Payload, rnd: Round) -> tuple[Tensor, Tensor]:
        """The decoded (fp32 values, int64 indices) of a payload."""
        parts = payload.parts
        counts = parts["block_indices"].long()
        blocks = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
        indices = blocks * BLOCK + parts["indices"].long()
        return FORMAT.decode(parts["values"], float(parts["scale"])), indices
