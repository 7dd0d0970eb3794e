"""3PCv3 (3PC paper, Sec. 4.6): any 3PC followed by an EF21 step."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..core.compressor import ROUND0, Compressor
from .ef21 import ef21_move
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round
from ..core.three_point import ThreePoint


class ThreePCv3(ThreePoint):
    """3PCv3: b = inner_{h,y}(x) (any 3PC with (A1, B1));  C_{h,y}(x) = b + C(x - b).
    ||C(x - b) + b - x||^2 <= (1 - alpha)||x - b||^2 gives A = 1 - (1 - alpha)(1 - A1),
    B = (1 - alpha) B1. Sends the inner payload ("inner.*") and C's ("c.*"). Memory: g_i (and
    y if the inner 3PC reads it).
    """

    def __init__(self, inner: ThreePoint, compressor: Compressor) -> None:
        super().__init__(compressor)
        self.inner = inner
        self.uses_y = inner.uses_y

    def __repr__(self) -> str:
        return f"ThreePCv3({self.inner!r}, {self.compressor!r})"

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        inner = self.inner.move(h, y, x, rnd)
        return Payload.merge(h.numel(), inner=inner, c=ef21_move(self.compressor, h, x, rnd))

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        if self.inner.lazy:
            raise NotImplementedError(f"{self!r}: a lazy inner 3PC leaves part of the payload empty, which the DDP "
                                      "wire format cannot express; use a non-lazy inner 3PC (e.g. EF21) in DDP")
        return [s.prefixed("inner") for s in self.inner.spec(numel, rnd)] + \
               [s.prefixed("c") for s in self.compressor.spec(numel, rnd)]

    def decode_into(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round) -> None:
        self.inner.decode_into(out, [p.sub("inner") for p in payloads], alpha, rnd)
        self.compressor.accumulate(out, [p.sub("c") for p in payloads], alpha, rnd)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        alpha = self.compressor.alpha(numel)
        a1, b1 = self.inner.constants(numel, workers)
        return 1.0 - (1.0 - alpha) * (1.0 - a1), (1.0 - alpha) * b1
