"""Three-point compressors (Richtárik, Sokolov, Fatkhullin, Gasanov, Li, Gorbunov 2022, "3PC:
Three point compressors for communication-efficient distributed training", Def. 3.1).

A 3PC maps (h, y, x) to g with E||g - x||^2 <= (1 - A)||h - y||^2 + B||x - y||^2, where for
worker i at round t: h = g_i^t (its last estimate), y = grad f_i(x^t), x = grad f_i(x^{t+1}).
The worker sends what decodes to the increment g_i^{t+1} - g_i^t, and the aggregate keeps
g = (1/n) sum_i g_i by g^{t+1} = g^t + (1/n) sum_i increment_i (Alg. 1). Theorem 1's stepsize
is gamma = 1 / (L_- + L_+ sqrt(B/A)) (``compressors.sim.theory``).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from torch import Tensor

from .compressor import ROUND0
from .mechanism import Mechanism, flat
from .memory import Estimate, EstimateAndGradient
from .payload import Payload
from .rounds import Round


class ThreePoint(Mechanism):
    """A 3PC mechanism. Memory: ``g_i`` (h) and, if ``uses_y``, ``y`` (the last gradient)."""

    uses_y = False
    memory: Estimate

    @property
    def memory_type(self) -> type[Estimate]:
        return EstimateAndGradient if self.uses_y else Estimate

    def setup(self, grad: Tensor) -> Estimate:
        return EstimateAndGradient(grad, grad.clone()) if self.uses_y else Estimate(grad)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        x = flat(grad)
        payload = self.move(self.memory.g_i, getattr(self.memory, "y", None), x, rnd)
        if self.uses_y:
            self.memory.y.copy_(x)
        return payload

    @abstractmethod
    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        """Set h <- C_{h,y}(x) in place; return the payload that decodes to the increment."""

    def decode_into(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round) -> None:
        """out += alpha * sum_r increment_r."""
        self.compressor.accumulate(out, payloads, alpha, rnd)

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        self.decode_into(server["g"], payloads, 1.0 / len(payloads), rnd)
