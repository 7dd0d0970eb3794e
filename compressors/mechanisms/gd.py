"""Distributed gradient descent: every worker sends its dense gradient."""
from __future__ import annotations

from torch import Tensor

from ..core.compressor import ROUND0
from ..core.identity import Identity
from ..core.mechanism import DENSE, Replacing
from ..core.payload import Payload
from ..core.rounds import Round


class GD(Replacing):
    """GD: g^{t+1} = (1/n) sum_i grad f_i(x^{t+1}); the 3PC C_{h,y}(x) = x with A = 1, B = 0
    (Theorem 1 then gives gamma = 1/L_-). d fp32 values per round, one allreduce in DDP.
    No memory."""

    def __init__(self) -> None:
        super().__init__(Identity())

    def __repr__(self) -> str:
        return "GD()"

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        return DENSE.compress(grad)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return 1.0, 0.0
