"""Classic error feedback (Seide et al. 2014; Stich, Cordonnier, Jaggi 2018)."""
from __future__ import annotations

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
    Memory: e_i. v = e_i + grad is written into the e_i of the round before last (free once that
    round committed; ``core.memory.reusable``), not into a new tensor.
    """

    memory_type = Error
    memory: Error
    written_in_place: frozenset[str] = frozenset()
    _spare: Tensor | None = None  # the error before the current one

    def setup(self, grad: Tensor) -> Error:
        return Error(grad.zero_())

    decay = 1.0  # the factor of e_i in v (CO3's gamma)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        e = self.memory.e_i
        out = reusable(self._spare, e.numel(), e.device, busy=(e,))
        payload, error = compensated(self.compressor, e, flat(grad), rnd, decay=self.decay, out=out)
        self._spare, self.memory = e, Error(error)
        return payload
