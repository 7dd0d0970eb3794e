"""3PCv2 (3PC paper, Sec. 4.5): an unbiased step on the gradient's change, then EF21."""
from __future__ import annotations

from torch import Tensor

from ..core.compressor import Compressor
from ..core.payload import Payload
from ..operators.randk import RandK
from ..core.rounds import Round
from ..core.three_point import ThreePoint
from .threepc_v3 import ThreePCv3


class DifferenceStep(ThreePoint):
    """b = h + Q(x - y): the first stage of 3PCv2 (alone not a 3PC: A = 0). Memory: g_i, y."""

    uses_y = True

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        sent = self.compressor.compress_difference(x, y, rnd)
        self.compressor.add_to(h, sent, rnd)
        return sent


class ThreePCv2(ThreePCv3):
    """3PCv2: b = h + Q(x - y);  C_{h,y}(x) = b + C(x - b), with Q unbiased (omega; Rand-K by
    default) and C contractive (alpha; Top-K). A = alpha, B = (1 - alpha) omega: E||x - b||^2 =
    ||h - y||^2 + E||Q(x - y) - (x - y)||^2. Sends Q's payload ("inner.*") and C's ("c.*").
    Memory: g_i and y.
    """

    def __init__(self, compressor: Compressor, q: Compressor | None = None) -> None:
        super().__init__(DifferenceStep(q if q is not None else RandK(ratio=0.01)), compressor)

    def __repr__(self) -> str:
        return f"ThreePCv2({self.compressor!r}, q={self.inner.compressor!r})"

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        alpha = self.compressor.alpha(numel)
        return alpha, (1.0 - alpha) * self.inner.compressor.omega(numel, workers)
