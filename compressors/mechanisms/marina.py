"""MARINA (Gorbunov, Burlachenko, Li, Richtárik 2021, Alg. 1)."""
from __future__ import annotations

from ..core.compressor import Compressor
from ..operators.randk import RandK
from .threepc_v5 import ThreePCv5


class MARINA(ThreePCv5):
    """MARINA: with probability p (a coin shared by all workers) g_i^{t+1} = grad f_i(x^{t+1}),
    else g_i^{t+1} = g_i^t + Q(grad f_i(x^{t+1}) - grad f_i(x^t)) with Q unbiased (Rand-K
    scaled by d/K, or Perm-K). As a 3PC (3PCv5 with unbiased Q): A = p, B = (1 - p) omega,
    since E||h + Q(x - y) - x||^2 = ||h - y||^2 + E||Q(x - y) - (x - y)||^2. Memory: g_i and y.
    """

    def __init__(self, compressor: Compressor | None = None, p: float = 0.1, seed: int = 0) -> None:
        super().__init__(compressor if compressor is not None else RandK(ratio=0.01), p, seed)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return self.p, (1.0 - self.p) * self.compressor.omega(numel, workers)
