"""CLAG: compressed lazily aggregated gradients (3PC paper, Sec. 4.3, Alg. "CLAG")."""
from __future__ import annotations

from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from ..core.mechanism import flat
from ..core.payload import Payload
from ..core.rounds import Round
from ..core.three_point import ThreePoint
from .ef21 import ef21_constants, ef21_move


class CLAG(ThreePoint):
    """CLAG, the 3PC

        C_{h,y}(x) = h + C(x - h)   if ||x - h||^2 > zeta ||x - y||^2   (the worker sends C(x - h))
                     h              otherwise                            (the worker stays silent)

    zeta = 0 is EF21, C = identity is LAG. With theta = 1 - sqrt(1 - alpha) and
    beta = (1 - alpha)/theta: A = theta, B = max(beta, zeta) (3PC paper, Lemma 4.5).
    A silent round sends nothing (0 bits; under DDP the hook's lazy protocol counts a 4-byte
    header per rank and round, and padding). Memory: g_i and y (2d floats per worker; under
    ``step`` as much again: the tensors of the round before last, which the next round writes).
    """

    uses_y = True
    lazy = True

    def __init__(self, compressor: Compressor, zeta: float = 1.0) -> None:
        if zeta < 0:
            raise ValueError(f"{type(self).__name__} zeta (trigger threshold) must be >= 0, got {zeta}")
        super().__init__(compressor)
        self.zeta = zeta

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compressor!r}, zeta={self.zeta})"

    def triggered(self, h: Tensor, y: Tensor, x: Tensor, rnd: Round) -> bool:
        """Whether the worker uploads this round (both norms in one call: float64 sums, no temporaries)."""
        to_h, to_y = kernels.squared_distances(x, [h, y]).tolist()
        return to_h > self.zeta * to_y

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        if not self.triggered(h, y, x, rnd):
            return Payload({}, h.numel())
        return ef21_move(self.compressor, h, x, rnd)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """``move`` without a copy of g_i when the worker stays silent (a silent round writes only y)."""
        x, h, y = flat(grad), self.memory.g_i, getattr(self.memory, "y", None)
        payload, new_h = Payload({}, h.numel()), h
        if self.triggered(h, y, x, rnd):
            new_h = self.buffer(h, y)
            payload = ef21_move(self.compressor, h, x, rnd, out=new_h)
        self.advance(h, new_h, y, x)
        return payload

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        theta, beta = ef21_constants(self.compressor.alpha(numel))
        return theta, max(beta, self.zeta)
