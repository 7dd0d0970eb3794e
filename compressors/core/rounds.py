"""Who sends, when: the context of one compression round, and randomness derived from it.

Randomised compressors and mechanisms draw from generators seeded by (seed, round, tensor
length) and, for private randomness, the worker index. Every worker (and every DDP rank) that
builds the same ``Round`` therefore draws the same shared coin or common support without any
communication, and a run is reproducible from its seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

_MIX = 0x9E3779B97F4A7C15  # splitmix64's increment
_MASK = (1 << 63) - 1


def _mix(*keys: int) -> int:
    """A deterministic 63-bit seed from integers (the same in every process)."""
    h = 0
    for key in keys:
        h = (h ^ (key & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019
        h ^= h >> 29
    return h & _MASK


@dataclass(frozen=True)
class Round:
    """Round ``t`` on worker ``worker`` of ``workers``.

    ``moves`` holds the squared norms of the last aggregate directions, most recent first,
    ||g^{t-1}||^2, ||g^{t-2}||^2, ... (a step x^{t} - x^{t-1} = -gamma g^{t-1}, in gradient
    units); only LAG-WK reads it, and only the simulation provides it.
    """

    t: int = 0
    worker: int = 0
    workers: int = 1
    moves: tuple[float, ...] = ()

    def of(self, worker: int) -> Round:
        """The same round seen from another worker (to decode that worker's payload)."""
        return replace(self, worker=worker)

    def key(self, seed: int, numel: int, *, shared: bool) -> int:
        """A 63-bit seed for this round and tensor length: the same on every worker if
        ``shared``, else this worker's own."""
        return _mix(seed, self.t, numel) if shared else _mix(seed, self.t, numel, self.worker + 1)

    def generator(self, seed: int, numel: int, *, shared: bool) -> torch.Generator:
        """A CPU generator seeded with ``key``."""
        return torch.Generator().manual_seed(self.key(seed, numel, shared=shared))
