"""Float quantization with lossless coding: CO3's compressor (Chen, Hernandez, Huang, Rini 2022,
"Communication-Efficient Federated Learning with Lossless Gradient Coding", arXiv 2204.08211).

Q(x) = s F(x / s): a per-tensor scale s, rounding to a low-precision float format F
(``FloatFormat``), and a lossless prefix code of the uint8 codes. A payload is

* ``scale``: fp32[1], s;
* the code's description: nothing (``coder="none"``: fixed-width bit packing), ``model``
  int16[3] (``"huffman"`` and ``"rans"``: the fraction of zeros and the GenNorm shape and scale,
  quantized, from which every receiver rebuilds the same Huffman table or rANS frequencies; the
  model is a spike of exact zeros, which ReLU networks and sparse inputs produce in bulk, plus a
  GenNorm fitted to the non-zero values) or ``lengths`` uint8[2^bits / 2] (``"empirical"``: a
  Huffman code of this tensor's histogram, codeword lengths as nibbles);
* ``bytes``: the coded stream, variable length except for ``coder="none"``; with ``"rans"`` it
  includes the coder's 8-byte final state. With ``"rans_empirical"`` (rANS of this tensor's
  histogram, ``codecs.histogram``) it starts with the histogram's self-delimiting header (its
  counts as half-octave levels, Exp-Golomb coded: about 70-90 bytes for fp8, 10 for fp4), then
  the rANS stream.

Huffman spends a whole number of bits per symbol, rANS (``codecs.rans``) the model's
-log2 p(symbol) up to a fraction of a percent. With a model coder and formats of at most 4 bits,
each symbol is a pair of codes (a + 16 b, the model's p(a) p(b)): a prefix code spends at least
one bit per symbol, and fp4 codes, mostly zero, have about 1.1 to 1.3 bits of entropy each; pairs
halve that floor (on the demo model's gradients, ``benchmarks/co3_entropy.py``), and halve the
steps of either coder. ``"rans_empirical"`` codes fp4 codes one per symbol: rANS has no one-bit
floor, and a histogram of pairs (up to 256 symbols) needs a header of 60-90 bytes against about
10 for 16 codes, which at the demo model's 12K values costs more than pairs save.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..codecs import gennorm, histogram
from ..core.compressor import ROUND0, Compressor
from .float_format import FloatFormat
from ..codecs.huffman import HuffmanTable
from ..codecs.rans import RansTable
from ..kernels.reference import packed_scale
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round

SCALES = ("max", "gennorm")
CODERS = ("none", "huffman", "rans", "empirical", "rans_empirical")
MODEL_CODERS = {"huffman": HuffmanTable, "rans": RansTable}  # coders whose table follows from the GenNorm model
ROUNDINGS = ("nearest", "stochastic")
_MODEL_STEPS = 64  # the GenNorm parameters travel as round(64 log2(.)) in int16
_ZERO_STEPS = 256  # the fraction of exact zeros travels as round(256 p0)
_MIN_WEIGHT = 2.0 ** -40  # every code gets a codeword, however unlikely the model says it is
_FP32 = torch.finfo(torch.float32)


def _quantize_log(x: float) -> int:
    return int(np.clip(round(_MODEL_STEPS * math.log2(x)), -32768, 32767))


@functools.lru_cache(maxsize=4096)
def _model_table(fmt: FloatFormat, coder: str, zero_q: int, beta_q: int, ratio_q: int) -> HuffmanTable | RansTable:
    """The ``coder`` table (Huffman or rANS) of ``fmt``'s codes for x / s ~ p0 delta_0 +
    (1 - p0) GenNorm(beta, alpha / s) (all three quantized); for formats of at most 4 bits, of
    code pairs a + 16 b."""
    beta, ratio = 2.0 ** (beta_q / _MODEL_STEPS), 2.0 ** (ratio_q / _MODEL_STEPS)
    zeros = zero_q / _ZERO_STEPS
    p = (1 - zeros) * gennorm.bin_probabilities(fmt.values(), beta, ratio)
    p[0] += zeros
    if _codes_pairs(fmt):
        pairs = np.zeros((16, 16))
        pairs[: fmt.codes, : fmt.codes] = np.outer(p, p)  # [b, a]: symbol a + 16 b
        p = pairs.reshape(-1)
    return MODEL_CODERS[coder].from_weights(np.maximum(p, _MIN_WEIGHT))


def _codes_pairs(fmt: FloatFormat) -> bool:
    return fmt.bits <= 4


def _join_pairs(codes: Tensor) -> Tensor:
    """Codes (< 16) two per symbol: codes[2i] + 16 codes[2i+1], a zero code appended if odd."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return codes[0::2] | (codes[1::2] << 4)


