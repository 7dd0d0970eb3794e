"""3PCv5 (3PC paper, Sec. 4.8): a shared coin resets every worker to its dense gradient."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core.compressor import ROUND0, Compressor
from ..core.mechanism import DENSE
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round
from ..core.three_point import ThreePoint


class ThreePCv5(ThreePoint):
    """3PCv5: with probability p (one coin per round, shared by all workers through ``seed``)

        C_{h,y}(x) = x                  (the worker sends x - h densely; one allreduce in DDP)
                     h + C(x - y)       otherwise (the worker sends C(x - y))

    with C contractive. By Young's inequality with s = p / (2(1 - p)): A = p/2 and
    B = (1 - p)(2 - p)(1 - alpha)/p (p = 1: A = 1, B = 0). Memory: g_i and y.
    """

    uses_y = True

    def __init__(self, compressor: Compressor, p: float = 0.1, seed: int = 0) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"{type(self).__name__} p (probability of a dense round) must lie in (0, 1], got {p}")
        super().__init__(compressor)
        self.p, self.seed = p, seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compressor!r}, p={self.p}, seed={self.seed})"

    def dense(self, rnd: Round) -> bool:
        """The round's shared coin (the same for every worker and tensor of round t)."""
        return bool(torch.rand((), generator=rnd.generator(self.seed, 0, shared=True)) < self.p)

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        if self.dense(rnd):
            difference = x - h
            h.copy_(x)
            return Payload.of_temporary(DENSE.compress(difference), difference)  # averaged in place
        sent = self.compressor.compress_difference(x, y, rnd)
        self.compressor.add_to(h, sent, rnd)
        return sent

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return DENSE.spec(numel) if self.dense(rnd) else self.compressor.spec(numel, rnd)

    def decode_into(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round) -> None:
        (DENSE if self.dense(rnd) else self.compressor).accumulate(out, payloads, alpha, rnd)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        if self.p >= 1.0:
            return 1.0, 0.0
        p = self.p
        return p / 2.0, (1.0 - p) * (2.0 - p) * (1.0 - self.compressor.alpha(numel)) / p
