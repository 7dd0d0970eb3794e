"""Perm-K (Szlendak, Tyurin, Richtárik 2021, "Permutation compressors for provably faster
distributed nonconvex optimization", Def. 2): workers split one shared random permutation."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.compressor import ROUND0
from ..core.payload import PartSpec
from ..core.rounds import Round
from .sparse import SupportFirst


class PermK(SupportFirst):
    """Perm-K: a permutation pi of [d] shared by the n workers; worker i keeps the block
    B_i = pi[i d/n : (i+1) d/n] scaled by d/|B_i|, so E C_i(x) = x (omega = d/|B_i| - 1 ~ n - 1),
    and the n blocks tile [d]: for equal inputs sum_i C_i(x)/n = x exactly.

    Nothing but values is sent (receivers regenerate pi); every worker sends ceil(d/n) values,
    the shorter blocks padded with one zero (the padding is counted). Needs d >= n.
    """

    deterministic = False
    sends_indices = False

    def __init__(self, seed: int = 0) -> None:
        self.ratio, self.k, self.seed = None, None, seed

    def __repr__(self) -> str:
        return f"PermK(seed={self.seed})"

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        return math.ceil(numel / rnd.workers)

    def omega(self, numel: int, workers: int = 1) -> float:
        return numel / max(1, numel // workers) - 1.0  # the smallest block sets the worst case

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("values", torch.float32, self.k_for(numel, rnd))]

    def support(self, numel: int, rnd: Round = ROUND0) -> Tensor:
        if numel < rnd.workers:
            raise ValueError(f"PermK splits the coordinates among the workers, so it needs at least as many "
                             f"coordinates as workers ({numel} < {rnd.workers}); use RandK or TopK for this tensor")
        perm = torch.randperm(numel, generator=rnd.generator(self.seed, numel, shared=True))
        lo, hi = rnd.worker * numel // rnd.workers, (rnd.worker + 1) * numel // rnd.workers
        return perm[lo:hi].sort().values

    def scale(self, gathered: Tensor, numel: int, rnd: Round) -> Tensor:
        values = gathered.new_zeros(self.k_for(numel, rnd))
        values[:gathered.numel()] = gathered * (numel / gathered.numel())
        return values
