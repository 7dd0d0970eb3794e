"""3PCv4 (3PC paper, Sec. 4.7): two EF21 steps in a row."""
from __future__ import annotations

from ..core.compressor import Compressor
from .ef21 import EF21, ef21_constants
from .threepc_v3 import ThreePCv3


class ThreePCv4(ThreePCv3):
    """3PCv4: b = h + C2(x - h);  C_{h,y}(x) = b + C1(x - b) (3PCv3 with inner EF21(C2)).
    ||C_{h,y}(x) - x||^2 <= (1 - alpha1)(1 - alpha2)||x - h||^2, so it is EF21 with
    alpha = 1 - (1 - alpha1)(1 - alpha2): A = 1 - sqrt(1 - alpha), B = (1 - alpha)/A.
    Sends C2's payload ("inner.*") and C1's ("c.*"). Memory: g_i.
    """

    def __init__(self, c1: Compressor, c2: Compressor) -> None:
        super().__init__(EF21(c2), c1)

    def __repr__(self) -> str:
        return f"ThreePCv4({self.compressor!r}, {self.inner.compressor!r})"

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        miss = (1.0 - self.compressor.alpha(numel)) * (1.0 - self.inner.compressor.alpha(numel))
        return ef21_constants(1.0 - miss)
