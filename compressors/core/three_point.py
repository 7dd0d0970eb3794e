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
from .memory import Estimate, EstimateAndGradient, reusable
from .payload import Payload
from .rounds import Round


class ThreePoint(Mechanism):
    """A 3PC mechanism. Memory: ``g_i`` (h) and, if ``uses_y``, ``y`` (the last gradient).
    ``step`` writes the new g_i and y into the tensors of the round before last (free once
    that round committed; ``core.memory.reusable``) and never the memory it replaces, so a
    caller keeps that memory for a rollback by reference."""

    uses_y = False
    memory: Estimate
    written_in_place: frozenset[str] | None = frozenset()
    _spare: tuple[Tensor | None, Tensor | None] = (None, None)  # the g_i and y before the current ones

    @property
    def memory_type(self) -> type[Estimate]:
        return EstimateAndGradient if self.uses_y else Estimate

    def setup(self, grad: Tensor) -> Estimate:
        return EstimateAndGradient(grad, grad.clone()) if self.uses_y else Estimate(grad)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """``move`` on a copy of g_i, then y = x."""
        x, h, y = flat(grad), self.memory.g_i, getattr(self.memory, "y", None)
        new_h = self.buffer(h, y).copy_(h)
        payload = self.move(new_h, y, x, rnd)
        self.advance(h, new_h, y, x)
        return payload

    def buffer(self, h: Tensor, y: Tensor | None) -> Tensor:
        """The tensor shaped like h that the new g_i goes into (not h, not y)."""
        return reusable(self._spare[0], h.numel(), h.device, busy=(h, y)).view_as(h)

    def advance(self, h: Tensor, new_h: Tensor, y: Tensor | None, x: Tensor) -> None:
        """memory <- (new_h, x), y written into a buffer of its own; the tensors replaced are the
        next round's spares."""
        spare_h, spare_y = self._spare
        self._spare = (spare_h if new_h is h else h, y)
        if y is None:
            self.memory = Estimate(new_h)
            return
        new_y = reusable(spare_y, y.numel(), y.device, busy=(h, y, new_h)).view_as(y).copy_(x.view_as(y))
        self.memory = EstimateAndGradient(new_h, new_y)

    @abstractmethod
    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        """Set h <- C_{h,y}(x) in place; return the payload that decodes to the increment."""

    def decode_into(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round) -> None:
        """out += alpha * sum_r increment_r."""
        self.compressor.accumulate(out, payloads, alpha, rnd)

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        self.decode_into(server["g"], payloads, 1.0 / len(payloads), rnd)
