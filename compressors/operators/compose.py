"""Composition of sparsifiers: the outer one sparsifies the values the inner one kept."""
from __future__ import annotations

from torch import Tensor

from ..core.compressor import ROUND0
from ..core.rounds import Round
from .sparse import Sparsifier


class Compose(Sparsifier):
    """C(x) = outer(inner(x)), the outer sparsifier acting on the K1 values the inner kept
    (e.g. ``Compose(TopK(k=100), RandK(k=10, scaled=False))``: 10 random entries of the top 100).

    When the outer one is a projection (Top-K, unscaled Rand-K), C keeps a subset of inner's
    support and E||C(x) - x||^2 = ||x||^2 - (K2/K1)||inner(x)||^2 <= (1 - alpha1 K2/K1)||x||^2,
    so alpha = alpha_inner(d) * alpha_outer(K1). Sends K2 values and K2 indices into [d].
    """

    def __init__(self, inner: Sparsifier, outer: Sparsifier) -> None:
        self.inner, self.outer = inner, outer
        self.ratio, self.k = None, None
        self.deterministic = inner.deterministic and outer.deterministic

    def __repr__(self) -> str:
        return f"Compose({self.inner!r}, {self.outer!r})"

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        return self.outer.k_for(self.inner.k_for(numel, rnd), rnd)

    def alpha(self, numel: int) -> float:
        return self.inner.alpha(numel) * self.outer.alpha(self.inner.k_for(numel))

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        values, indices = self.inner.select(x, rnd)
        kept, positions = self.outer.select(values[:indices.numel()], rnd)
        return kept, indices[positions.long()]