def _split_pairs(symbols: Tensor, n: int) -> Tensor:
    return torch.stack([symbols & 15, symbols >> 4], 1).reshape(-1)[:n]


class FloatQuantizer(Compressor):
    """s F(x / s) with s from max|x| (``scale="max"``: the largest magnitude maps to F's largest
    value, nothing saturates) or from a GenNorm fit (``"gennorm"``: the clip point that
    minimises the model's mean squared error, ``gennorm.clip_ratio``), rounded to nearest or
    stochastically (unbiased up to saturation), then coded by ``coder``."""

    def __init__(self, fmt: str | FloatFormat = "fp8-152", *, scale: str = "max", coder: str = "none",
                 rounding: str = "nearest", seed: int = 0) -> None:
        for name, value, allowed in (("scale", scale, SCALES), ("coder", coder, CODERS),
                                     ("rounding", rounding, ROUNDINGS)):
            if value not in allowed:
                raise ValueError(f"FloatQuantizer {name}={value!r}; use one of {', '.join(allowed)}")
        self.fmt = fmt if isinstance(fmt, FloatFormat) else FloatFormat.parse(fmt)
        self.scale, self.coder, self.rounding, self.seed = scale, coder, rounding, seed
        self.deterministic = rounding == "nearest"
        self._magnitudes = tuple(float(v) for v in np.unique(np.abs(self.fmt.values())))

    def __repr__(self) -> str:
        return (f"FloatQuantizer({str(self.fmt)!r}, scale={self.scale!r}, coder={self.coder!r}, "
                f"rounding={self.rounding!r})")

    # -- wire layout ----------------------------------------------------------------------
    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        parts = [PartSpec("scale", torch.float32, 1)]
        if self.coder in MODEL_CODERS:
            parts.append(PartSpec("model", torch.int16, 3))
        elif self.coder == "empirical":
            parts.append(PartSpec("lengths", torch.uint8, self.fmt.codes // 2))
        fixed = (numel * self.fmt.bits + 7) // 8 if self.coder == "none" else None
        return parts + [PartSpec("bytes", torch.uint8, fixed)]

    # -- encoding -------------------------------------------------------------------------
    def encode(self, x: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """The payload of x and the fp32 Q(x) it decodes to (without decoding the stream)."""
        payload, codes, s = self._coded(x, rnd)
        return payload, self.fmt.decode(codes, s)

    def _coded(self, x: Tensor, rnd: Round) -> tuple[Payload, Tensor, float]:
        """The payload of x, its float codes and the scale s (as the receiver reads it)."""
        v = x.reshape(-1)
        if self.coder in MODEL_CODERS or self.scale == "gennorm":  # the model of the non-zero values
            nonzero, magnitudes, squares = kernels.abs_moments(v).tolist()
            zero_q = round(_ZERO_STEPS * (1 - nonzero / max(v.numel(), 1)))
            beta, alpha = gennorm.fit_moments(magnitudes / nonzero, squares / nonzero) if nonzero else (2.0, 0.0)
            beta_q = _quantize_log(beta)
        # s is an fp32 (the receiver reads it so) and a normal one: the codecs divide by it
        s = math.nan
        if self.scale == "gennorm" and alpha > 0:
            clip = gennorm.clip_ratio(self._magnitudes, 2.0 ** (beta_q / _MODEL_STEPS))
            s = float(torch.tensor(max(alpha * clip / self.fmt.max_value, _FP32.tiny), dtype=torch.float32))
        if not s * self.fmt.max_value <= _FP32.max:  # "max", or a model whose largest code overflows fp32
            s = max(packed_scale(float(v.abs().max()) if v.numel() else 0.0, self.fmt.max_value), _FP32.tiny)
        if not math.isfinite(s):
            raise ValueError(f"{self!r}: the tensor has non-finite values, or values so large that no fp32 scale "
                             "maps them into the format; the float formats have no codes for NaN/Inf. Check the "
                             "gradients before compressing")
        seed = rnd.key(self.seed, v.numel(), shared=False) if self.rounding == "stochastic" else None
        codes = self.fmt.encode(v, s, seed)
        parts = {"scale": torch.tensor([s], dtype=torch.float32, device=v.device)}
        if self.coder in MODEL_CODERS:
            ratio_q = _quantize_log(alpha / s) if alpha > 0 else 0
            parts["model"] = torch.tensor([zero_q, beta_q, ratio_q], dtype=torch.int16, device=v.device)
            table = _model_table(self.fmt, self.coder, zero_q, beta_q, ratio_q)
        elif self.coder == "empirical":
            counts = torch.bincount(codes, minlength=self.fmt.codes).cpu().numpy() + 1  # add-one: every code gets one
            table = HuffmanTable.from_weights(counts)
            parts["lengths"] = table.header().to(v.device)
        elif self.coder == "rans_empirical":
            levels = histogram.levels(torch.bincount(codes, minlength=self.fmt.codes).cpu().numpy())
            table = histogram.table(levels)
        else:
            table = HuffmanTable.fixed(self.fmt.bits)
        parts["bytes"] = table.encode(self.symbols(codes))
        if self.coder == "rans_empirical":
            parts["bytes"] = torch.cat([histogram.write(levels).to(parts["bytes"].device), parts["bytes"]])
        return Payload(parts, v.numel()), codes, s

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        return self._coded(x, rnd)[0]

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(v), v - Q(v)), the residual written into v (the caller's temporary) from the
        codes in one pass (no decoded Q(v))."""
        payload, codes, s = self._coded(v, rnd)
        self.fmt.accumulate(v.view(-1), codes, s, -1.0)
        return payload, v

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """out += alpha * sum_r Q_r in rank order, each payload's codes added in one pass."""
        for payload in payloads:
            if payload.parts:
                self.fmt.accumulate(out.view(-1), self.codes(payload), float(payload.parts["scale"][0]), alpha)

    def coded(self, payload: Payload) -> tuple[HuffmanTable | RansTable, Tensor]:
        """The code a payload was written with, rebuilt from what it carries, and the coded stream
        (``bytes`` but for a leading histogram header)."""
        stream = payload.parts["bytes"]
        if self.coder in MODEL_CODERS:
            return _model_table(self.fmt, self.coder, *(int(q) for q in payload.parts["model"])), stream
        if self.coder == "empirical":
            return HuffmanTable.from_header(payload.parts["lengths"]), stream
        if self.coder == "rans_empirical":
            levels, size = histogram.read(stream, self.fmt.codes)
            return histogram.table(levels), stream[size:]
        return HuffmanTable.fixed(self.fmt.bits), stream

    def table(self, payload: Payload) -> HuffmanTable | RansTable:
        """The code a payload was written with, rebuilt from what it carries."""
        return self.coded(payload)[0]

    def _pairs(self) -> bool:
        return self.coder in MODEL_CODERS and _codes_pairs(self.fmt)

    def symbols(self, codes: Tensor) -> Tensor:
        """What the coder codes: the float codes, or pairs of them (model coders, at most 4 bits)."""
        return _join_pairs(codes) if self._pairs() else codes

    def codes(self, payload: Payload) -> Tensor:
        """The float codes (uint8) carried by a payload."""
        table, stream = self.coded(payload)
        if self._pairs():
            return _split_pairs(table.decode(stream, (payload.numel + 1) // 2), payload.numel)
        return table.decode(stream, payload.numel)

    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        return self.fmt.decode(self.codes(payload), float(payload.parts["scale"][0]))
