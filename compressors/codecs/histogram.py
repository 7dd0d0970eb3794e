"""A message's own histogram as a rANS table, and the compact header that describes it (CO3's
``coder="rans_empirical"``).

The counts c_s of the A symbols travel as half-octave levels

    v_s = 0 if c_s = 0, else round(2 log2 c_s) + 1        (1 <= v_s <= 63 for c_s < 2^31),

and both sides take the weights w_s = 2^((v_s - 1) / 2) (ldexp of 1 or a fixed sqrt(2), so the
same float64 everywhere; within a factor 2^(1/4) of c_s) and quantize them to the rANS frequencies
(``rans.quantize``, M = 2^15; all levels 0, an empty message: symbol 0 gets all of M). Coding with
w / sum w instead of the histogram p costs D(p || w / sum w) plus the quantization: about 0.1% of
an fp8 stream of 12K values, against ~0.25% more header bytes per halving of the level step.

The header codes v_0 .. v_{A-1} in order as residuals r_s = v_s - v^_s against a prediction:
v^_s = v_{s - A/2} for the upper half of the alphabet (float codes: the same magnitude with the
sign bit set, nearly the same count) and v_{s-1} below it (the neighbouring magnitude), v_{-1} = 0.
Each residual is a signed order-0 Exp-Golomb code: u = 2r (r >= 0) or -2r - 1 (r < 0), written as
bit_length(u + 1) - 1 zeros and then u + 1 in binary (1 bit for r = 0, 3 for +-1, 5 up to +-3), most
significant bit first; the header is padded to whole bytes. It is self-delimiting: the receiver
reads A codes and the rANS stream follows.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .rans import RansTable

_SQRT2 = math.sqrt(2.0)
_MAX_CODE_BITS = 2 * 8 - 1  # |r| <= 63, u + 1 <= 127: at most 7 zeros and 8 bits


def levels(counts: np.ndarray) -> np.ndarray:
    """v_s = round(2 log2 c_s) + 1 for c_s > 0, else 0 (int64)."""
    c = np.asarray(counts, np.int64)
    if (c < 0).any() or (c >= 1 << 31).any():
        raise ValueError("histogram counts must lie in [0, 2^31)")
    v = np.zeros(len(c), np.int64)
    live = c > 0
    v[live] = np.round(2 * np.log2(c[live])).astype(np.int64) + 1
    return v


def table(v: np.ndarray) -> RansTable:
    """The rANS table of the weights w_s = 2^((v_s - 1) / 2) (symbol 0 alone when every v_s = 0)."""
    v = np.asarray(v, np.int64)
    if not (v > 0).any():
        weights = np.zeros(len(v))
        weights[0] = 1.0
        return RansTable.from_weights(weights)
    h = np.maximum(v - 1, 0)
    weights = np.where(v > 0, np.ldexp(np.where(h % 2 == 1, _SQRT2, 1.0), h // 2), 0.0)
    return RansTable.from_weights(weights)


def _predictions(v: np.ndarray) -> np.ndarray:
    """v^_s: v_{s - A/2} from s = floor(A/2) > 0 on, v_{s-1} below (v_{-1} = 0)."""
    half, pred = len(v) // 2, np.zeros(len(v), np.int64)
    pred[1:max(half, 1)] = v[:max(half, 1) - 1]
    if half:
        pred[half:] = v[:len(v) - half]
    return pred


def write(v: np.ndarray) -> Tensor:
    """The header (uint8) of the levels v."""
    v = np.asarray(v, np.int64)
    r = v - _predictions(v)
    u = np.where(r >= 0, 2 * r, -2 * r - 1) + 1
    bits: list[str] = []
    for x in u.tolist():
        code = bin(x)[2:]
        bits.append("0" * (len(code) - 1) + code)
    packed = np.packbits(np.frombuffer("".join(bits).encode(), np.uint8) - ord("0"))
    return torch.from_numpy(packed)


def read(stream: Tensor, alphabet: int) -> tuple[np.ndarray, int]:
    """The levels of the header that starts ``stream`` and the header's size in bytes."""
    head = stream[: (alphabet * _MAX_CODE_BITS + 7) // 8].cpu().numpy()
    bits = np.unpackbits(head).tolist()
    u, position = [], 0
    for _ in range(alphabet):
        zeros = 0
        while position < len(bits) and bits[position] == 0 and zeros < 8:
            zeros, position = zeros + 1, position + 1
        if position + zeros + 1 > len(bits) or zeros >= 8:
            raise ValueError("rans_empirical: the histogram header is corrupt")
        u.append(int("".join(map(str, bits[position:position + zeros + 1])), 2) - 1)
        position += zeros + 1
    u = np.array(u, np.int64)
    r = np.where(u % 2 == 0, u // 2, -(u + 1) // 2)
    v = np.zeros(alphabet, np.int64)
    half = alphabet // 2
    for s in range(alphabet):  # the predictions need the levels before s
        v[s] = r[s] + (v[s - half] if s >= half > 0 else v[s - 1] if s else 0)
    if (v < 0).any() or (v > 63).any():
        raise ValueError("rans_empirical: the histogram header is corrupt")
    return v, (position + 7) // 8
