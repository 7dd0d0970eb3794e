"""Who sends, when: the context of one compression round, and randomness derived from it.

Randomised compressors and mechanisms draw from generators seeded by (seed, round, tensor
length) and, for private randomness, the worker index. Every worker (and every DDP rank) that
builds the same ``Round`` therefore draws the same shared coin or common support without any
communication, and a run is reproducible from its seeds.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import kernels

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
    units), for LAG-WK's and SASG's triggers. ``shared`` is the compressor's part of the
    aggregate state (``Compressor.shared_start``, e.g. the support every worker agreed on in the
    last round, ``SharedTopK``): every DDP rank holds a bit-identical replica, so every worker
    reads the same values without communicating. Both are what the simulation and the hook know
    before the round.
    """

    t: int = 0
    worker: int = 0
    workers: int = 1
    moves: tuple[float, ...] = ()
    shared: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

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

    def subset(self, seed: int, numel: int, k: int, *, shared: bool) -> torch.Tensor:
        """k distinct indices of range(numel), uniformly at random and in random order (int64),
        from ``key``: O(k) work (numpy's sampling without replacement), not a permutation of
        all numel."""
        rng = np.random.default_rng(self.key(seed, numel, shared=shared))
        return torch.from_numpy(rng.choice(numel, k, replace=False).astype(np.int64))


class MoveHistory:
    """The squared norms of the last ``window`` aggregate directions, most recent first, kept
    per key (a parameter in DDP, so the history survives re-bucketing; one key in the
    simulation): what ``Round.moves`` carries to LAG-WK's and SASG's triggers."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.norms: dict[Hashable, deque[float]] = {}

    @staticmethod
    def measure(g: torch.Tensor) -> float:
        """||g||^2 (g: a key's slice of the new aggregate direction), a float64 sum in
        ``kernels.abs_moments``' fixed order, no temporary; read back to the host."""
        return float(kernels.abs_moments(g.float())[2])

    def append(self, key: Hashable, norm: float) -> None:
        """Append a measured ||g||^2 as the key's most recent move; no-op at window 0."""
        if self.window:
            self.norms.setdefault(key, deque(maxlen=self.window)).appendleft(norm)

    def record(self, key: Hashable, g: torch.Tensor) -> None:
        """Measure and append g's move; no-op at window 0."""
        if self.window:
            self.append(key, self.measure(g))

    def moves(self, keys: Iterable[Hashable]) -> tuple[float, ...]:
        """||g^{t-1}||^2, ||g^{t-2}||^2, ... summed over ``keys``, as deep as every key's history."""
        histories = [self.norms.get(key, ()) for key in keys]
        depth = min((len(h) for h in histories), default=0)
        return tuple(sum(h[d] for h in histories) for d in range(depth))

    def load(self, norms: dict[Hashable, Iterable[float]]) -> None:
        self.norms = {key: deque(h, maxlen=self.window) for key, h in norms.items()}
