"""Classic error feedback (Seide et al. 2014; Stich, Cordonnier, Jaggi 2018)."""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from ..core.compressor import ROUND0
from ..core.error_feedback import compensated
from ..core.mechanism import Replacing, flat
from ..core.memory import Error, reusable
from ..core.payload import Payload
from ..core.rounds import Round


class EF14(Replacing):
    """EF14, worker i with error e_i (e_i^0 = 0), in gradient units (e = error / gamma, which is
    the paper's e <- e + gamma grad - C(e + gamma grad) divided by a constant gamma):

        p_i = C(e_i + grad f_i(x^{t+1})),   e_i <- e_i + grad f_i(x^{t+1}) - p_i,
        g^{t+1} = (1/n) sum_i p_i           (the worker sends p_i)

    The hook needs no stepsize. Not a 3PC (no (A, B)); the harness starts it from gamma = 1/L_-.
    Under a stepsize that changes (``rate``, read each round: the optimizer's learning rate, set
    when the hook is told the optimizer), e_i is carried into round t as e_i gamma_{t-1} / gamma_t
    (``carry``), so that gamma e_i stays the paper's error in update units (EF-SGD, Karimireddy et
    al. 2019, Alg. 2: p = gamma g + e): what a round leaves unsent is applied later at the rate of
    the round that left it. A constant rate changes no bit. Memory: e_i. v = e_i + grad is written
    into the e_i of the round before last (free once that round committed; ``core.memory.reusable``),
    not into a new tensor.
    """

    memory_type = Error
    memory: Error
    written_in_place: frozenset[str] = frozenset()
    _spare: Tensor | None = None  # the error before the current one
    rate: Callable[[], float] | None = None  # what each round reads the stepsize from (``carry``); None: constant
    last_rate: float | None = None  # the stepsize the last round read (checkpointed by ``ddp_hooks.state``)

    def setup(self, grad: Tensor) -> Error:
        return Error(grad.zero_())

    decay = 1.0  # the factor of e_i in v (CO3's gamma)

    def init(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        payload = super().init(grad, rnd)
        self.carry()  # the rate the memory is written at: the next round carries e_i from it
        return payload

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        e = self.memory.e_i
        out = reusable(self._spare, e.numel(), e.device, busy=(e,))
        payload, error = compensated(self.compressor, e, flat(grad), rnd, decay=self.decay * self.carry(), out=out)
        self._spare, self.memory = e, Error(error)
        return payload

    def carry(self) -> float:
        """gamma_{t-1} / gamma_t, what carries e_i into this round in update units, and records
        gamma_t; 1 without ``rate``, at the first round, or while the rate is not positive and finite
        (a rate of 0 moves nothing: the memory waits for the next positive one). A round rolled
        back keeps the rate it read (its carry is lost to the memory: one step's rate change)."""
        if self.rate is None:
            return 1.0
        now, before = float(self.rate()), self.last_rate
        if not (now > 0.0 and math.isfinite(now)):
            return 1.0
        self.last_rate = now
        return 1.0 if before is None else before / now
