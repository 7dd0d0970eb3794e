"""Top-K sparsification: keep the K entries of largest magnitude."""
from __future__ import annotations

from torch import Tensor

from .. import kernels
from ..core.rounds import Round
from .sparse import Sparsifier


class TopK(Sparsifier):
    """Top-K: C(x)_i = x_i if |x_i| is among the K largest magnitudes (ties: lowest index), else 0.

    Contractive with alpha = K/d. Sends K fp32 values and K int32 indices (int64 when
    d >= 2^31), 64 bits per kept entry.
    """

    def __repr__(self) -> str:
        return f"TopK({self._size()})"

    def alpha(self, numel: int) -> float:
        return self.k_for(numel) / numel

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        return kernels.topk_abs(x, self.k_for(x.numel()))
