"""Rand-K sparsification: keep K coordinates drawn uniformly without replacement."""
from __future__ import annotations

from torch import Tensor

from ..core.compressor import ROUND0
from ..core.rounds import Round
from .sparse import SupportFirst


class RandK(SupportFirst):
    """Rand-K: C(x) = s * sum_{j in S} x_j e_j with S a uniform K-subset of [d].

    * ``scaled=True`` (s = d/K): unbiased with omega = d/K - 1.
    * ``scaled=False`` (s = 1): contractive with alpha = K/d (in expectation).
    * ``shared=True``: S is drawn from a seed shared by all workers (a common support); the
      receiver regenerates S, so only the K values are sent and their mean is all the
      aggregate needs. ``shared=False``: each worker draws its own S and sends K int32 indices.
    """

    deterministic = False

    def __init__(self, ratio: float | None = None, *, k: int | None = None, scaled: bool = True,
                 shared: bool = False, seed: int = 0) -> None:
        super().__init__(ratio, k=k)
        self.scaled, self.shared, self.seed = scaled, shared, seed
        self.sends_indices, self.aligned = not shared, shared

    def __repr__(self) -> str:
        return f"RandK({self._size()}, scaled={self.scaled}, shared={self.shared}, seed={self.seed})"

    def alpha(self, numel: int) -> float:
        if self.scaled:
            return super().alpha(numel)  # raises: scaled Rand-K is not contractive
        return self.k_for(numel) / numel

    def omega(self, numel: int, workers: int = 1) -> float:
        if not self.scaled:
            return super().omega(numel, workers)
        return numel / self.k_for(numel) - 1.0

    def support(self, numel: int, rnd: Round = ROUND0) -> Tensor:
        return rnd.subset(self.seed, numel, self.k_for(numel), shared=self.shared).sort().values

    def scale(self, gathered: Tensor, numel: int, rnd: Round) -> Tensor:
        if self.scaled and gathered.numel():  # k = 0 of an empty tensor: nothing to scale
            gathered *= numel / gathered.numel()
        return gathered
