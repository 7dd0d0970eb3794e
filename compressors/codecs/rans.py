"""rANS (Duda 2013, "Asymmetric numeral systems") over uint8 symbols: CO3's lossless stage at the
entropy of its model.

A code is a frequency table: integers f_s >= 0 summing to M = 2^precision, f_s >= 1 for every
symbol the model gives nonzero probability. Symbol s costs log2(M / f_s) bits plus the coder's
overhead: below log2(1 + 2^(precision - 23)) bits per symbol (a state x codes s only when
x / f_s >= 2^(23 - precision)) and the final states' 8 bytes (16 for messages of 2^16 symbols
or more, which interleave 4 states: ``kernels.checks.rans_states``). So a message of symbols
drawn from p costs about its cross entropy -sum_s p_s log2(f_s / M) per symbol; quantizing p to f
adds the divergence D(p || f / M). The receiver rebuilds f from what produced it (CO3's GenNorm
parameters), as a Huffman receiver rebuilds its lengths. The coding kernels are
``compressors.kernels.rans_encode/decode``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import kernels

PRECISION = 15  # M = 2^15: the decoder's slot -> symbol table (32 KB) stays in a 48 KB L1 cache


def quantize(weights: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """The frequencies f (int64) summing to M = 2^precision, f_s >= 1 exactly where weights_s > 0,
    that minimise the coded size sum_s p_s log2(M / f_s) of symbols drawn from p = weights / sum.

    The cost is separable and convex in f, so a table that no single unit moved from one symbol to
    another improves is optimal. From f = max(1, floor(M p)), one unit at a time: while sum f < M
    add one where the cost falls most, gain_s = p_s log2((f_s + 1) / f_s); while sum f > M take one
    where it rises least, loss_s = p_s log2(f_s / (f_s - 1)) (f_s > 1); then move one unit from the
    least loss to the largest gain while the gain exceeds it (ties: the lowest symbol).
    """
    w = np.asarray(weights, np.float64)
    total = 1 << precision
    if (w < 0).any() or not np.isfinite(w).all() or not (w > 0).any():
        raise ValueError("rANS weights must be finite, >= 0 and not all 0")
    live = w > 0
    if live.sum() > total:
        raise ValueError(f"{int(live.sum())} symbols do not fit in frequencies summing to 2^{precision}")
    p = w / w.sum()
    f = np.where(live, np.maximum(1, np.floor(p * total)), 0).astype(np.int64)
    while True:
        gain = np.where(live, p * np.log2((f + 1) / np.maximum(f, 1)), -np.inf)
        loss = np.where(f > 1, p * np.log2(np.maximum(f, 1) / np.maximum(f - 1, 1)), np.inf)
        up, down = int(np.argmax(gain)), int(np.argmin(loss))
        excess = int(f.sum()) - total
        if excess < 0:
            f[up] += 1
        elif excess > 0:
            f[down] -= 1
        elif gain[up] > loss[down] * (1 + 1e-9):
            f[up], f[down] = f[up] + 1, f[down] - 1
        else:
            return f


@dataclass(frozen=True)
class RansTable:
    """A rANS code: ``freqs`` (int32[A]) summing to 2^precision."""

    freqs: Tensor

    @classmethod
    def from_weights(cls, weights: np.ndarray, precision: int = PRECISION) -> RansTable:
        return cls(torch.from_numpy(quantize(weights, precision).astype(np.int32)))

    @property
    def precision(self) -> int:
        return int(self.freqs.sum()).bit_length() - 1

    def encode(self, symbols: Tensor) -> Tensor:
        return kernels.rans_encode(symbols, self.freqs)

    def decode(self, stream: Tensor, n: int) -> Tensor:
        return kernels.rans_decode(stream, n, self.freqs)

    def ideal_bits(self, symbols: Tensor) -> float:
        """sum_i log2(M / f_{s_i}): the bits of ``symbols`` under this table's model (what rANS spends
        but for its overhead)."""
        counts = np.bincount(symbols.reshape(-1).cpu().numpy(), minlength=len(self.freqs))
        f = self.freqs.numpy().astype(np.float64)
        used = counts > 0
        if (f[used] == 0).any():
            return math.inf
        return float((counts[used] * (self.precision - np.log2(f[used]))).sum())
