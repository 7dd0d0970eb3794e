"""LAG: lazily aggregated gradients (Chen, Giannakis, Sun, Yin 2018), in 3PC form and as the
original LAG-WK rule."""
from __future__ import annotations

from torch import Tensor

from .. import kernels
from .clag import CLAG
from ..core.identity import Identity
from ..core.mechanism import Mechanism
from ..core.rounds import Round


class LAG(CLAG):
    """LAG as a 3PC (3PC paper, Sec. 4.2): C_{h,y}(x) = x if ||x - h||^2 > zeta ||x - y||^2, else h.
    An upload sends the dense x - h (d fp32 values). A = 1, B = zeta. Memory: g_i and y."""

    def __init__(self, zeta: float = 1.0) -> None:
        super().__init__(Identity(), zeta)

    def __repr__(self) -> str:
        return f"LAG(zeta={self.zeta})"

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return 1.0, self.zeta


class LAGWK(LAG):
    """LAG-WK (Chen et al. 2018, Eq. (15a)), mean form: worker i uploads grad f_i(x^t) - g_i if

        ||grad f_i(x^t) - g_i||^2 > (1/gamma^2) sum_{d=1..D} xi_d ||x^{t+1-d} - x^{t-d}||^2,

    with xi_d = xi / D. Since x^{s+1} - x^s = -gamma g^s, the right side is
    (xi/D) sum_{d=1..D} ||g^{t-d}||^2, read from ``Round.moves`` (the simulation provides the
    squared norms of the last D aggregate directions). Not a 3PC: no (A, B); memory: g_i.
    """

    uses_y = False

    def __init__(self, xi: float = 1.0, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"LAGWK window D must be at least 1, got {window}")
        super().__init__(zeta=0.0)
        self.xi, self.window = xi, window

    def __repr__(self) -> str:
        return f"LAGWK(xi={self.xi}, window={self.window})"

    def triggered(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> bool:
        threshold = self.xi / self.window * sum(rnd.moves[:self.window])
        return float(kernels.squared_distances(x, [h])) > threshold

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return Mechanism.constants(self, numel, workers)  # raises: LAG-WK is not a 3PC
