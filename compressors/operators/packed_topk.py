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
        return self._encode(x.reshape(-1), rnd)[0]

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """v - C(v) in place, from the support at hand (no index rebuild)."""
        payload, indices = self._encode(v, rnd)
        kernels.sparse_accumulate(v, _values(payload), indices, -1.0)
        return payload, v

    def _encode(self, x: Tensor, rnd: Round) -> tuple[Payload, Tensor]:
        """The payload of flat ``x`` and its support (int64). A non-finite kept value (e + grad
        overflowed) gives a NaN scale, which decodes to NaN values and which the hook's payload
        check flags on every rank, as it does Top-K's."""
        values, indices = self.select(x, rnd)
        top = float(values.abs().max()) if values.numel() else 0.0
        scale = torch.tensor([_scale(top)], dtype=torch.float32, device=x.device)
        finite = math.isfinite(top)
        codes = FORMAT.encode(values, float(scale)) if finite else torch.zeros_like(indices, dtype=torch.uint8)
        blocks = indices.div(BLOCK, rounding_mode="floor")
        counts = torch.bincount(blocks, minlength=math.ceil(x.numel() / BLOCK))
        payload = Payload({"values": codes, "scale": scale, "block_indices": counts.to(torch.uint8),
                           "indices": (indices - blocks * BLOCK).to(torch.uint8)}, x.numel())
        return payload, indices

    def located(self, payload: Payload, rnd: Round) -> tuple[Tensor, Tensor]:
        """The decoded (fp32 values, int64 indices) of a payload."""
        parts = payload.parts
        blocks = torch.repeat_interleave(torch.arange(parts["block_indices"].numel(), device=parts["indices"].device),
                                         parts["block_indices"].long(),
                                         output_size=parts["indices"].numel())  # K known: no device sync
        return _values(payload), blocks * BLOCK + parts["indices"].long()


def _values(payload: Payload) -> Tensor:
    """The fp32 values s q of a payload (NaN where its scale is not finite)."""
    codes, s = payload.parts["values"], float(payload.parts["scale"])
    return FORMAT.decode(codes, s) if math.isfinite(s) else torch.full(codes.shape, math.nan, device=codes.device)


def _scale(top: float) -> float:
    """s: the least fp32 with top / s <= 480 (rounded up, so the largest value never saturates;
    at least fp32's least subnormal; 1 for a zero tensor; NaN for a non-finite one)."""
    if not math.isfinite(top):
        return math.nan
    if top == 0.0:
        return 1.0
    s = torch.tensor(max(top / FORMAT.max_value, 2.0 ** -149), dtype=torch.float32)
    if float(s) * FORMAT.max_value < top:
        s = torch.nextafter(s, torch.tensor(math.inf))
    return float(s)
