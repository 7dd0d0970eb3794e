"""Canonical, length-limited Huffman codes over uint8 symbols (CO3's lossless stage).

A code is its codeword lengths (<= 16 bits, so decoding is one 16-bit table lookup per
symbol); canonical codewords follow from the lengths (shorter first, then by symbol), so a
receiver rebuilds the code from the lengths alone, or from whatever produced the lengths
(CO3's GenNorm parameters). The coding kernels are ``compressors.kernels.huffman_encode/decode``.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import kernels

MAX_LENGTH = 16


def huffman_lengths(weights: np.ndarray, limit: int = MAX_LENGTH) -> np.ndarray:
    """Codeword lengths of a Huffman code for positive ``weights``, limited to ``limit`` bits.

    Over-long codewords are cut to ``limit`` and Kraft's inequality sum 2^-l <= 1 is restored by
    lengthening the longest codewords still below the limit (the least likely symbols first).
    """
    w = np.asarray(weights, np.float64)
    n = len(w)
    if n > 1 << limit:
        raise ValueError(f"{n} symbols do not fit in codewords of at most {limit} bits")
    if not (w > 0).all():
        raise ValueError("Huffman weights must be positive (give unlikely symbols a small weight)")
    lengths = np.zeros(n, np.int64)
    if n == 1:
        lengths[0] = 1
        return lengths
    tie = itertools.count()  # equal weights merge in the order they entered the heap
    heap = [(float(x), next(tie), i) for i, x in enumerate(w)]  # leaves are nodes 0 .. n-1
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    for node in range(n, 2 * n - 1):  # the merged pair's parent; the root is node 2n - 2
        wa, _, a = heapq.heappop(heap)
        wb, _, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (wa + wb, next(tie), node))
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):  # a parent is created after its children
        depth[node] = depth[parent[node]] + 1
    lengths[:] = depth[:n]
    if lengths.max() > limit:
        np.minimum(lengths, limit, out=lengths)
        excess = int(np.sum(1 << (limit - lengths))) - (1 << limit)
        order = np.lexsort((w, -lengths))  # longest first, then least likely
        while excess > 0:
            for s in order:
                if lengths[s] < limit and (1 << (limit - lengths[s] - 1)) <= excess:
                    excess -= 1 << (limit - lengths[s] - 1)
                    lengths[s] += 1
                    break
            else:  # every candidate would overshoot: lengthen the longest one below the limit
                s = next(s for s in order if lengths[s] < limit)
                excess -= 1 << (limit - lengths[s] - 1)
                lengths[s] += 1
    return lengths


@dataclass(frozen=True)
class HuffmanTable:
    """A canonical prefix code: ``codes[s]`` in the low ``lengths[s]`` bits (int32, uint8)."""

    codes: Tensor
    lengths: Tensor

    @classmethod
    def from_lengths(cls, lengths: np.ndarray | Tensor) -> HuffmanTable:
        """The canonical code with these lengths: symbols by (length, symbol) get consecutive codes."""
        lengths = np.asarray(lengths, np.int64)
        codes = np.zeros(len(lengths), np.int64)
        code, previous = 0, 0
        for s in np.lexsort((np.arange(len(lengths)), lengths)):
            if lengths[s] == 0:
                continue
            code <<= int(lengths[s]) - previous
            codes[s], previous = code, int(lengths[s])
            code += 1
        if previous and code > 1 << previous:
            raise ValueError("these codeword lengths violate Kraft's inequality: no prefix code has them")
        return cls(torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(lengths.astype(np.uint8)))

    @classmethod
    def from_weights(cls, weights: np.ndarray, limit: int = MAX_LENGTH) -> HuffmanTable:
        return cls.from_lengths(huffman_lengths(weights, limit))

    @classmethod
    def fixed(cls, bits: int) -> HuffmanTable:
        """Every symbol of 2^bits as itself in ``bits`` bits: plain bit packing."""
        return cls(torch.arange(1 << bits, dtype=torch.int32), torch.full((1 << bits,), bits, dtype=torch.uint8))

    def encode(self, symbols: Tensor) -> Tensor:
        return kernels.huffman_encode(symbols, self.codes, self.lengths)

    def decode(self, stream: Tensor, n: int) -> Tensor:
        return kernels.huffman_decode(stream, n, self.codes, self.lengths)

    def coded_bits(self, symbols: Tensor) -> int:
        """Bits of the code for ``symbols`` (before padding to whole bytes)."""
        return int(self.lengths.long()[symbols.reshape(-1).long()].sum())

    def header(self) -> Tensor:
        """The lengths as nibbles (length - 1, two per byte): what a receiver needs to rebuild
        the code when every symbol has a codeword."""
        nibbles = self.lengths.long() - 1
        if bool((nibbles < 0).any()) or len(nibbles) % 2:
            raise ValueError("a nibble header needs every symbol coded and an even alphabet")
        return (nibbles[0::2] << 4 | nibbles[1::2]).to(torch.uint8)

    @classmethod
    def from_header(cls, header: Tensor) -> HuffmanTable:
        h = header.long().cpu()
        return cls.from_lengths(torch.stack([h >> 4, h & 15], 1).reshape(-1).numpy() + 1)


def entropy_bits(symbols: Tensor, alphabet: int) -> float:
    """Empirical entropy of ``symbols`` in bits per symbol."""
    counts = np.bincount(symbols.reshape(-1).numpy(), minlength=alphabet).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


