"""Top-K at about 16 bits per kept entry: 8-bit float values and block-relative 8-bit indices."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..kernels import reference
from ..core.compressor import ROUND0
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round
from .float_format import FloatFormat
from .topk import TopK

BLOCK = 255  # entries per index block: a block's count (0..255) and an offset in it (0..254) each fit a byte
FORMAT = FloatFormat.parse("fp8-143")  # [1, 4, 3], bias 7: round to nearest, relative error <= 2^-4


class PackedTopK(TopK):
    """Top-K that sends its K entries in about 16 bits each instead of 64 (fp32 value + int32
    index), so that the same bytes carry about four times as many entries:

        C(x)_j = s q(x_j / s)  for the K entries of largest |x_j|, else 0,   s ~ max_j |x_j| / 480,

    q rounding to the 8-bit float [1, 4, 3] (bias 7, largest value 480, so the largest entry is
    sent to fp32's rounding of s). s is the least fp32 number at or above max|x_j| / 480, so at
    most twice it (where it is a subnormal), and at least fp32's least subnormal (1 if x is 0).
    The support is Top-K's (``TopK.select``), sent without loss as, for each block of 255 entries,
    how many of the K it holds (one uint8 per block, part ``block_indices``), and each kept
    entry's offset in its block (uint8, ``indices``, blocks ascending). The payload is
    2K + ceil(d/255) + 4 bytes against 4d dense (K = 5% of d: 2.6% of the dense bytes).

    Contractive: a normal code's rounding error is at most 2^-4 |x_j|, a subnormal one's
    s 2^-10 <= 2 max|x_j| 2^-10 / 480, so ||C(x) - x||^2 <= ||x||^2 - (1 - 2^-8 - K 2^-18 / 480^2)
    ||TopK(x)||^2 and alpha = (K/d)(1 - 2^-8 - K 2^-18 / 480^2). Error feedback keeps the rounding
    error with the unsent mass (EF14's e <- v - C(v) subtracts the decoded values).
    """

    def __repr__(self) -> str:
        return f"PackedTopK({self._size()})"

    def alpha(self, numel: int) -> float:
        k = self.k_for(numel)
        return k / numel * (1.0 - 2.0 ** -8 - k * 2.0 ** -18 / FORMAT.max_value ** 2)

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        k = self.k_for(numel, rnd)
        return [PartSpec("values", torch.uint8, k), PartSpec("scale", torch.float32, 1),
                PartSpec("block_indices", torch.uint8, math.ceil(numel / BLOCK)), PartSpec("indices", torch.uint8, k)]

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        """The payload of x: ``kernels.packed_encode`` of Top-K's (values, indices). A non-finite
        kept value (e + grad overflowed) gives a NaN scale, which decodes to NaN values and which
        the hook's payload check flags on every rank, as it does Top-K's."""
        x = x.reshape(-1)
        values, indices = self.select(x, rnd)
        codes, scale, counts, offsets = kernels.packed_encode(values, indices, x.numel(), BLOCK, FORMAT.exponent,
                                                              FORMAT.mantissa, FORMAT.bias)
        return Payload({"values": codes, "scale": scale, "block_indices": counts, "indices": offsets}, x.numel())

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """v - C(v) in place, O(K): one pass over the payload's entries."""
        payload = self.compress(v, rnd)
        self.accumulate(v, [payload], -1.0, rnd)
        return payload, v

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        out = torch.zeros(payload.numel, dtype=torch.float32, device=payload.parts["values"].device)
        self.accumulate(out, [payload], 1.0, rnd)
        return out

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """One ``kernels.packed_accumulate`` of every payload's entries, in rank order (no index or
        value tensors built)."""
        present = [p.parts for p in payloads if p.parts]  # empty: a worker that stayed silent
        if present:
            kernels.packed_accumulate(out, [p["values"] for p in present], [p["scale"] for p in present],
                                      [p["block_indices"] for p in present], [p["indices"] for p in present], BLOCK,
                                      FORMAT.exponent, FORMAT.mantissa, FORMAT.bias, alpha)

    def sent(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        """The payload's indices alone, O(K), no value decoded."""
        return reference.packed_positions(payload.parts["block_indices"], payload.parts["indices"], BLOCK)

    def located(self, payload: Payload, rnd: Round) -> tuple[Tensor, Tensor]:
        """The decoded (fp32 values, int64 indices) of a payload, from the kernels' plain-torch
        specification (``kernels.reference.packed_decode``)."""
        p = payload.parts
        return reference.packed_decode(p["values"], p["scale"], p["block_indices"], p["indices"], BLOCK,
                                       FORMAT.exponent, FORMAT.mantissa, FORMAT.bias)
