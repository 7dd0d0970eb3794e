"""Shared Top-K: a support every worker derives from the aggregate it already knows, so only
values travel and they travel by one allreduce."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0
from ..core.rounds import Round
from .sparse import Sparsifier


class SharedTopK(Sparsifier):
    """C(x) = x restricted to S, S = the K - R entries of largest |g| (g = ``Round.aggregate``,
    the aggregate direction every worker holds) plus R = ceil(explore K) entries drawn uniformly
    from the rest with a seed shared by all workers (``explore`` = 1, or no aggregate: a shared
    Rand-K). All workers keep the same K coordinates, so the payload is K fp32 values, no
    indices, aligned across workers: a linear aggregate needs only their mean, one allreduce of
    K values, whose link bytes per rank do not grow with the number of workers (ScaleCom,
    Chen et al. 2020, shares a leader's support for the same reason).

    Contractive: every coordinate outside the top part is kept with probability
    R / (d - K + R) >= R / d, so E||C(x) - x||^2 <= (1 - R/d)||x||^2: alpha = R/d (the top part
    only helps; tests/test_compressors.py measures it). Unscaled values.
    """

    deterministic = False
    sends_indices = False
    aligned = True

    def __init__(self, ratio: float | None = None, *, k: int | None = None, explore: float = 0.5,
                 seed: int = 0) -> None:
        if not 0.0 < explore <= 1.0:
            raise ValueError(f"SharedTopK explore (share of K drawn at random) must lie in (0, 1], got {explore}")
        super().__init__(ratio, k=k)
        self.explore, self.seed = explore, seed
        self._cache: dict[tuple[int, int, int], Tensor] = {}

    def __repr__(self) -> str:
        return f"SharedTopK({self._size()}, explore={self.explore}, seed={self.seed})"

    def explored(self, numel: int) -> int:
        """R, the coordinates drawn at random."""
        return max(1, math.ceil(self.explore * self.k_for(numel)))

    def alpha(self, numel: int) -> float:
        return self.explored(numel) / numel

    def support(self, numel: int, rnd: Round = ROUND0) -> Tensor:
        """S, ascending; computed once per round and aggregate (the aggregate may change in place
        while payloads are decoded into it)."""
        g = rnd.aggregate
        key = (rnd.t, numel, id(g))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = self._draw(numel, rnd, g)
        return self._cache[key]

    def _draw(self, numel: int, rnd: Round, g: Tensor | None) -> Tensor:
        k, r = self.k_for(numel), self.explored(numel)
        top = kernels.topk_abs(g.reshape(-1), k - r)[1].long() if g is not None and k > r else \
            torch.zeros(0, dtype=torch.long)
        taken = torch.zeros(numel, dtype=torch.bool)
        taken[top.cpu()] = True
        drawn = rnd.subset(self.seed, numel, k, shared=True)  # k distinct: at least k - |top| outside top
        rest = drawn[~taken[drawn]][:k - top.numel()]
        device = g.device if g is not None else torch.device("cpu")
        return torch.cat([top.cpu(), rest]).sort().values.to(device)

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        indices = self.support(x.numel(), rnd).to(x.device)
        return x[indices].float(), indices
